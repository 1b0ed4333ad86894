//! Every recorded trace of `data/sensor_traces.jsonl` (a copy of the shared
//! vectors, produced by the reference) gives exactly the recorded statuses.

use crate::trace::{self, Op};
use fleet_health_sensor::{Sensor, Windows};
use serde_json::Value;

const VECTORS: &str = include_str!("../data/sensor_traces.jsonl");

#[test]
fn every_recorded_trace_matches_the_reference() {
    let windows = Windows::default();
    let mut traces = 0;
    let mut statuses = 0;
    for (i, line) in VECTORS.lines().enumerate() {
        let row: Value = serde_json::from_str(line).expect("vector line is JSON");
        let name = row["name"].as_str().expect("vector has a name");
        let ops = row["ops"].as_array().expect("vector has ops");
        let expect: Vec<String> = row["expect"]
            .as_array()
            .expect("vector has expectations")
            .iter()
            .map(|e| {
                format!(
                    "{{\"healthy\": {}, \"why\": {}}}",
                    e["healthy"].as_bool().expect("healthy is a bool"),
                    e["why"]
                )
            })
            .collect();
        let mut sensor = Sensor::new();
        let mut got = Vec::new();
        for op in ops {
            match trace::op_from_json(op).unwrap_or_else(|e| panic!("line {}: {e}", i + 1)) {
                Op::Reset => sensor = Sensor::new(),
                Op::Event(e) => sensor.apply(e),
                Op::Status(now) => got.push(trace::status_json(sensor.status(now, &windows))),
            }
        }
        assert_eq!(got, expect, "trace {name:?} (line {})", i + 1);
        traces += 1;
        statuses += got.len();
    }
    // The shared file holds 14 named traces and 400 random ones.
    assert_eq!(traces, 414);
    assert_eq!(statuses, 3528, "every recorded status is checked");
}
