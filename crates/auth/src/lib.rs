//! Who may do what on a fleet-health server.
//!
//! - [`role`]: the roles an operator or a program may hold.
//! - [`pattern`]: agent-ID patterns, which bound what a relay may report for.
//! - [`identity`]: who a caller is, and how that is read off a certificate's
//!   SPIFFE ID (`spiffe://TRUST-DOMAIN/agent/AGENT-ID`,
//!   `spiffe://TRUST-DOMAIN/ROLE/NAME`).
//! - [`tokens`]: bearer tokens and the tokens file that holds only their hashes.
//! - [`policy`]: the one table that says, for every RPC the server serves,
//!   who may call it.
//!
//! No async and no I/O: the server reads files and certificates and hands
//! their contents here; the CLI writes what [`tokens`] makes.

pub mod identity;
pub mod pattern;
#[cfg(feature = "pki")]
pub mod pki;
pub mod policy;
pub mod role;
pub mod tokens;

pub use identity::{Identity, IdentityError, SpiffeId, TrustDomain};
pub use pattern::{AgentPattern, PatternError};
pub use policy::{Access, Decision, Denied};
pub use role::Role;
pub use tokens::{TokenEntry, TokenError, TokenFile, TokenMatch};
