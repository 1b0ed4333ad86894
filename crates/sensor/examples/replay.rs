//! Replays a sensor trace, as `reference/replay.py` does, and prints one JSON
//! line per `status` operation: the way to check these rules against the
//! reference.
//!
//! ```text
//! cargo run -q -p fleet-health-sensor --example replay < trace.jsonl
//! ```
//!
//! Times are taken to the microsecond, so any trace whose times are multiples
//! of 0.5 s gives exactly the reference's output. A bad line is reported on
//! stderr with its number, and the exit code is 2.

#[path = "../tests/support/trace.rs"]
mod trace;

use std::io::{self, BufRead, BufWriter, Write};
use std::process::ExitCode;

use fleet_health_sensor::{Sensor, Windows};
use trace::Op;

fn main() -> ExitCode {
    let windows = Windows::default();
    let mut sensor = Sensor::new();
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    for (i, line) in io::stdin().lock().lines().enumerate() {
        let lineno = i + 1;
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("line {lineno}: {e}");
                return ExitCode::from(2);
            }
        };
        match trace::parse_line(&line) {
            Ok(None) => {}
            Ok(Some(Op::Reset)) => sensor = Sensor::new(),
            Ok(Some(Op::Event(e))) => sensor.apply(e),
            Ok(Some(Op::Status(now))) => {
                let written = writeln!(out, "{}", trace::status_json(sensor.status(now, &windows)));
                if written.is_err() {
                    // A closed pipe: nobody is reading any more.
                    return ExitCode::SUCCESS;
                }
            }
            Err(e) => {
                let _ = out.flush();
                eprintln!("line {lineno}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    // A flush that fails can only be a closed pipe: not an error.
    let _ = out.flush();
    ExitCode::SUCCESS
}
