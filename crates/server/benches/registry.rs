//! The registry's hot paths: applying one event, listing the faulty agents
//! among a million, a page of healthy ones from the middle of the fleet (the
//! per-reason index, no scan), and the summary.
//!
//! `cargo bench -p fleet-health-server --bench registry`

#[path = "../examples/support/fleet.rs"]
mod fleet;

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use fleet_health_sensor::Time;
use fleet_health_server::clock::ManualClock;
use fleet_health_server::metrics::Metrics;
use fleet_health_server::model::{AgentEvent, EventKind, FleetRules};
use fleet_health_server::registry::{Limits, Registry, Selector, Session, StateFilter};

const T0: i64 = 1_700_000_000;

fn t(s: i64) -> Time {
    Time::from_micros(s * 1_000_000).expect("in range")
}

fn registry() -> Registry {
    Registry::new(
        FleetRules::default(),
        Limits {
            max_agents: 2_000_000,
            ..Limits::default()
        },
        Arc::new(ManualClock::new(t(T0))),
        Arc::new(Metrics::default()),
    )
}

fn ev(seq: u64, kind: EventKind, at: Option<i64>) -> AgentEvent {
    AgentEvent {
        seq,
        kind,
        time: at.map(t),
    }
}

/// `n` agents, one in `faulty_every` faulty (no data sent); the sessions.
fn fleet(reg: &Registry, n: usize, faulty_every: usize) -> Vec<Session> {
    (0..n)
        .map(|i| {
            let sent = if i % faulty_every == 0 {
                T0 - 7 * 3600
            } else {
                T0
            };
            fleet::add_agent(reg, i, t(T0 - 7 * 3600), t(sent))
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let reg = registry();
    let sessions = fleet(&reg, 1_000_000, 100);
    let mut g = c.benchmark_group("registry");
    let mut seq = 3;
    g.bench_function("apply_one_event", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 7919) % sessions.len();
            seq += 1;
            reg.apply(&sessions[i], &[ev(seq, EventKind::Heartbeat, None)])
                .expect("applies")
        })
    });
    let sel = Selector {
        filter: StateFilter::Faulty,
        ..Selector::default()
    };
    g.bench_function("list_10000_faulty_of_1000000", |b| {
        b.iter(|| {
            let page = reg.list(black_box(&sel), None, None, 10_000);
            assert_eq!(page.agents.len(), 10_000);
            page
        })
    });
    let healthy = Selector {
        filter: StateFilter::Healthy,
        ..Selector::default()
    };
    g.bench_function("list_1000_healthy_of_1000000_after_the_middle", |b| {
        let after = fleet::agent_id(500_000).to_string();
        b.iter(|| {
            let page = reg.list(black_box(&healthy), None, Some(&after), 1000);
            assert_eq!(page.agents.len(), 1000);
            page
        })
    });
    g.bench_function("summary_now_of_1000000", |b| {
        b.iter(|| reg.summary(black_box(None)))
    });
    g.sample_size(10);
    g.bench_function("connect_and_start_10000_agents", |b| {
        b.iter_batched(
            registry,
            |r| fleet(&r, 10_000, 100),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
