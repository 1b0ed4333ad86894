//! The agent-side reporter: one long-lived `Report` stream per agent process.
//!
//! The agent calls [`Reporter`]'s event methods from its own code; they queue
//! the event and return at once. A background task owns the stream: it sends
//! the `Hello`, drops what the server's `Welcome` says it already applied,
//! sends the rest in batches, drops what each `Ack` covers, heartbeats when
//! idle, and on a broken stream reconnects with backoff and sends again
//! whatever was not acknowledged.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fleet_health_sensor::Time;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::backoff::{Backoff, BackoffConfig};
use crate::pending::Pending;
use crate::proto::{
    EventBatch, Hello, ReportRequest, ReportResponse, report_request, report_response,
};
use crate::{AuthChannel, Bearer, Credentials, InvalidEndpoint, NameError};
use fleet_health_proto::v1::agent_service_client::AgentServiceClient;
use fleet_health_types::wire::{self, now};
use fleet_health_types::{AgentId, EventKind, Labels, check_labels};
use tonic::service::interceptor::InterceptedService;

/// The heartbeat interval assumed until the server says otherwise.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);
/// The shortest heartbeat interval taken from a server.
const MIN_HEARTBEAT: Duration = Duration::from_millis(50);
/// A session that got a welcome and then lasted this long (or had events
/// acknowledged) resets the backoff.
const STEADY_SESSION: Duration = Duration::from_secs(5);

/// Called with each acknowledged batch (for load measurements).
pub type AckHook = Arc<dyn Fn(Acked) + Send + Sync>;

/// One batch of events acknowledged by the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Acked {
    /// How many events the batch held.
    pub events: usize,
    /// From sending the batch to receiving the ack that covers it.
    pub latency: Duration,
}

/// How a [`Reporter`] behaves. [`ReporterConfig::new`] gives the defaults.
#[derive(Clone)]
pub struct ReporterConfig {
    /// The agent's ID: 1 to 253 characters of `[A-Za-z0-9._:@/-]`.
    pub agent_id: String,
    /// Labels sent with every Hello (at most 32). None: the server keeps the
    /// agent's earlier labels.
    pub labels: Labels,
    /// At most this many unacknowledged events are kept (default 10 000); when
    /// full, the oldest is dropped and counted in [`Stats::dropped`].
    pub max_pending: usize,
    /// At most this many events per message (default 500).
    pub max_batch: usize,
    /// How long to wait for a connection and the server's Welcome (default 10 s).
    pub connect_timeout: Duration,
    /// The delays between reconnection attempts.
    pub backoff: BackoffConfig,
    /// Called with each acknowledged batch, on the reporter's task: keep it short.
    pub on_ack: Option<AckHook>,
}

impl ReporterConfig {
    /// The defaults for an agent.
    pub fn new(agent_id: impl Into<String>) -> ReporterConfig {
        ReporterConfig {
            agent_id: agent_id.into(),
            labels: Labels::new(),
            max_pending: 10_000,
            max_batch: 500,
            connect_timeout: Duration::from_secs(10),
            backoff: BackoffConfig::default(),
            on_ack: None,
        }
    }

    /// Adds a label.
    #[must_use]
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> ReporterConfig {
        self.labels.insert(key.into(), value.into());
        self
    }

    fn validate(&self) -> Result<(), NameError> {
        AgentId::parse(&self.agent_id)?;
        check_labels(&self.labels)?;
        Ok(())
    }
}

impl std::fmt::Debug for ReporterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReporterConfig")
            .field("agent_id", &self.agent_id)
            .field("labels", &self.labels)
            .field("max_pending", &self.max_pending)
            .field("max_batch", &self.max_batch)
            .field("connect_timeout", &self.connect_timeout)
            .field("backoff", &self.backoff)
            .field("on_ack", &self.on_ack.is_some())
            .finish()
    }
}

/// What can go wrong with a [`Reporter`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReporterError {
    /// The agent ID or a label breaks the rules.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// The server address is not a valid URL.
    #[error(transparent)]
    InvalidEndpoint(#[from] InvalidEndpoint),
    /// Started outside a Tokio runtime.
    #[error("the reporter must be started within a Tokio runtime")]
    NoRuntime,
    /// The reporter was closed: it takes no more events.
    #[error("the reporter is closed")]
    Closed,
    /// The server refused the reporter's input (`INVALID_ARGUMENT`); sending
    /// the same again would be refused again, so the reporter stopped.
    #[error("the server refused the events: {message}")]
    Refused {
        /// The server's message.
        message: String,
    },
    /// The server refused the reporter's credentials (`UNAUTHENTICATED`:
    /// none, unknown, expired or revoked) or their right to report for this
    /// agent (`PERMISSION_DENIED`); the reporter stopped.
    #[error("{}: {message}", if *.unauthenticated { "not authenticated" } else { "permission denied" })]
    Denied {
        /// `UNAUTHENTICATED` rather than `PERMISSION_DENIED`.
        unauthenticated: bool,
        /// The server's message.
        message: String,
    },
    /// The credentials could not be used (a file that cannot be read...).
    #[error(transparent)]
    BadCredentials(#[from] crate::BadCredentials),
    /// Closing took longer than allowed; this many events were never
    /// acknowledged.
    #[error("timed out with {unacked} event(s) not acknowledged")]
    Timeout {
        /// Events not acknowledged.
        unacked: usize,
    },
}

/// A snapshot of a reporter's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    /// The last sequence number assigned (events queued so far).
    pub last_seq: u64,
    /// Every event up to this sequence number is acknowledged.
    pub acked_through: u64,
    /// Events not acknowledged yet.
    pub pending: usize,
    /// Events dropped because the buffer was full.
    pub dropped: u64,
    /// Whether a stream is open and welcomed now.
    pub connected: bool,
    /// How many streams were welcomed so far.
    pub connects: u64,
    /// Events whose time the server clamped (too far in the future).
    pub clamped: u64,
    /// The last reason a stream failed, if any.
    pub last_error: Option<String>,
    /// The heartbeat interval in force.
    pub heartbeat_interval: Duration,
}

/// Reports one agent process's events to the server, losing none that fit in
/// its buffer.
///
/// The event methods are named after the reference sensor's (`starting`,
/// `shutting_down`, `server_data_received`, `server_data_sent`, `registered`,
/// `unregistered`), so that porting an agent is a rename. They never block:
/// they queue the event, stamped with its time, and return. Heartbeats are
/// sent by the reporter itself. On the way out call [`Reporter::shutdown`],
/// which says `stopped` and closes the stream cleanly; dropping a reporter
/// without it ends its stream without a word, as a crash would.
pub struct Reporter {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
    agent_id: String,
    incarnation: u64,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("agent_id", &self.agent_id)
            .field("incarnation", &self.incarnation)
            .finish_non_exhaustive()
    }
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the task: new events, or a close.
    wake: Notify,
    /// Acknowledgements and the end, for those who wait on them.
    progress: watch::Sender<Progress>,
}

struct State {
    pending: Pending,
    closing: bool,
    ended: Option<ReporterError>,
    connected: bool,
    connects: u64,
    clamped: u64,
    last_error: Option<String>,
    heartbeat_interval: Duration,
}

#[derive(Clone, Debug, Default)]
struct Progress {
    acked_through: u64,
    ended: Option<ReporterError>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every update
        // is a single step), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, state: &State) {
        let acked = state.pending.acked_through();
        let ended = state.ended.clone();
        self.progress.send_if_modified(|p| {
            let changed = p.acked_through != acked || p.ended != ended;
            p.acked_through = acked;
            p.ended = ended;
            changed
        });
    }

    fn end(&self, why: ReporterError) {
        let mut st = self.lock();
        st.connected = false;
        if st.ended.is_none() {
            st.ended = Some(why);
        }
        self.publish(&st);
    }
}

impl Reporter {
    /// Starts a reporter on a channel (which may be shared with other
    /// reporters: each has its own stream). Must be called within a Tokio
    /// runtime; returns at once and connects in the background.
    pub fn start(channel: Channel, config: ReporterConfig) -> Result<Reporter, ReporterError> {
        Reporter::start_on(InterceptedService::new(channel, Bearer::none()), config)
    }

    /// Starts a reporter on a channel that presents a bearer token (see
    /// [`Reporter::start`]).
    pub fn start_with(
        channel: Channel,
        bearer: Bearer,
        config: ReporterConfig,
    ) -> Result<Reporter, ReporterError> {
        Reporter::start_on(InterceptedService::new(channel, bearer), config)
    }

    fn start_on(channel: AuthChannel, config: ReporterConfig) -> Result<Reporter, ReporterError> {
        config.validate()?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| ReporterError::NoRuntime)?;
        let incarnation = loop {
            let n = fastrand::u64(..);
            if n != 0 {
                break n;
            }
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending: Pending::new(config.max_pending),
                closing: false,
                ended: None,
                connected: false,
                connects: 0,
                clamped: 0,
                last_error: None,
                heartbeat_interval: DEFAULT_HEARTBEAT,
            }),
            wake: Notify::new(),
            progress: watch::Sender::new(Progress::default()),
        });
        let agent_id = config.agent_id.clone();
        let task = Task {
            shared: Arc::clone(&shared),
            client: AgentServiceClient::new(channel),
            hello: Hello {
                agent_id: config.agent_id.clone(),
                incarnation,
                labels: config.labels.clone().into_iter().collect(),
            },
            config,
        };
        let handle = runtime.spawn(task.run());
        Ok(Reporter {
            shared,
            task: Mutex::new(Some(handle)),
            agent_id,
            incarnation,
        })
    }

    /// Starts a reporter with its own connection to `url` (such as
    /// `http://127.0.0.1:50051`), made lazily in the background.
    pub fn connect(url: &str, config: ReporterConfig) -> Result<Reporter, ReporterError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ReporterError::NoRuntime);
        }
        let channel = crate::lazy_channel(url, config.connect_timeout)?;
        Reporter::start(channel, config)
    }

    /// Starts a reporter with its own connection to `url` with
    /// `credentials` (TLS, a client certificate, a token).
    pub fn connect_with(
        url: &str,
        credentials: &Credentials,
        config: ReporterConfig,
    ) -> Result<Reporter, ReporterError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ReporterError::NoRuntime);
        }
        let channel =
            crate::auth_channel(url, config.connect_timeout, credentials).map_err(|e| match e {
                crate::ConnectError::Endpoint(e) => ReporterError::InvalidEndpoint(e),
                crate::ConnectError::Credentials(e) => ReporterError::BadCredentials(e),
            })?;
        Reporter::start_on(channel, config)
    }

    /// The agent's ID.
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// This reporter's incarnation: random, non-zero, fixed for its life.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Queues an event and returns its sequence number. `when` is when it
    /// happened; `None` lets the server use its receive time.
    pub fn report(&self, kind: EventKind, when: Option<Time>) -> Result<u64, ReporterError> {
        self.report_many([(kind, when)])
    }

    /// Queues several events at once (they go out together when they fit in
    /// one message) and returns the sequence number of the last, or 0 if
    /// there were none.
    pub fn report_many(
        &self,
        events: impl IntoIterator<Item = (EventKind, Option<Time>)>,
    ) -> Result<u64, ReporterError> {
        let last = {
            let mut st = self.shared.lock();
            if let Some(ended) = &st.ended {
                return Err(ended.clone());
            }
            if st.closing {
                return Err(ReporterError::Closed);
            }
            let mut last = 0;
            for (kind, when) in events {
                last = st.pending.push(kind, when);
            }
            last
        };
        self.shared.wake.notify_one();
        Ok(last)
    }

    fn record(&self, kind: EventKind, when: Time) {
        if let Err(e) = self.report(kind, Some(when)) {
            tracing::debug!(agent_id = %self.agent_id, error = %e, "event not queued");
        }
    }

    /// The agent process started at `when` (a new life: a fresh sensor).
    pub fn starting(&self, when: Time) {
        self.record(EventKind::Starting, when);
    }

    /// An externally initiated shutdown began at `when`.
    pub fn shutting_down(&self, when: Time) {
        self.record(EventKind::ShuttingDown, when);
    }

    /// Data was received from the data server at `when`.
    pub fn server_data_received(&self, when: Time) {
        self.record(EventKind::ServerDataReceived, when);
    }

    /// Data was sent to the data server at `when`.
    pub fn server_data_sent(&self, when: Time) {
        self.record(EventKind::ServerDataSent, when);
    }

    /// The agent is registered (its license is valid).
    pub fn registered(&self) {
        self.record(EventKind::Registered, now());
    }

    /// The agent is not registered.
    pub fn unregistered(&self) {
        self.record(EventKind::Unregistered, now());
    }

    /// Waits until every event up to `seq` is acknowledged. Fails if the
    /// reporter ends first.
    pub async fn wait_acked(&self, seq: u64) -> Result<(), ReporterError> {
        let mut rx = self.shared.progress.subscribe();
        let progress = rx
            .wait_for(|p| p.acked_through >= seq || p.ended.is_some())
            .await
            .map_err(|_| ReporterError::Closed)?
            .clone();
        if progress.acked_through >= seq {
            Ok(())
        } else {
            Err(progress.ended.unwrap_or(ReporterError::Closed))
        }
    }

    /// Waits until every event queued so far is acknowledged.
    pub async fn flush(&self) -> Result<(), ReporterError> {
        let last = self.shared.lock().pending.last_seq();
        self.wait_acked(last).await
    }

    /// Says `stopped` (the agent is exiting on purpose), then [`close`]s.
    ///
    /// [`close`]: Reporter::close
    pub async fn shutdown(&self, timeout: Duration) -> Result<(), ReporterError> {
        self.report(EventKind::Stopped, Some(now()))?;
        self.close(timeout).await
    }

    /// Takes no more events, waits until everything queued is acknowledged,
    /// ends the request stream and waits for the server to end its side, all
    /// within `timeout`. On timeout the stream is dropped and the number of
    /// events never acknowledged is returned in the error.
    pub async fn close(&self, timeout: Duration) -> Result<(), ReporterError> {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        let mut rx = self.shared.progress.subscribe();
        let ended = tokio::time::timeout(timeout, rx.wait_for(|p| p.ended.is_some())).await;
        match ended {
            Ok(Ok(p)) => match p.ended.clone() {
                Some(ReporterError::Closed) | None => Ok(()),
                Some(e) => Err(e),
            },
            Ok(Err(_)) | Err(_) => {
                if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    task.abort();
                }
                let unacked = self.shared.lock().pending.len();
                self.shared.end(ReporterError::Timeout { unacked });
                Err(ReporterError::Timeout { unacked })
            }
        }
    }

    /// The reporter's counters now.
    pub fn stats(&self) -> Stats {
        let st = self.shared.lock();
        Stats {
            last_seq: st.pending.last_seq(),
            acked_through: st.pending.acked_through(),
            pending: st.pending.len(),
            dropped: st.pending.dropped(),
            connected: st.connected,
            connects: st.connects,
            clamped: st.clamped,
            last_error: st.last_error.clone(),
            heartbeat_interval: st.heartbeat_interval,
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

/// How one stream ended.
enum Outcome {
    /// Closed cleanly on request: the reporter is done.
    Closed,
    /// The server refused the input: the reporter is done.
    Refused(String),
    /// The server refused the credentials: the reporter is done.
    Denied {
        unauthenticated: bool,
        message: String,
    },
    /// Try again after a backoff.
    Retry {
        error: String,
        /// The session was welcomed and worked for a while.
        steady: bool,
        /// The server asked to slow down.
        slow_down: bool,
    },
}

impl Outcome {
    fn retry(error: impl Into<String>, steady: bool) -> Outcome {
        Outcome::Retry {
            error: error.into(),
            steady,
            slow_down: false,
        }
    }

    fn from_status(status: &Status, steady: bool) -> Outcome {
        match status.code() {
            Code::InvalidArgument => Outcome::Refused(status.message().to_owned()),
            Code::Unauthenticated | Code::PermissionDenied => Outcome::Denied {
                unauthenticated: status.code() == Code::Unauthenticated,
                message: status.message().to_owned(),
            },
            Code::ResourceExhausted => Outcome::Retry {
                error: describe(status),
                steady,
                slow_down: true,
            },
            _ => Outcome::retry(describe(status), steady),
        }
    }
}

fn describe(status: &Status) -> String {
    if let Some(trouble) = crate::tls_trouble(status) {
        return format!("TLS: {trouble}");
    }
    if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{:?}: {}", status.code(), status.message())
    }
}

struct Task {
    shared: Arc<Shared>,
    client: AgentServiceClient<AuthChannel>,
    hello: Hello,
    config: ReporterConfig,
}

impl Task {
    async fn run(mut self) {
        let mut backoff = Backoff::new(self.config.backoff, fastrand::Rng::new());
        loop {
            if self.done_without_stream() {
                self.shared.end(ReporterError::Closed);
                return;
            }
            let outcome = self.session().await;
            self.shared.lock().connected = false;
            match outcome {
                Outcome::Closed => {
                    self.shared.end(ReporterError::Closed);
                    return;
                }
                Outcome::Refused(message) => {
                    tracing::error!(agent_id = %self.hello.agent_id, %message, "the server refused the reporter's events");
                    self.shared.lock().last_error = Some(message.clone());
                    self.shared.end(ReporterError::Refused { message });
                    return;
                }
                Outcome::Denied {
                    unauthenticated,
                    message,
                } => {
                    tracing::error!(agent_id = %self.hello.agent_id, %message, "the server refused the reporter's credentials");
                    self.shared.lock().last_error = Some(message.clone());
                    self.shared.end(ReporterError::Denied {
                        unauthenticated,
                        message,
                    });
                    return;
                }
                Outcome::Retry {
                    error,
                    steady,
                    slow_down,
                } => {
                    if steady {
                        backoff.reset();
                    }
                    let mut delay = backoff.next_delay();
                    if slow_down {
                        delay = (delay * 4).min(self.config.backoff.max.max(delay));
                    }
                    tracing::debug!(agent_id = %self.hello.agent_id, %error, ?delay, "report stream failed; reconnecting");
                    self.shared.lock().last_error = Some(error);
                    self.pause(delay).await;
                }
            }
        }
    }

    /// Closing with nothing left to send: no stream is needed.
    fn done_without_stream(&self) -> bool {
        let st = self.shared.lock();
        st.closing && st.pending.is_empty()
    }

    /// Sleeps for a backoff delay, cut short only by a close that needs no
    /// stream.
    async fn pause(&self, delay: Duration) {
        let deadline = Instant::now() + delay;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return,
                () = self.shared.wake.notified() => {
                    if self.done_without_stream() {
                        return;
                    }
                }
            }
        }
    }

    async fn session(&mut self) -> Outcome {
        // Dropping the sender ends the request stream (a half-close). That
        // also happens when the reporter is dropped without closing: the
        // stream then ends without `stopped`, which to the server is the same
        // as a crash (a stream's end proves nothing), and no stream is leaked.
        let (tx, rx) = mpsc::channel::<ReportRequest>(4);
        let hello = ReportRequest {
            body: Some(report_request::Body::Hello(self.hello.clone())),
        };
        if tx.try_send(hello).is_err() {
            return Outcome::retry("request channel refused the hello", false);
        }
        let timeout = self.config.connect_timeout;
        // The generated client uses the API's lean codec: small buffers per
        // stream, which matters to a process that holds many.
        let call = self.client.report(ReceiverStream::new(rx));
        let mut inbound = match tokio::time::timeout(timeout, call).await {
            Err(_) => return Outcome::retry("timed out connecting", false),
            Ok(Err(status)) => return Outcome::from_status(&status, false),
            Ok(Ok(response)) => response.into_inner(),
        };
        let welcome = match tokio::time::timeout(timeout, inbound.message()).await {
            Err(_) => return Outcome::retry("timed out waiting for the welcome", false),
            Ok(Err(status)) => return Outcome::from_status(&status, false),
            Ok(Ok(None)) => return Outcome::retry("stream ended before the welcome", false),
            Ok(Ok(Some(ReportResponse {
                body: Some(report_response::Body::Welcome(w)),
            }))) => w,
            Ok(Ok(Some(_))) => return Outcome::retry("first answer was not a welcome", false),
        };
        let welcomed_at = Instant::now();
        let heartbeat = welcome
            .heartbeat_interval
            .as_ref()
            .and_then(|d| wire::from_duration(d, "Welcome.heartbeat_interval").ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_HEARTBEAT)
            .max(MIN_HEARTBEAT);
        {
            let mut st = self.shared.lock();
            st.pending.restart(welcome.last_applied_seq);
            st.connected = true;
            st.connects += 1;
            st.heartbeat_interval = heartbeat;
            self.shared.publish(&st);
        }
        tracing::debug!(agent_id = %self.hello.agent_id, last_applied = welcome.last_applied_seq, "report stream welcomed");

        // Batches sent and not yet acknowledged: (last seq, sent at, events).
        let mut in_flight: VecDeque<(u64, Instant, usize)> = VecDeque::new();
        let mut last_sent = welcomed_at;
        let mut acked_any = false;
        let mut tx = Some(tx);
        loop {
            let (has_unsent, finished) = {
                let st = self.shared.lock();
                (st.pending.has_unsent(), st.closing && st.pending.is_empty())
            };
            if finished && tx.is_some() {
                // Everything is acknowledged: half-close, then wait for the
                // server to end its side.
                tx = None;
            }
            let steady = acked_any || welcomed_at.elapsed() >= STEADY_SESSION;
            let open = tx.is_some();
            tokio::select! {
                biased;
                msg = inbound.message() => match msg {
                    Ok(Some(ReportResponse { body: Some(report_response::Body::Ack(ack)) })) => {
                        acked_any = true;
                        self.on_ack(ack.applied_through, ack.clamped, &mut in_flight);
                    }
                    Ok(Some(_)) => return Outcome::retry("unexpected message from the server", steady),
                    Ok(None) if !open => return Outcome::Closed,
                    Ok(None) => return Outcome::retry("the server ended the stream", steady),
                    Err(status) if !open && status.code() == Code::Cancelled => return Outcome::Closed,
                    Err(status) => return Outcome::from_status(&status, steady),
                },
                permit = reserve(tx.as_ref()), if has_unsent && open => {
                    let Some(permit) = permit else {
                        return Outcome::retry("the request stream closed", steady);
                    };
                    let batch = self.shared.lock().pending.next_batch(self.config.max_batch);
                    if let Some(events) = batch {
                        let last = events.last().map_or(0, |e| e.seq);
                        let sent_at = Instant::now();
                        in_flight.push_back((last, sent_at, events.len()));
                        permit.send(ReportRequest {
                            body: Some(report_request::Body::Events(EventBatch { events })),
                        });
                        last_sent = sent_at;
                    }
                },
                () = self.shared.wake.notified(), if !has_unsent && open => {},
                () = tokio::time::sleep_until(last_sent + heartbeat), if !has_unsent && open => {
                    let mut st = self.shared.lock();
                    if !st.closing {
                        st.pending.push(EventKind::Heartbeat, None);
                    }
                    // Whether or not it was queued, wait a full interval again.
                    last_sent = Instant::now();
                },
            }
        }
    }

    fn on_ack(&self, through: u64, clamped: u32, in_flight: &mut VecDeque<(u64, Instant, usize)>) {
        {
            let mut st = self.shared.lock();
            st.pending.ack(through);
            st.clamped += u64::from(clamped);
            self.shared.publish(&st);
        }
        let now = Instant::now();
        while let Some(&(last, sent_at, events)) = in_flight.front() {
            if last > through {
                break;
            }
            in_flight.pop_front();
            if let Some(hook) = &self.config.on_ack {
                hook(Acked {
                    events,
                    latency: now - sent_at,
                });
            }
        }
    }
}

/// Room for one message on the request stream; never ready without a stream.
async fn reserve<T>(tx: Option<&mpsc::Sender<T>>) -> Option<mpsc::Permit<'_, T>> {
    match tx {
        Some(tx) => tx.reserve().await.ok(),
        None => std::future::pending().await,
    }
}
