//! Invariants of the rules, over random sensors, windows and clocks.

use std::time::Duration;

use fleet_health_sensor::{Event, Sensor, Time, Why, Windows};
use proptest::prelude::*;

/// Times in half seconds around a few bases, so that edges are hit often.
fn time() -> impl Strategy<Value = Time> {
    (
        prop_oneof![Just(0i64), Just(1000), Just(1_700_000_000)],
        -200_000i64..200_000,
    )
        .prop_map(|(base, half)| {
            Time::from_micros(base * 1_000_000 + half * 500_000).expect("in range")
        })
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        time().prop_map(Event::Starting),
        time().prop_map(Event::ShuttingDown),
        time().prop_map(Event::ServerDataReceived),
        time().prop_map(Event::ServerDataSent),
        Just(Event::Registered),
        Just(Event::Unregistered),
    ]
}

fn windows() -> impl Strategy<Value = Windows> {
    prop_oneof![
        Just(Windows::default()),
        (0u64..100_000, 0u64..100_000, 0u64..5_000).prop_map(|(r, s, t)| {
            Windows::new(
                Duration::from_millis(r * 500),
                Duration::from_millis(s * 500),
                Duration::from_millis(t * 500),
            )
            .expect("short windows")
        }),
    ]
}

fn sensor() -> impl Strategy<Value = Sensor> {
    proptest::collection::vec(event(), 0..12).prop_map(|events| {
        let mut s = Sensor::new();
        for e in events {
            s.apply(e);
        }
        s
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The status holds on `[now, next_change)` and differs at `next_change`.
    #[test]
    fn status_is_constant_until_next_change(
        s in sensor(), w in windows(), now in time(), probes in proptest::collection::vec(0.0f64..1.0, 8)
    ) {
        let here = s.why(now, &w);
        match s.next_change(now, &w) {
            Some(next) => {
                prop_assert!(next > now);
                prop_assert_ne!(s.why(next, &w), here);
                let before = Time::from_micros(next.as_micros() - 1).expect("in range");
                prop_assert_eq!(s.why(before, &w), here);
                let span = (next.as_micros() - now.as_micros()) as f64;
                for p in probes {
                    let t = Time::from_micros(now.as_micros() + (span * p) as i64).expect("in range");
                    prop_assert_eq!(s.why(t, &w), here, "at {} before change at {}", t, next);
                }
            }
            None => {
                // Never changes: not even in the far future.
                let far = Time::from_micros(now.as_micros() + 400_000 * 500_000).expect("in range");
                prop_assert_eq!(s.why(far, &w), here);
                for p in probes {
                    let t = Time::from_micros(now.as_micros() + (p * 1e14) as i64).expect("in range");
                    prop_assert_eq!(s.why(t, &w), here);
                }
            }
        }
    }

    /// Asking changes nothing: the same answers in any order, any number of times.
    #[test]
    fn queries_do_not_change_state(s in sensor(), w in windows(), a in time(), b in time()) {
        let copy = s;
        let first = (s.status(a, &w), s.next_change(a, &w));
        let _ = (s.status(b, &w), s.next_change(b, &w));
        prop_assert_eq!((s.status(a, &w), s.next_change(a, &w)), first);
        prop_assert_eq!(s, copy);
    }

    /// Healthy exactly when the reason is a healthy one.
    #[test]
    fn healthy_follows_why(s in sensor(), w in windows(), now in time()) {
        let st = s.status(now, &w);
        prop_assert_eq!(st.healthy, st.why.is_healthy());
        prop_assert_eq!(st.healthy, !matches!(st.why, Why::StuckAtShutdown | Why::NoDataReceived | Why::NoDataSent));
    }
}
