//! The JSON-lines trace format of the reference's `replay.py`, shared by the
//! `replay` example and the vector tests.
//!
//! One operation a line: `{"op": "reset"}`, `{"op": "starting", "when": T}`
//! (likewise `shutting_down`, `server_data_received`, `server_data_sent`),
//! `{"op": "registered"}`, `{"op": "unregistered"}`, `{"op": "status", "now": T}`.

use fleet_health_sensor::{Event, Status, Time};
use serde_json::Value;

/// One operation of a trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    /// Start over with a new sensor.
    Reset,
    /// Apply an event.
    Event(Event),
    /// Ask for the status at a time.
    Status(Time),
}

/// Reads one operation from a JSON value.
pub fn op_from_json(v: &Value) -> Result<Op, String> {
    let obj = v.as_object().ok_or("an operation must be a JSON object")?;
    let kind = obj.get("op").and_then(Value::as_str);
    let time = |field: &str| -> Result<Time, String> {
        let raw = obj
            .get(field)
            .ok_or_else(|| format!("{:?} needs a {field:?} field", kind.unwrap_or("")))?;
        let secs = match raw {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        }
        .ok_or_else(|| format!("{field:?} must be a number of seconds, not {raw}"))?;
        Time::from_secs_f64(secs).map_err(|e| format!("{field:?}: {e}"))
    };
    Ok(match kind {
        Some("reset") => Op::Reset,
        Some("starting") => Op::Event(Event::Starting(time("when")?)),
        Some("shutting_down") => Op::Event(Event::ShuttingDown(time("when")?)),
        Some("server_data_received") => Op::Event(Event::ServerDataReceived(time("when")?)),
        Some("server_data_sent") => Op::Event(Event::ServerDataSent(time("when")?)),
        Some("registered") => Op::Event(Event::Registered),
        Some("unregistered") => Op::Event(Event::Unregistered),
        Some("status") => Op::Status(time("now")?),
        _ => {
            return Err(format!(
                "unknown op {}",
                obj.get("op").map_or("None".to_string(), Value::to_string)
            ));
        }
    })
}

/// Reads one line; `Ok(None)` for a blank line.
pub fn parse_line(line: &str) -> Result<Option<Op>, String> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    op_from_json(&v).map(Some)
}

/// A status as `replay.py` prints it (Python's `json.dumps`).
pub fn status_json(s: Status) -> String {
    format!(
        "{{\"healthy\": {}, \"why\": {}}}",
        s.healthy,
        Value::from(s.why.as_str())
    )
}
