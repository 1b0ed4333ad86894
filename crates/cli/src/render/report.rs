//! What `report` and `simulate` print: the report's JSON, the simulation's
//! table and JSON, and the simulator's notes on stderr.

use std::io::{self, Write};

use serde::Serialize;

use super::time::human_duration;
use super::{write_json, write_ndjson};
use crate::simulate::{Note, SimReport};

/// What `report -o json` prints.
#[derive(Debug, Serialize)]
pub struct ReportJson<'a> {
    /// The agent.
    pub agent_id: &'a str,
    /// The event's name.
    pub event: &'static str,
    /// The reporter's incarnation (a string, so that no reader rounds it).
    pub incarnation: String,
    /// The event's sequence number.
    pub seq: u64,
    /// Always true: `report` prints only once the event is acknowledged.
    pub acknowledged: bool,
}

/// `report -o json`: one line.
pub fn report_json(out: &mut dyn Write, report: &ReportJson<'_>) -> io::Result<()> {
    write_ndjson(out, report)
}

/// What the simulation achieved, as JSON.
#[derive(Debug, Serialize)]
struct SimJson {
    agents: u32,
    connections: u32,
    streams_per_connection: u32,
    events_per_message: u32,
    seconds: f64,
    events_acked: u64,
    messages_acked: u64,
    events_per_second: f64,
    ack_latency_p50_ms: Option<f64>,
    ack_latency_p99_ms: Option<f64>,
    ack_latency_max_ms: Option<f64>,
    agents_failed: u64,
    reconnects: u64,
    events_dropped: u64,
}

/// `simulate -o json`.
pub fn simulation_json(out: &mut dyn Write, r: &SimReport) -> io::Result<()> {
    write_json(
        out,
        &SimJson {
            agents: r.agents,
            connections: r.connections,
            streams_per_connection: r.streams_per_connection,
            events_per_message: r.events_per_message,
            seconds: r.seconds,
            events_acked: r.events_acked,
            messages_acked: r.messages_acked,
            events_per_second: r.events_per_second,
            ack_latency_p50_ms: r.ack_latency_p50_ms,
            ack_latency_p99_ms: r.ack_latency_p99_ms,
            ack_latency_max_ms: r.ack_latency_max_ms,
            agents_failed: r.agents_failed,
            reconnects: r.reconnects,
            events_dropped: r.events_dropped,
        },
    )
}

/// `simulate` for people.
pub fn simulation_table(out: &mut dyn Write, r: &SimReport) -> io::Result<()> {
    let ms = |d: Option<f64>| d.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}ms"));
    writeln!(
        out,
        "agents          {} ({} failed)",
        r.agents, r.agents_failed
    )?;
    writeln!(
        out,
        "connections     {} ({} streams each at most)",
        r.connections, r.streams_per_connection
    )?;
    writeln!(out, "duration        {:.1}s", r.seconds)?;
    writeln!(
        out,
        "events acked    {} ({:.0}/s), in {} messages (at most {} events each)",
        r.events_acked, r.events_per_second, r.messages_acked, r.events_per_message
    )?;
    writeln!(
        out,
        "ack latency     p50 {}, p99 {}, max {}",
        ms(r.ack_latency_p50_ms),
        ms(r.ack_latency_p99_ms),
        ms(r.ack_latency_max_ms)
    )?;
    writeln!(out, "reconnects      {}", r.reconnects)?;
    writeln!(out, "events dropped  {}", r.events_dropped)
}

/// A simulator's note as a line for stderr.
pub fn note_line(note: &Note) -> String {
    match note {
        Note::Starting {
            agents,
            connections,
            server,
            duration,
        } => format!(
            "simulating {agents} agents on {connections} connection(s) against {server}; {}",
            match duration {
                Some(d) => format!("for {}", human_duration(*d)),
                None => "until interrupted (Ctrl-C)".to_owned(),
            }
        ),
        Note::Progress {
            elapsed,
            agents_up,
            acked,
            rate,
            p99,
        } => format!(
            "{:>6}  {agents_up} agents up, {acked} events acked ({rate:.0}/s), p99 {}",
            human_duration(*elapsed),
            p99.map_or_else(|| "-".into(), |d| format!("{:.1}ms", d.as_secs_f64() * 1e3)),
        ),
        Note::Stopping { leave: true } => {
            "leaving: dropping the agents' streams without a word".to_owned()
        }
        Note::Stopping { leave: false } => {
            "stopping the agents cleanly (each says stopped)...".to_owned()
        }
        Note::Lagging => "some agents did not stop in time; leaving them".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures::render;
    use std::time::Duration;

    fn sim() -> SimReport {
        SimReport {
            agents: 10,
            connections: 1,
            streams_per_connection: 100,
            events_per_message: 1,
            seconds: 2.0,
            events_acked: 40,
            messages_acked: 40,
            events_per_second: 20.0,
            ack_latency_p50_ms: Some(1.25),
            ack_latency_p99_ms: Some(3.0),
            ack_latency_max_ms: None,
            agents_failed: 0,
            reconnects: 0,
            events_dropped: 0,
            first_failure: None,
        }
    }

    #[test]
    fn a_simulation_for_people_and_scripts() {
        let text = render(|o| simulation_table(o, &sim()));
        assert!(
            text.contains("events acked    40 (20/s), in 40 messages"),
            "{text}"
        );
        assert!(
            text.contains("ack latency     p50 1.2ms, p99 3.0ms, max -\n"),
            "{text}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&render(|o| simulation_json(o, &sim()))).unwrap();
        assert_eq!(v["ack_latency_p99_ms"], 3.0);
        assert_eq!(v["ack_latency_max_ms"], serde_json::Value::Null);
        assert_eq!(v.as_object().unwrap().len(), 14);
    }

    #[test]
    fn notes_read_as_before() {
        let start = Note::Starting {
            agents: 20,
            connections: 1,
            server: "http://h:1".into(),
            duration: Some(Duration::from_secs(30)),
        };
        assert_eq!(
            note_line(&start),
            "simulating 20 agents on 1 connection(s) against http://h:1; for 30s"
        );
        let progress = Note::Progress {
            elapsed: Duration::from_secs(5),
            agents_up: 3,
            acked: 10,
            rate: 2.0,
            p99: None,
        };
        assert_eq!(
            note_line(&progress),
            "    5s  3 agents up, 10 events acked (2/s), p99 -"
        );
    }

    #[test]
    fn the_report_is_one_json_line() {
        let r = ReportJson {
            agent_id: "a",
            event: "starting",
            incarnation: "7".into(),
            seq: 1,
            acknowledged: true,
        };
        assert_eq!(
            render(|o| report_json(o, &r)),
            "{\"agent_id\":\"a\",\"event\":\"starting\",\"incarnation\":\"7\",\"seq\":1,\"acknowledged\":true}\n"
        );
    }
}
