//! The sensor's queries: `status` and `next_change`, on sensors in each state.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use fleet_health_sensor::{Sensor, Time, Windows};

fn t(s: i64) -> Time {
    Time::from_micros(s * 1_000_000).expect("in range")
}

fn sensors() -> Vec<(&'static str, Sensor)> {
    let now = 1_700_000_000;
    let mut healthy = Sensor::new();
    healthy.starting(t(now - 3600));
    healthy.server_data_sent(t(now - 60));
    healthy.server_data_received(t(now - 60));
    let mut shutting = healthy;
    shutting.shutting_down(t(now - 30));
    let mut unregistered = healthy;
    unregistered.unregistered();
    vec![
        ("new", Sensor::new()),
        ("healthy", healthy),
        ("shutting_down", shutting),
        ("unregistered", unregistered),
    ]
}

fn bench(c: &mut Criterion) {
    let w = Windows::default();
    let now = t(1_700_000_000);
    let mut g = c.benchmark_group("sensor");
    for (name, s) in sensors() {
        g.bench_function(format!("status/{name}"), |b| {
            b.iter(|| black_box(&s).status(black_box(now), &w))
        });
        g.bench_function(format!("next_change/{name}"), |b| {
            b.iter(|| black_box(&s).next_change(black_box(now), &w))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
