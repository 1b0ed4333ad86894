//! Building large fleets straight into a registry, for the benchmarks and the
//! measuring examples (no gRPC: each agent says hello and reports its start).

use fleet_health_sensor::Time;
use fleet_health_server::model::{AgentEvent, AgentId, EventKind, Labels};
use fleet_health_server::registry::{Registry, Session};

/// The ID of the `i`-th agent: `host-0000042.example.com`.
pub fn agent_id(i: usize) -> AgentId {
    AgentId::parse(&format!("host-{i:07}.example.com")).expect("a valid ID")
}

/// Adds agent `i`: hello, then started at `started`, data received now and
/// sent at `sent`. Returns its open session.
pub fn add_agent(reg: &Registry, i: usize, started: Time, sent: Time) -> Session {
    let c = reg
        .connect(&agent_id(i), 1, Labels::new())
        .expect("connects");
    let events = [
        AgentEvent {
            seq: 1,
            kind: EventKind::Starting,
            time: Some(started),
        },
        AgentEvent {
            seq: 2,
            kind: EventKind::ServerDataReceived,
            time: None,
        },
        AgentEvent {
            seq: 3,
            kind: EventKind::ServerDataSent,
            time: Some(sent),
        },
    ];
    reg.apply(&c.session, &events).expect("applies");
    c.session
}
