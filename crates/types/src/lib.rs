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

/// A table with one value per variant of a small, fixed enum, indexed by the
/// variant itself: what `[T; N]` indexed by `variant.index()` would be, with
/// the size and the order written once, in the enum's `ALL`.
#[macro_export]
#[doc(hidden)]
macro_rules! per_variant {
    ($(#[$doc:meta])* $name:ident, $key:ident, $n:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        pub struct $name<T>([T; $n]);

        impl<T> $name<T> {
            /// A table whose value for each variant is `f(variant)`.
            pub fn from_fn(mut f: impl FnMut($key) -> T) -> $name<T> {
                $name(std::array::from_fn(|i| f($key::ALL[i])))
            }

            /// Every variant with its value, in the enum's `ALL` order.
            pub fn iter(&self) -> impl Iterator<Item = ($key, &T)> {
                $key::ALL.into_iter().zip(self.0.iter())
            }

            /// Every variant with its value, mutably.
            pub fn iter_mut(&mut self) -> impl Iterator<Item = ($key, &mut T)> {
                $key::ALL.into_iter().zip(self.0.iter_mut())
            }

            /// The table with `f` applied to every value.
            pub fn map<U>(self, f: impl FnMut(T) -> U) -> $name<U> {
                $name(self.0.map(f))
            }

            /// The values in the enum's `ALL` order.
            pub fn into_array(self) -> [T; $n] {
                self.0
            }
        }

        impl<T> std::ops::Index<$key> for $name<T> {
            type Output = T;
            fn index(&self, k: $key) -> &T {
                &self.0[k.index()]
            }
        }

        impl<T> std::ops::IndexMut<$key> for $name<T> {
            fn index_mut(&mut self, k: $key) -> &mut T {
                &mut self.0[k.index()]
            }
        }

        impl<T> From<[T; $n]> for $name<T> {
            fn from(values: [T; $n]) -> $name<T> {
                $name(values)
            }
        }
    };
}

pub mod event;
pub mod id;
pub mod labels;
pub mod why;
pub mod wire;

pub use event::{AgentEvent, ByKind, EventKind};
pub use fleet_health_sensor::Time;
pub use id::{AgentId, AgentIdError, ArcStr, MAX_AGENT_ID_LEN};
pub use labels::{
    LabelError, LabelSet, Labels, MAX_LABEL_KEY_LEN, MAX_LABEL_VALUE_LEN, MAX_LABELS, check_label,
    check_labels,
};
pub use why::{ByWhy, MaintenanceFilter, State, StateFilter, Why};
pub use wire::WireError;
