//! The rules agree with the reference itself (`replay.py`, run by Python 3)
//! on random traces of every shape, not only the recorded ones.
//!
//! The reference is not part of the project: it is looked for in the folder
//! named by `FLEET_HEALTH_REFERENCE`, or else in `shared/reference/` beside
//! the project's root, as on a developer's machine and in CI. Where it (or
//! Python 3) is missing, the run says so in the test output and checks
//! nothing more than the recorded vectors do; with
//! `FLEET_HEALTH_REQUIRE_REFERENCE=1` (as CI sets it) a missing reference
//! fails the test instead.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::trace::{self, Op};
use fleet_health_sensor::{Sensor, Windows};

/// Names the folder that holds the reference's `replay.py`.
const REFERENCE_ENV: &str = "FLEET_HEALTH_REFERENCE";
/// Set to `1`, makes a missing reference a failure rather than a skipped run.
const REQUIRE_ENV: &str = "FLEET_HEALTH_REQUIRE_REFERENCE";

/// The reference's `replay.py`, or why it cannot be run here.
fn reference_replay() -> Result<PathBuf, String> {
    let dir = match std::env::var_os(REFERENCE_ENV) {
        Some(dir) => PathBuf::from(dir),
        // `crates/sensor` -> the project's root -> the folder beside it.
        None => match Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(3) {
            Some(beside_root) => beside_root.join("shared/reference"),
            None => return Err("the project's root has no parent folder".to_owned()),
        },
    };
    let path = dir.join("replay.py");
    if !path.is_file() {
        return Err(format!(
            "reference sensor not found at {} (set {REFERENCE_ENV} to the folder that holds replay.py)",
            path.display()
        ));
    }
    match Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(status) if status.success() => Ok(path),
        Ok(status) => Err(format!(
            "python3 --version failed ({status}), so the reference sensor at {} cannot run",
            path.display()
        )),
        Err(e) => Err(format!(
            "python3 could not be started ({e}), so the reference sensor at {} cannot run",
            path.display()
        )),
    }
}

/// Whether CI (or the person running the tests) asked for the reference to be
/// present.
fn reference_required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
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

fn theirs(replay: &Path, trace: &str) -> String {
    let mut child = Command::new("python3")
        .arg(replay)
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
fn random_traces_agree_with_the_reference_where_it_is_present() {
    let replay = match reference_replay() {
        Ok(replay) => replay,
        Err(why) if reference_required() => panic!("{why}; {REQUIRE_ENV} is set"),
        Err(why) => {
            // Straight to the process's stderr: the harness captures what a
            // passing test prints with `eprintln!`, and this line is meant to
            // be seen in every `cargo test` run.
            let _ = writeln!(
                std::io::stderr(),
                "\nnote: {why}; differential run skipped (the recorded vectors ran; \
                 {REQUIRE_ENV}=1 makes this a failure)"
            );
            return;
        }
    };
    for seed in [1, 0x5eed, 20_261_124] {
        let trace = random_traces(seed, 300);
        let (a, b) = (ours(&trace), theirs(&replay, &trace));
        assert!(a.lines().count() > 1000, "too few statuses compared");
        for (i, (x, y)) in a.lines().zip(b.lines()).enumerate() {
            assert_eq!(x, y, "seed {seed}, status {i}");
        }
        assert_eq!(a.lines().count(), b.lines().count());
    }
}
