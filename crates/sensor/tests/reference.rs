//! The rules agree with the reference itself (`../shared/reference/replay.py`,
//! run by Python 3) on random traces of every shape, not only the recorded ones.
//!
//! Needs `python3` and the shared reference beside the project's root, as on a
//! developer's machine and in CI.

#[path = "support/trace.rs"]
mod trace;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use fleet_health_sensor::{Sensor, Windows};
use trace::Op;

fn reference_replay() -> PathBuf {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference/replay.py");
    assert!(
        path.exists(),
        "the reference {} is missing: this test needs shared/ beside the project's root",
        path.display()
    );
    path
}

/// A small deterministic generator (xorshift), so the traces are the same each run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// Random traces in the JSON-lines format, with times in half seconds that
/// land on and beside every window's edge.
fn random_traces(seed: u64, count: usize) -> String {
    let mut rng = Rng(seed);
    let steps = [
        0.0, 0.5, 1.0, 599.5, 600.0, 21_599.5, 21_600.0, 21_600.5, 64_799.5, 64_800.0, 3600.0,
    ];
    let mut out = String::new();
    for _ in 0..count {
        out.push_str("{\"op\": \"reset\"}\n");
        let mut t: f64 = rng.pick(&[0.0, 1000.0, 1_700_000_000.0]);
        for _ in 0..(rng.next() % 40) {
            let line = match rng.next() % 10 {
                0..=3 => {
                    t += rng.pick(&steps);
                    format!("{{\"op\": \"status\", \"now\": {t}}}")
                }
                4 => format!(
                    "{{\"op\": \"{}\"}}",
                    rng.pick(&["registered", "unregistered"])
                ),
                _ => {
                    let kind = rng.pick(&[
                        "starting",
                        "shutting_down",
                        "server_data_received",
                        "server_data_sent",
                    ]);
                    let when = (t - rng.pick(&steps)).max(0.0);
                    format!("{{\"op\": \"{kind}\", \"when\": {when}}}")
                }
            };
            out.push_str(&line);
            out.push('\n');
        }
        out.push_str(&format!(
            "{{\"op\": \"status\", \"now\": {}}}\n",
            t + rng.pick(&steps)
        ));
    }
    out
}

fn ours(trace: &str) -> String {
    let windows = Windows::default();
    let mut sensor = Sensor::new();
    let mut out = String::new();
    for line in trace.lines() {
        match trace::parse_line(line).expect("generated line is valid") {
            None => {}
            Some(Op::Reset) => sensor = Sensor::new(),
            Some(Op::Event(e)) => sensor.apply(e),
            Some(Op::Status(now)) => {
                out.push_str(&trace::status_json(sensor.status(now, &windows)));
                out.push('\n');
            }
        }
    }
    out
}

fn theirs(trace: &str) -> String {
    let mut child = Command::new("python3")
        .arg(reference_replay())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    // Written from another thread: the output pipe would fill and block both.
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let input = trace.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("replay.py finishes");
    writer
        .join()
        .expect("writer thread")
        .expect("trace written");
    assert!(out.status.success(), "replay.py failed: {:?}", out.status);
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[test]
fn random_traces_agree_with_the_reference() {
    for seed in [1, 0x5eed, 20_261_124] {
        let trace = random_traces(seed, 300);
        let (a, b) = (ours(&trace), theirs(&trace));
        assert!(a.lines().count() > 1000, "too few statuses compared");
        for (i, (x, y)) in a.lines().zip(b.lines()).enumerate() {
            assert_eq!(x, y, "seed {seed}, status {i}");
        }
        assert_eq!(a.lines().count(), b.lines().count());
    }
}
