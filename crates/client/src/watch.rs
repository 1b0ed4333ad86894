//! Watches: one `WatchAgents` stream ([`Watch`]), and a watch that outlives
//! the server going away for a while ([`ResumingWatch`]).

use std::time::Duration;

use tokio::time::Instant;
use tonic::{Code, Streaming};

use crate::backoff::{Backoff, BackoffConfig};
use crate::fleet::{AgentQuery, ClientError, FleetClient};
use crate::proto::WatchAgentsResponse;
use crate::view::{ResyncCause, WatchChange};

/// A running watch on one stream.
#[derive(Debug)]
pub struct Watch {
    stream: Streaming<WatchAgentsResponse>,
}

impl Watch {
    pub(crate) fn new(stream: Streaming<WatchAgentsResponse>) -> Watch {
        Watch { stream }
    }

    /// The next message; `None` when the server ended the watch.
    pub async fn next(&mut self) -> Result<Option<WatchChange>, ClientError> {
        loop {
            match self.stream.message().await? {
                None => return Ok(None),
                Some(WatchAgentsResponse { event: Some(e) }) => return Ok(Some(e.try_into()?)),
                // A message with no event (from a newer server): nothing to say.
                Some(WatchAgentsResponse { event: None }) => {}
            }
        }
    }
}

/// How a [`ResumingWatch`] reconnects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// The delays between attempts (doubling, with jitter).
    pub backoff: BackoffConfig,
    /// How long to keep trying after the watch was lost before giving up:
    /// the server is then taken to be gone for good. Zero: never reconnect.
    pub give_up_after: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> ReconnectPolicy {
        ReconnectPolicy {
            backoff: BackoffConfig {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(5),
            },
            give_up_after: Duration::from_secs(120),
        }
    }
}

/// Called with a description of what ended the watch, when it is lost and
/// reconnecting begins.
pub type LostHook = Box<dyn FnMut(&str) + Send>;

/// A watch that reconnects with backoff when its stream breaks or the server
/// ends it (a restart, a lost connection), and resumes with a fresh snapshot:
/// after a reconnect, [`ResumingWatch::next`] yields a
/// [`WatchChange::Resync`] with [`ResyncCause::Reconnected`], then the
/// snapshot and `Synced`, which replace everything seen before (changes that
/// happened in between, including agents that left, are not replayed).
///
/// It gives up with [`ClientError::Unreachable`] when no watch could be made
/// again within [`ReconnectPolicy::give_up_after`], and at once on an error
/// that a retry cannot mend (the server refused the query, or sent what this
/// client cannot decode).
pub struct ResumingWatch {
    client: FleetClient,
    query: AgentQuery,
    policy: ReconnectPolicy,
    backoff: Backoff,
    current: Option<Watch>,
    on_lost: Option<LostHook>,
}

impl std::fmt::Debug for ResumingWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumingWatch")
            .field("query", &self.query)
            .field("policy", &self.policy)
            .field("connected", &self.current.is_some())
            .finish_non_exhaustive()
    }
}

impl ResumingWatch {
    /// Starts watching `query`. The first watch is not retried: an error
    /// here (such as an unreachable server) is returned as it is.
    pub async fn start(
        client: FleetClient,
        query: AgentQuery,
        policy: ReconnectPolicy,
    ) -> Result<ResumingWatch, ClientError> {
        let first = client.watch(&query).await?;
        Ok(ResumingWatch {
            client,
            query,
            policy,
            backoff: Backoff::new(policy.backoff, fastrand::Rng::new()),
            current: Some(first),
            on_lost: None,
        })
    }

    /// Sets what to call when the watch is lost (to tell a person).
    #[must_use]
    pub fn on_lost(mut self, hook: LostHook) -> ResumingWatch {
        self.on_lost = Some(hook);
        self
    }

    /// The next message, reconnecting first if the watch was lost.
    pub async fn next(&mut self) -> Result<WatchChange, ClientError> {
        let Some(watch) = self.current.as_mut() else {
            // Only after a reconnect that gave up: stay given up.
            return Err(ClientError::Unreachable("the watch was lost".into()));
        };
        let cause = match watch.next().await {
            Ok(Some(change)) => {
                if matches!(change, WatchChange::Synced { .. }) {
                    // A watch that got as far as a full snapshot worked.
                    self.backoff.reset();
                }
                return Ok(change);
            }
            Ok(None) => "the server ended the watch".to_owned(),
            Err(e) if is_transient(&e) => loss(&e).to_owned(),
            Err(e) => return Err(e),
        };
        self.current = None;
        if let Some(hook) = self.on_lost.as_mut() {
            hook(&cause);
        }
        self.reconnect(cause).await
    }

    async fn reconnect(&mut self, cause: String) -> Result<WatchChange, ClientError> {
        let deadline = Instant::now() + self.policy.give_up_after;
        let mut last_error = cause.clone();
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Unreachable(format!(
                    "the watch was lost ({cause}) and the server did not come back within {} (last error: {last_error})",
                    humanize(self.policy.give_up_after)
                )));
            }
            let delay = self.backoff.next_delay().min(deadline - now);
            tokio::time::sleep(delay).await;
            match self.client.watch(&self.query).await {
                Ok(watch) => {
                    self.current = Some(watch);
                    return Ok(WatchChange::Resync {
                        cause: ResyncCause::Reconnected { after: cause },
                    });
                }
                Err(e) if is_transient(&e) => last_error = e.to_string(),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Whether a retry may mend this error: the server or the path to it failed,
/// as opposed to a refusal or an answer that cannot be decoded.
fn is_transient(e: &ClientError) -> bool {
    match e {
        ClientError::Unreachable(_) => true,
        ClientError::Status(status) => matches!(
            status.code(),
            Code::Unknown
                | Code::Internal
                | Code::Cancelled
                | Code::Aborted
                | Code::Unavailable
                | Code::DeadlineExceeded
                | Code::ResourceExhausted
        ),
        ClientError::InvalidName(_)
        | ClientError::InvalidEndpoint(_)
        | ClientError::Tls(_)
        | ClientError::BadCredentials(_)
        | ClientError::Unauthenticated(_)
        | ClientError::PermissionDenied(_)
        | ClientError::NotFound(_)
        | ClientError::InvalidArgument(_)
        | ClientError::Decode(_) => false,
    }
}

/// What a transient error that ended a watch means, in words (the transport's
/// own message, such as an HTTP/2 error, says little to a person).
fn loss(e: &ClientError) -> &'static str {
    match e {
        ClientError::Unreachable(_) => "the server stopped answering",
        ClientError::Status(s) if s.code() == Code::Aborted => {
            "this watch fell behind and the server ended it"
        }
        _ => "the connection to the server broke",
    }
}

/// A budget for messages: whole seconds as `90s`, else milliseconds.
fn humanize(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;

    #[test]
    fn broken_connections_are_retried_refusals_are_not() {
        for status in [
            Status::unavailable("down"),
            Status::unknown("h2 protocol error: connection reset"),
            Status::internal("stream closed"),
            Status::cancelled("gone"),
            // Ended for falling behind, or too many watches for now: watch again.
            Status::aborted("this watch took nothing for 30s and fell behind; watch again"),
            Status::resource_exhausted("the server already holds 2 watches (--max-watchers)"),
        ] {
            assert!(
                is_transient(&ClientError::from(status.clone())),
                "{status:?}"
            );
        }
        for status in [
            Status::invalid_argument("bad label"),
            Status::not_found("x"),
            Status::permission_denied("no"),
            Status::unimplemented("old server"),
        ] {
            assert!(
                !is_transient(&ClientError::from(status.clone())),
                "{status:?}"
            );
        }
    }

    #[test]
    fn a_loss_is_told_in_words() {
        let h2 = ClientError::from(Status::unknown(
            "h2 protocol error: error reading a body from connection",
        ));
        assert_eq!(loss(&h2), "the connection to the server broke");
        let down = ClientError::from(Status::unavailable("tcp connect error"));
        assert_eq!(loss(&down), "the server stopped answering");
        let behind = ClientError::from(Status::aborted("fell behind; watch again"));
        assert_eq!(
            loss(&behind),
            "this watch fell behind and the server ended it"
        );
    }

    #[test]
    fn budgets_read_as_people_write_them() {
        assert_eq!(humanize(Duration::from_secs(120)), "120s");
        assert_eq!(humanize(Duration::from_millis(1500)), "1500ms");
    }

    /// A watch on a server that is gone gives up after its budget, having
    /// tried again in between (time is paused: the sleeps take no time).
    #[tokio::test(start_paused = true)]
    async fn a_lost_watch_gives_up_after_its_budget() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let client = FleetClient::connect_lazy(&url, Duration::from_secs(1)).unwrap();
        let policy = ReconnectPolicy {
            backoff: BackoffConfig {
                initial: Duration::from_millis(100),
                max: Duration::from_millis(400),
            },
            give_up_after: Duration::from_secs(3),
        };
        let mut watch = ResumingWatch {
            client,
            query: AgentQuery::default(),
            policy,
            backoff: Backoff::new(policy.backoff, fastrand::Rng::with_seed(1)),
            current: None,
            on_lost: None,
        };
        let started = Instant::now();
        let e = watch
            .reconnect("the server ended the watch".into())
            .await
            .unwrap_err();
        let waited = started.elapsed();
        assert!(matches!(e, ClientError::Unreachable(_)), "{e}");
        let text = e.to_string();
        assert!(text.contains("did not come back within 3s"), "{text}");
        assert!(text.contains("the server ended the watch"), "{text}");
        assert!(waited >= Duration::from_secs(3), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    }
}
