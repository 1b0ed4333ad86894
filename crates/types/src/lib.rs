//! The vocabulary of fleet-health: the words that the wire, the server, the
//! clients, the CLI and its JSON all use, each defined once.
//!
//! - [`id`]: agent IDs and their rule;
//! - [`labels`]: an agent's labels and their rules;
//! - [`why`]: why an agent is in its state (the sensor's six reasons and the
//!   fleet's three), the three states, and [`ByWhy`], a table indexed by the why;
//! - [`event`]: the event kinds an agent reports, and one event;
//! - [`wire`]: conversions to and from the protobuf messages of
//!   `fleet-health-proto`, with a typed error for what the wire can get wrong.
//!
//! The crate does no I/O and has no async code: it is plain data, checked.

pub mod event;
pub mod id;
pub mod labels;
pub mod why;
pub mod wire;

pub use event::{AgentEvent, EventKind};
pub use fleet_health_sensor::Time;
pub use id::{AgentId, AgentIdError, MAX_AGENT_ID_LEN};
pub use labels::{
    LabelError, LabelSet, Labels, MAX_LABEL_KEY_LEN, MAX_LABEL_VALUE_LEN, MAX_LABELS, check_labels,
};
pub use why::{ByWhy, State, StateFilter, Why};
pub use wire::WireError;
