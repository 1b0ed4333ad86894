//! Listening sockets and the connections accepted on them.
//!
//! Every connection the server accepts, gRPC or HTTP, goes through an
//! [`Acceptor`]: it sets `TCP_NODELAY` on the accepted socket (small
//! messages, an ack for each batch: waiting to fill a segment would meet the
//! peer's delayed ack and cost tens of milliseconds), and it enrols the
//! connection in [`Connections`], which can cut every live connection at
//! once. Cutting is how shutdown keeps its deadline: a peer that has stopped
//! reading holds its HTTP/2 stream open forever, and a graceful close waits
//! for that stream.
//!
//! Every connection must also prove itself before it reaches gRPC
//! ([`Acceptor::admit`]): the TLS handshake, or on plaintext the 24-byte
//! HTTP/2 preface, within a timeout, with a cap on how many are proving
//! themselves at once; a TCP client that connects and sends nothing cannot
//! hold a socket. Connections are capped in total and per peer address
//! ([`ConnLimits`]); over a cap, the socket is closed at once and counted.
//! What tonic learns of a connection (the peer's address, its certificate
//! chain) is a [`ConnInfo`], which it puts in every request's extensions.
//!
//! Lock: [`Connections`] keeps the live connections in one mutex, taken when
//! a connection is accepted, when it is dropped, and when all are cut; never
//! on a read or a write.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use futures_util::task::AtomicWaker;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};

use crate::metrics::{ConnRejected, Metrics};
use crate::reload::Reloadable;
use crate::tls::TlsMaterial;

/// Binds a listener, with the address in the error.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// The connections accepted by the server's [`Acceptor`]s: a cheap handle
/// that can cut them all at once.
#[derive(Clone, Debug, Default)]
pub struct Connections {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// Set once, by [`Connections::cut_all`]; from then on every connection,
    /// live or later accepted, fails its reads and writes.
    cut: AtomicBool,
    next: AtomicU64,
    limits: ConnLimits,
    metrics: Option<Arc<Metrics>>,
    /// The waker of each live connection's task, by connection number, and
    /// how many connections each peer address holds.
    live: Mutex<Live>,
}

#[derive(Debug, Default)]
struct Live {
    wakers: HashMap<u64, Arc<AtomicWaker>>,
    per_peer: HashMap<IpAddr, u32>,
}

/// How many connections the server holds at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// In all (gRPC and HTTP together).
    pub total: usize,
    /// From one peer address.
    pub per_peer: u32,
}

impl Default for ConnLimits {
    fn default() -> ConnLimits {
        ConnLimits {
            total: 250_000,
            per_peer: 10_000,
        }
    }
}

impl Connections {
    /// A new, empty set, with the default limits and no metrics.
    pub fn new() -> Connections {
        Connections::default()
    }

    /// A new, empty set that holds at most `limits` and counts in `metrics`.
    pub fn with_limits(limits: ConnLimits, metrics: Arc<Metrics>) -> Connections {
        Connections {
            shared: Arc::new(Shared {
                limits,
                metrics: Some(metrics),
                ..Shared::default()
            }),
        }
    }

    /// How many accepted connections are still open.
    pub fn len(&self) -> usize {
        self.live().wakers.len()
    }

    /// Whether no accepted connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cuts every connection: their next read or write fails (and their
    /// tasks are woken to find out), which ends them and drops their
    /// streams. Returns how many were open.
    pub fn cut_all(&self) -> usize {
        self.shared.cut.store(true, Ordering::Release);
        let live = self.live();
        for waker in live.wakers.values() {
            waker.wake();
        }
        live.wakers.len()
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        // The map is only inserted into and removed from: a panic elsewhere
        // cannot leave it half-changed.
        self.shared
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Enrols an accepted socket, or refuses it when a cap is reached.
    fn enrol(&self, io: TcpStream, peer: SocketAddr) -> Result<Conn, ConnRejected> {
        let id = self.shared.next.fetch_add(1, Ordering::Relaxed);
        let waker = Arc::new(AtomicWaker::new());
        {
            let mut live = self.live();
            let limits = &self.shared.limits;
            if live.wakers.len() >= limits.total {
                return Err(self.refused(ConnRejected::CapTotal, peer));
            }
            let from_peer = live.per_peer.entry(peer.ip()).or_insert(0);
            if *from_peer >= limits.per_peer {
                return Err(self.refused(ConnRejected::CapPeer, peer));
            }
            *from_peer += 1;
            live.wakers.insert(id, waker.clone());
        }
        if let Some(m) = &self.shared.metrics {
            m.connections(1);
        }
        Ok(Conn {
            io,
            waker,
            id,
            peer,
            connections: self.clone(),
        })
    }

    fn refused(&self, why: ConnRejected, peer: SocketAddr) -> ConnRejected {
        self.count(why);
        if crate::log_limit::CONNECTIONS.allow() {
            tracing::info!(%peer, reason = why.as_str(), "connection refused");
        }
        why
    }

    fn count(&self, why: ConnRejected) {
        if let Some(m) = &self.shared.metrics {
            m.count_conn_rejected(why);
        }
    }

    fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.shared.metrics.as_ref()
    }
}

/// A listener whose accepted sockets have `TCP_NODELAY` set and are enrolled
/// in a [`Connections`]. Serves tonic as a stream ([`Acceptor::into_stream`])
/// and axum through [`Acceptor::http`].
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    connections: Connections,
}

impl Acceptor {
    /// Accepts on `listener`, enrolling each connection in `connections`.
    pub fn new(listener: TcpListener, connections: Connections) -> Acceptor {
        Acceptor {
            listener,
            connections,
        }
    }

    /// The next connection. A failed accept is retried: at once when only
    /// that connection failed, after a pause when the process is out of
    /// something (such as file descriptors), so as not to spin.
    pub async fn accept(&mut self) -> (Conn, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok((io, peer)) => {
                    if let Err(e) = io.set_nodelay(true) {
                        tracing::warn!(error = %e, %peer, "cannot set TCP_NODELAY");
                    }
                    match self.connections.enrol(io, peer) {
                        Ok(conn) => return (conn, peer),
                        // Dropped: closed at once.
                        Err(_) => continue,
                    }
                }
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    tracing::error!(error = %e, "accept failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// The connections as a stream, as tonic's `serve_with_incoming*` takes them.
    pub fn into_stream(self) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
        futures_util::stream::unfold(self, |mut acceptor| async move {
            let (conn, _) = acceptor.accept().await;
            Some((Ok(conn), acceptor))
        })
    }

    /// The connections that have proved themselves, as a stream for tonic:
    /// each accepted socket does its TLS handshake (with `admission.tls`) or
    /// sends the HTTP/2 preface (without) in a task of its own, within
    /// `admission.timeout`, and at most `admission.max_in_progress` at once.
    /// Dropping the stream stops accepting.
    pub fn admit(self, admission: Admission) -> Incoming {
        let (tx, rx) = mpsc::channel(256);
        let task = tokio::spawn(admit_loop(self, admission, tx));
        Incoming { rx, task }
    }
}

/// How connections prove themselves.
#[derive(Clone)]
pub struct Admission {
    /// TLS, if the server speaks it; plaintext HTTP/2 without.
    pub tls: Option<Arc<Reloadable<TlsMaterial>>>,
    /// How long a connection has for its handshake or preface.
    pub timeout: Duration,
    /// How many may be proving themselves at once; more are closed.
    pub max_in_progress: usize,
    /// Where failed TLS handshakes are written (a certificate refused, no
    /// TLS at all); timeouts and caps are only counted.
    pub audit: crate::security::Audit,
    /// For the web view: TLS offers HTTP/1.1 beside HTTP/2, and a plaintext
    /// HTTP/1 request is answered with a plain word to use `https://`.
    pub web: bool,
}

/// The client preface that opens every HTTP/2 connection (RFC 9113, 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn admit_loop(
    mut acceptor: Acceptor,
    admission: Admission,
    tx: mpsc::Sender<io::Result<Io>>,
) {
    let permits = Arc::new(Semaphore::new(admission.max_in_progress));
    loop {
        let (conn, peer) = tokio::select! {
            accepted = acceptor.accept() => accepted,
            () = tx.closed() => return,
        };
        let connections = acceptor.connections.clone();
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            connections.refused(ConnRejected::HandshakesBusy, peer);
            continue;
        };
        let (tx, admission) = (tx.clone(), admission.clone());
        tokio::spawn(async move {
            let metrics = connections.metrics().cloned();
            if let Some(m) = &metrics {
                m.handshakes(1);
            }
            let proved = tokio::time::timeout(admission.timeout, prove(conn, &admission)).await;
            if let Some(m) = &metrics {
                m.handshakes(-1);
            }
            drop(permit);
            match proved {
                Ok(Ok(io)) => {
                    let _ = tx.send(Ok(io)).await;
                }
                Ok(Err(Unproved { error: e, alerted })) => {
                    connections.refused(ConnRejected::HandshakeError, peer);
                    if crate::log_limit::CONNECTIONS.allow() {
                        tracing::info!(%peer, error = %e, "handshake failed");
                    }
                    if admission.tls.is_some() {
                        admission.audit.record(crate::security::AuditEvent {
                            event: "denied",
                            identity: None,
                            credential: None,
                            peer: Some(peer),
                            rpc: None,
                            agent_id: None,
                            result: "handshake_failed",
                            reason: Some(ConnRejected::HandshakeError.as_str()),
                            detail: Some(e.to_string()),
                        });
                    }
                    if let Some(mut conn) = alerted {
                        linger(&mut conn).await;
                    }
                }
                Err(_) => {
                    connections.refused(ConnRejected::Timeout, peer);
                }
            }
        });
    }
}

/// Why a connection did not prove itself; `alerted`: the TLS handshake
/// failed and the peer was sent an alert, which it must be given the time
/// to read (see [`linger`]).
struct Unproved {
    error: io::Error,
    alerted: Option<Conn>,
}

impl From<io::Error> for Unproved {
    fn from(error: io::Error) -> Unproved {
        Unproved {
            error,
            alerted: None,
        }
    }
}

async fn prove(mut conn: Conn, admission: &Admission) -> Result<Io, Unproved> {
    match &admission.tls {
        Some(tls) => {
            // A plaintext HTTP/2 client on the TLS port is told so in its
            // own protocol, rather than left to guess from a broken pipe;
            // so is a browser asking for http:// on the web port.
            let mut first = [0u8; 1];
            if conn.socket().peek(&mut first).await? == 1 {
                if admission.web && first[0].is_ascii_alphabetic() {
                    return Err(refuse_plain_http(conn).await.into());
                }
                if first[0] == PREFACE[0] {
                    return Err(refuse_plaintext(conn).await.into());
                }
            }
            let config = if admission.web {
                tls.current().web_config.clone()
            } else {
                tls.current().server_config.clone()
            };
            // In TLS 1.3 a client sends its certificate and, without waiting,
            // its first request: a refused certificate's alert would be lost
            // to the reset that closing on that unread request causes, and
            // the client would see only a broken connection. So the socket
            // comes back on failure, to close gently once the alert is out.
            let stream = tokio_rustls::TlsAcceptor::from(config)
                .accept(conn)
                .into_fallible()
                .await
                .map_err(|(error, conn)| Unproved {
                    error,
                    alerted: Some(conn),
                })?;
            let chain = stream
                .get_ref()
                .1
                .peer_certificates()
                .filter(|c| !c.is_empty())
                .map(|c| {
                    Arc::new(PeerCertificate::new(
                        c.iter().map(|c| c.clone().into_owned()).collect(),
                    ))
                });
            Ok(Io::Tls(Box::new(stream), chain))
        }
        None => {
            let mut first = [0u8; 24];
            conn.read_exact(&mut first).await?;
            if &first != PREFACE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "not HTTP/2 (a TLS client, or another protocol, on a plaintext port?)",
                )
                .into());
            }
            Ok(Io::Plain(conn, 0))
        }
    }
}

/// Answers a plaintext HTTP/2 client on the TLS port with a GOAWAY
/// (INADEQUATE_SECURITY, and a message saying to use TLS), lets it read
/// that, and closes.
async fn refuse_plaintext(mut conn: Conn) -> io::Error {
    use tokio::io::AsyncWriteExt;
    let mut preface = [0u8; 24];
    if conn.read_exact(&mut preface).await.is_ok() && &preface == PREFACE {
        const INADEQUATE_SECURITY: u32 = 0xc;
        let debug = b"this server speaks TLS only: use https:// (and --ca)";
        let mut frames = Vec::with_capacity(9 + 9 + 8 + debug.len());
        // An empty SETTINGS frame (the server's preface), then GOAWAY.
        frames.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        let len = (8 + debug.len()) as u32;
        frames.extend_from_slice(&len.to_be_bytes()[1..]);
        frames.extend_from_slice(&[0x7, 0, 0, 0, 0, 0]);
        frames.extend_from_slice(&0u32.to_be_bytes());
        frames.extend_from_slice(&INADEQUATE_SECURITY.to_be_bytes());
        frames.extend_from_slice(debug);
        if conn.write_all(&frames).await.is_ok() {
            linger(&mut conn).await;
        }
    }
    io::Error::new(
        io::ErrorKind::InvalidData,
        "plaintext HTTP/2 on the TLS port (told to use https://)",
    )
}

/// Answers a plaintext HTTP/1 request on the TLS web port with a 400 that
/// says to use `https://`, and closes.
async fn refuse_plain_http(mut conn: Conn) -> io::Error {
    use tokio::io::AsyncWriteExt;
    let body = "This port speaks HTTPS only: open the same address with https://\n";
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    if conn.write_all(answer.as_bytes()).await.is_ok() {
        linger(&mut conn).await;
    }
    io::Error::new(
        io::ErrorKind::InvalidData,
        "plaintext HTTP on the TLS web port (told to use https://)",
    )
}

/// Closes our side of `conn` after what we wrote, then reads what the
/// client still sends until it closes (for at most a second), so that
/// closing does not reset the connection before the client has read our
/// last words (a GOAWAY, a TLS alert).
async fn linger(conn: &mut Conn) {
    use tokio::io::AsyncWriteExt;
    let _ = conn.shutdown().await;
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while matches!(conn.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// The connections that have proved themselves (see [`Acceptor::admit`]).
pub struct Incoming {
    rx: mpsc::Receiver<io::Result<Io>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for Incoming {
    type Item = io::Result<Io>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// A client's certificate chain, as presented in its TLS handshake (its own
/// certificate first), with what the security layer made of it, worked out
/// once per connection.
#[derive(Debug)]
pub struct PeerCertificate {
    /// The chain.
    pub chain: Vec<CertificateDer<'static>>,
    /// The identity it gives, or why it gives none.
    pub identity: std::sync::OnceLock<Result<fleet_health_auth::Identity, String>>,
    /// When the client's own certificate expires (read once, for the
    /// per-second expiry check of open streams).
    pub not_after: std::sync::OnceLock<Option<std::time::SystemTime>>,
}

impl PeerCertificate {
    /// A chain whose identity is not yet worked out.
    pub fn new(chain: Vec<CertificateDer<'static>>) -> PeerCertificate {
        PeerCertificate {
            chain,
            identity: std::sync::OnceLock::new(),
            not_after: std::sync::OnceLock::new(),
        }
    }

    /// When the client's own certificate expires, if it can be read.
    pub fn expires(&self) -> Option<std::time::SystemTime> {
        *self.not_after.get_or_init(|| {
            self.chain
                .first()
                .and_then(|c| crate::tls::not_after(c).ok())
        })
    }
}

/// What tonic knows of a connection: in every request's extensions
/// (`request.extensions().get::<ConnInfo>()`). tonic's own
/// `Request::remote_addr` looks only for its own connection types and so
/// answers `None` on this server: take [`ConnInfo::remote`] instead.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The peer's address.
    pub remote: SocketAddr,
    /// The client certificate, on a TLS connection where one was presented.
    pub certificate: Option<Arc<PeerCertificate>>,
}

/// A connection that has proved itself: plaintext HTTP/2 (with how much of
/// the preface, already read, is still to be handed on), or TLS.
pub enum Io {
    /// Plaintext: the connection, and how many bytes of the preface were
    /// handed on so far.
    Plain(Conn, usize),
    /// TLS, with the client's certificate if it presented one.
    Tls(
        Box<tokio_rustls::server::TlsStream<Conn>>,
        Option<Arc<PeerCertificate>>,
    ),
}

impl std::fmt::Debug for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Io::Plain(c, _) => f.debug_tuple("Plain").field(c).finish(),
            Io::Tls(s, _) => f.debug_tuple("Tls").field(s.get_ref().0).finish(),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(conn, handed) => {
                if *handed < PREFACE.len() {
                    // The preface was read to check it: hand it on first.
                    let n = buf.remaining().min(PREFACE.len() - *handed);
                    buf.put_slice(&PREFACE[*handed..*handed + n]);
                    *handed += n;
                    return Poll::Ready(Ok(()));
                }
                Pin::new(conn).poll_read(cx, buf)
            }
            Io::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(c, _) => Pin::new(c).poll_write(cx, buf),
            Io::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(c, _) => Pin::new(c).poll_write_vectored(cx, bufs),
            Io::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(c, _) => c.is_write_vectored(),
            Io::Tls(s, _) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(c, _) => Pin::new(c).poll_flush(cx),
            Io::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(c, _) => Pin::new(c).poll_shutdown(cx),
            Io::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl AsRef<Conn> for Io {
    fn as_ref(&self) -> &Conn {
        match self {
            Io::Plain(c, _) => c,
            Io::Tls(s, _) => s.get_ref().0,
        }
    }
}

impl AsRef<Conn> for Conn {
    fn as_ref(&self) -> &Conn {
        self
    }
}

impl tonic::transport::server::Connected for Io {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        match self {
            Io::Plain(c, _) => ConnInfo {
                remote: c.peer,
                certificate: None,
            },
            Io::Tls(s, cert) => ConnInfo {
                remote: s.get_ref().0.peer,
                certificate: cert.clone(),
            },
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// The listener of the plaintext HTTP endpoint (`/metrics`, `/healthz`).
///
/// It stays plaintext: it carries no credential and nothing secret (the
/// fleet's counts and the server's own figures), and Prometheus and the
/// kubelet's probes scrape it without a certificate; bind it to an address
/// that only the monitoring can reach. Its connections count towards the
/// same caps as gRPC's ([`Connections`]), and each must keep itself busy:
/// one that sends nothing within the timeout after it is accepted is closed
/// and counted as a timeout, and one that later neither sends nor takes
/// anything for that long is closed (hyper, as axum runs it, has no read
/// timeout of its own). Accepting does no I/O, so a slow client never holds
/// up the next one.
#[derive(Debug)]
pub struct HttpAcceptor {
    acceptor: Acceptor,
    timeout: Duration,
}

impl Acceptor {
    /// This acceptor for the HTTP endpoint, closing connections idle for
    /// `timeout` (see [`HttpAcceptor`]).
    pub fn http(self, timeout: Duration) -> HttpAcceptor {
        HttpAcceptor {
            acceptor: self,
            timeout,
        }
    }
}

impl axum::serve::Listener for HttpAcceptor {
    type Io = Idle<Conn>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Idle<Conn>, SocketAddr) {
        let (conn, peer) = self.acceptor.accept().await;
        (Idle::new(conn, self.timeout, false), peer)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.acceptor.listener.local_addr()
    }
}

/// The listener of the web view over TLS: connections prove themselves as
/// gRPC's do ([`Acceptor::admit`], handshakes in tasks of their own, within
/// the handshake timeout and its cap), with HTTP/1.1 offered beside HTTP/2;
/// then each is closed when idle for the timeout, as on [`HttpAcceptor`].
/// Each connection's [`ConnInfo`] (its client certificate) is its address.
pub struct TlsHttpAcceptor {
    incoming: Incoming,
    local: SocketAddr,
    timeout: Duration,
}

impl Acceptor {
    /// This acceptor for the web view over TLS (see [`TlsHttpAcceptor`]);
    /// `admission.web` is set here.
    pub fn https(self, mut admission: Admission, idle: Duration) -> io::Result<TlsHttpAcceptor> {
        let local = self.listener.local_addr()?;
        admission.web = true;
        Ok(TlsHttpAcceptor {
            incoming: self.admit(admission),
            local,
            timeout: idle,
        })
    }
}

impl axum::serve::Listener for TlsHttpAcceptor {
    type Io = Idle<Io>;
    type Addr = ConnInfo;

    async fn accept(&mut self) -> (Idle<Io>, ConnInfo) {
        use futures_util::StreamExt;
        loop {
            match self.incoming.next().await {
                Some(Ok(io)) => {
                    let info = tonic::transport::server::Connected::connect_info(&io);
                    return (Idle::new(io, self.timeout, true), info);
                }
                Some(Err(_)) => {}
                // The admitting task has ended: accept nothing more.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<ConnInfo> {
        Ok(ConnInfo {
            remote: self.local,
            certificate: None,
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsHttpAcceptor>>
    for ConnInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsHttpAcceptor>) -> ConnInfo {
        stream.remote_addr().clone()
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, HttpAcceptor>>
    for ConnInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, HttpAcceptor>) -> ConnInfo {
        ConnInfo {
            remote: *stream.remote_addr(),
            certificate: None,
        }
    }
}

/// A connection closed when it neither sends nor takes anything for its
/// timeout (see [`HttpAcceptor`]).
#[derive(Debug)]
pub struct Idle<T = Conn> {
    conn: T,
    timeout: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// Whether the peer has sent anything yet (it has proved itself).
    spoke: bool,
}

impl<T: AsRef<Conn>> Idle<T> {
    /// `spoke`: whether the peer has proved itself already (a TLS
    /// handshake), so that its going silent is no refused connection.
    fn new(conn: T, timeout: Duration, spoke: bool) -> Idle<T> {
        Idle {
            conn,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            spoke,
        }
    }

    fn progressed(&mut self) {
        let next = tokio::time::Instant::now() + self.timeout;
        self.deadline.as_mut().reset(next);
    }

    /// Called when the connection is waiting: fails it once the deadline
    /// has passed.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if self.deadline.as_mut().poll(cx).is_pending() {
            return None;
        }
        if !self.spoke {
            self.conn.as_ref().connections.count(ConnRejected::Timeout);
        }
        tracing::debug!(peer = %self.conn.as_ref().peer, "idle HTTP connection closed");
        Some(io::Error::new(
            io::ErrorKind::TimedOut,
            "the connection was idle for too long",
        ))
    }
}

impl<T: AsRef<Conn> + AsyncRead + Unpin> AsyncRead for Idle<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.conn).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.spoke = true;
                    this.progressed();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }
}

impl<T: AsRef<Conn> + AsyncWrite + Unpin> AsyncWrite for Idle<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.conn).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.progressed();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_shutdown(cx)
    }
}

/// An accepted connection: the socket, and its place in [`Connections`].
/// Reads and writes fail once the connections are cut.
#[derive(Debug)]
pub struct Conn {
    io: TcpStream,
    waker: Arc<AtomicWaker>,
    id: u64,
    peer: SocketAddr,
    connections: Connections,
}

impl Conn {
    /// The socket.
    pub fn socket(&self) -> &TcpStream {
        &self.io
    }

    /// Whether the connection has been cut. Registers the task's waker
    /// first, so that a cut that comes after the check still wakes it.
    fn is_cut(&self, cx: &Context<'_>) -> bool {
        self.waker.register(cx.waker());
        self.connections.shared.cut.load(Ordering::Acquire)
    }
}

fn cut() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the server is stopping and its drain deadline has passed",
    )
}

impl Drop for Conn {
    fn drop(&mut self) {
        {
            let mut live = self.connections.live();
            live.wakers.remove(&self.id);
            let ip = self.peer.ip();
            if let Some(n) = live.per_peer.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    live.per_peer.remove(&ip);
                }
            }
        }
        if let Some(m) = self.connections.metrics() {
            m.connections(-1);
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.is_cut(cx) {
            return Poll::Ready(Err(cut()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.is_cut(cx) {
            return Poll::Ready(Err(cut()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.is_cut(cx) {
            return Poll::Ready(Err(cut()));
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.is_cut(cx) {
            return Poll::Ready(Err(cut()));
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair(connections: &Connections) -> (Conn, TcpStream) {
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("addr");
        let mut acceptor = Acceptor::new(listener, connections.clone());
        let client = TcpStream::connect(addr).await.expect("connects");
        let (conn, peer) = acceptor.accept().await;
        assert_eq!(peer, client.local_addr().expect("addr"));
        (conn, client)
    }

    #[tokio::test]
    async fn accepted_sockets_have_nodelay() {
        let connections = Connections::new();
        let (conn, client) = pair(&connections).await;
        // The client side is left as the system made it; the server side is not.
        assert!(!client.nodelay().expect("reads the option"));
        assert!(conn.socket().nodelay().expect("reads the option"));
    }

    #[tokio::test]
    async fn the_stream_for_tonic_sets_nodelay_too() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("addr");
        let mut incoming = Box::pin(Acceptor::new(listener, Connections::new()).into_stream());
        let _client = TcpStream::connect(addr).await.expect("connects");
        let conn = incoming
            .next()
            .await
            .expect("a connection")
            .expect("accepted");
        assert!(conn.socket().nodelay().expect("reads the option"));
    }

    #[tokio::test]
    async fn connections_carry_bytes_both_ways_and_leave_when_dropped() {
        let connections = Connections::new();
        let (mut conn, mut client) = pair(&connections).await;
        assert_eq!(connections.len(), 1);
        client.write_all(b"ping").await.expect("writes");
        let mut buf = [0; 4];
        conn.read_exact(&mut buf).await.expect("reads");
        assert_eq!(&buf, b"ping");
        conn.write_all(b"pong").await.expect("writes");
        client.read_exact(&mut buf).await.expect("reads");
        assert_eq!(&buf, b"pong");
        drop(conn);
        assert!(connections.is_empty());
    }

    #[tokio::test]
    async fn cutting_wakes_a_parked_read_and_fails_it() {
        let connections = Connections::new();
        let (mut conn, _client) = pair(&connections).await;
        // Nothing will come from the client: the read parks until the cut.
        let reader = tokio::spawn(async move {
            let mut buf = [0; 1];
            conn.read(&mut buf).await
        });
        tokio::task::yield_now().await;
        assert_eq!(connections.cut_all(), 1);
        let err = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("the cut wakes the read")
            .expect("task ends")
            .expect_err("a cut connection fails");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        assert!(connections.is_empty());
    }

    /// An acceptor on an ephemeral port admitting with `admission`.
    async fn admitting(
        limits: ConnLimits,
        timeout: Duration,
        max_in_progress: usize,
    ) -> (SocketAddr, Incoming, Arc<Metrics>) {
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("addr");
        let metrics = Arc::new(Metrics::default());
        let connections = Connections::with_limits(limits, metrics.clone());
        let incoming = Acceptor::new(listener, connections).admit(Admission {
            tls: None,
            timeout,
            max_in_progress,
            audit: crate::security::Audit::off(),
            web: false,
        });
        (addr, incoming, metrics)
    }

    fn scraped(metrics: &Metrics, series: &str) -> u64 {
        let text = metrics.render(&crate::metrics::FleetGauges::default());
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series}"))
    }

    /// Waits until the server closes `client` (a read returns 0 or fails).
    async fn closed_by_server(client: &mut TcpStream) {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf))
            .await
            .expect("the server closes the connection");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_closed_after_the_timeout() {
        let (addr, mut incoming, metrics) =
            admitting(ConnLimits::default(), Duration::from_millis(200), 16).await;
        let mut silent = TcpStream::connect(addr).await.expect("connects");
        closed_by_server(&mut silent).await;
        assert_eq!(
            scraped(
                &metrics,
                "fleet_health_connections_rejected_total{reason=\"timeout\"}"
            ),
            1
        );
        // One that speaks HTTP/2 gets through, its preface intact.
        let mut speaker = TcpStream::connect(addr).await.expect("connects");
        speaker.write_all(PREFACE).await.expect("writes");
        speaker.write_all(b"more").await.expect("writes");
        let mut io = tokio::time::timeout(Duration::from_secs(10), incoming.next())
            .await
            .expect("admitted")
            .expect("a connection")
            .expect("ok");
        let mut got = [0u8; 28];
        io.read_exact(&mut got).await.expect("reads");
        assert_eq!(&got[..24], PREFACE);
        assert_eq!(&got[24..], b"more");
        assert_eq!(scraped(&metrics, "fleet_health_handshakes"), 0);
    }

    #[tokio::test]
    async fn something_other_than_http2_is_closed() {
        let (addr, _incoming, metrics) =
            admitting(ConnLimits::default(), Duration::from_secs(10), 16).await;
        let mut client = TcpStream::connect(addr).await.expect("connects");
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("writes");
        closed_by_server(&mut client).await;
        assert_eq!(
            scraped(
                &metrics,
                "fleet_health_connections_rejected_total{reason=\"handshake_error\"}"
            ),
            1
        );
    }

    #[tokio::test]
    async fn connections_are_capped_per_peer_and_in_total() {
        let limits = ConnLimits {
            total: 3,
            per_peer: 2,
        };
        let (addr, _incoming, metrics) = admitting(limits, Duration::from_secs(30), 16).await;
        let _a = TcpStream::connect(addr).await.expect("connects");
        let _b = TcpStream::connect(addr).await.expect("connects");
        let mut c = TcpStream::connect(addr).await.expect("connects");
        closed_by_server(&mut c).await;
        assert_eq!(
            scraped(
                &metrics,
                "fleet_health_connections_rejected_total{reason=\"cap_peer\"}"
            ),
            1
        );
        assert_eq!(scraped(&metrics, "fleet_health_connections"), 2);
        // Another address (127.0.0.2 is loopback too) meets the total cap.
        let other = tokio::net::TcpSocket::new_v4().expect("socket");
        other
            .bind("127.0.0.2:0".parse().expect("addr"))
            .expect("binds");
        let _d = other.connect(addr).await.expect("connects");
        let other = tokio::net::TcpSocket::new_v4().expect("socket");
        other
            .bind("127.0.0.2:0".parse().expect("addr"))
            .expect("binds");
        let mut e = other.connect(addr).await.expect("connects");
        closed_by_server(&mut e).await;
        assert_eq!(
            scraped(
                &metrics,
                "fleet_health_connections_rejected_total{reason=\"cap_total\"}"
            ),
            1
        );
        // A closed connection frees its place.
        drop(_a);
        tokio::time::timeout(Duration::from_secs(10), async {
            while scraped(&metrics, "fleet_health_connections") != 2 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the place is freed");
        let _f = TcpStream::connect(addr).await.expect("connects");
    }

    #[tokio::test]
    async fn handshakes_beyond_the_cap_are_closed() {
        let (addr, _incoming, metrics) =
            admitting(ConnLimits::default(), Duration::from_secs(30), 1).await;
        let _slow = TcpStream::connect(addr).await.expect("connects");
        tokio::time::timeout(Duration::from_secs(10), async {
            while scraped(&metrics, "fleet_health_handshakes") != 1 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the first is in its handshake");
        let mut second = TcpStream::connect(addr).await.expect("connects");
        closed_by_server(&mut second).await;
        assert_eq!(
            scraped(
                &metrics,
                "fleet_health_connections_rejected_total{reason=\"handshakes_busy\"}"
            ),
            1
        );
    }

    #[tokio::test]
    async fn a_connection_accepted_after_the_cut_fails_at_once() {
        let connections = Connections::new();
        connections.cut_all();
        let (mut conn, _client) = pair(&connections).await;
        let err = conn.write_all(b"x").await.expect_err("cut");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    }

    /// An acceptor admitting TLS with the files of `pki` (client
    /// certificates from its CA); its material is reloadable.
    async fn admitting_tls(
        pki: &crate::testing::TestPki,
        timeout: Duration,
    ) -> (
        SocketAddr,
        Incoming,
        Arc<Metrics>,
        Arc<Reloadable<TlsMaterial>>,
    ) {
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("addr");
        let metrics = Arc::new(Metrics::default());
        let files = pki.files(true);
        let tls = Reloadable::load(
            crate::metrics::Reloaded::Tls,
            files.all(),
            Box::new(move || files.load()),
            metrics.clone(),
        )
        .expect("loads");
        let connections = Connections::with_limits(ConnLimits::default(), metrics.clone());
        let incoming = Acceptor::new(listener, connections).admit(Admission {
            tls: Some(tls.clone()),
            timeout,
            max_in_progress: 16,
            audit: crate::security::Audit::off(),
            web: false,
        });
        (addr, incoming, metrics, tls)
    }

    async fn next(incoming: &mut Incoming) -> Io {
        tokio::time::timeout(Duration::from_secs(10), incoming.next())
            .await
            .expect("admitted")
            .expect("a connection")
            .expect("ok")
    }

    fn localhost() -> rustls_pki_types::ServerName<'static> {
        rustls_pki_types::ServerName::try_from("localhost").expect("a name")
    }

    #[tokio::test]
    async fn tls_with_and_without_a_client_certificate_and_what_tonic_learns() {
        use tonic::transport::server::Connected;
        let pki = crate::testing::TestPki::new("test CA");
        let (addr, mut incoming, metrics, _tls) =
            admitting_tls(&pki, Duration::from_secs(10)).await;

        // No certificate (a token holder): admitted, no chain.
        let tcp = TcpStream::connect(addr).await.expect("connects");
        let local = tcp.local_addr().expect("addr");
        let client = crate::testing::tls_client(pki.ca.cert_pem(), None)
            .connect(localhost(), tcp)
            .await
            .expect("handshake");
        let (_, session) = client.get_ref();
        assert_eq!(
            session.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));
        let io = next(&mut incoming).await;
        let info = io.connect_info();
        assert_eq!(info.remote, local);
        assert!(info.certificate.is_none());

        // With one: the chain as presented, its own certificate first.
        let agent = pki.agent("web-1", fleet_health_auth::pki::Validity::days(1));
        let tcp = TcpStream::connect(addr).await.expect("connects");
        let mut client = crate::testing::tls_client(pki.ca.cert_pem(), Some(&agent))
            .connect(localhost(), tcp)
            .await
            .expect("handshake");
        let mut io = next(&mut incoming).await;
        let chain = &io.connect_info().certificate.expect("a chain").chain;
        assert_eq!(chain.as_slice(), &[crate::testing::der(&agent.cert_pem)]);
        // Bytes go both ways through it.
        client.write_all(b"ping").await.expect("writes");
        let mut buf = [0u8; 4];
        io.read_exact(&mut buf).await.expect("reads");
        assert_eq!(&buf, b"ping");
        assert_eq!(scraped(&metrics, "fleet_health_connections"), 2);
        assert_eq!(scraped(&metrics, "fleet_health_handshakes"), 0);
    }

    #[tokio::test]
    async fn certificates_from_another_ca_or_expired_are_refused_at_the_handshake() {
        let pki = crate::testing::TestPki::new("test CA");
        let (addr, _incoming, metrics, _tls) = admitting_tls(&pki, Duration::from_secs(10)).await;
        let stranger = crate::testing::TestPki::new("another CA");
        let foreign = stranger.agent("web-1", fleet_health_auth::pki::Validity::days(1));
        let now = std::time::SystemTime::now();
        let expired = pki.agent(
            "web-1",
            fleet_health_auth::pki::Validity {
                not_before: now - Duration::from_secs(7200),
                not_after: now - Duration::from_secs(3600),
            },
        );
        for (n, who) in [foreign, expired].iter().enumerate() {
            let tcp = TcpStream::connect(addr).await.expect("connects");
            // TLS 1.3: the client finishes before the server has checked its
            // certificate; the refusal comes as an alert on the first read.
            let refused = async {
                let mut client = crate::testing::tls_client(pki.ca.cert_pem(), Some(who))
                    .connect(localhost(), tcp)
                    .await?;
                let mut buf = [0u8; 1];
                client.read(&mut buf).await
            };
            let read = tokio::time::timeout(Duration::from_secs(10), refused)
                .await
                .expect("refused at once");
            assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
            tokio::time::timeout(Duration::from_secs(10), async {
                while scraped(
                    &metrics,
                    "fleet_health_connections_rejected_total{reason=\"handshake_error\"}",
                ) != n as u64 + 1
                {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .expect("counted");
        }
    }

    #[tokio::test]
    async fn a_tls_connection_that_says_nothing_is_closed_after_the_timeout() {
        let pki = crate::testing::TestPki::new("test CA");
        let (addr, _incoming, metrics, _tls) =
            admitting_tls(&pki, Duration::from_millis(200)).await;
        let mut silent = TcpStream::connect(addr).await.expect("connects");
        closed_by_server(&mut silent).await;
        assert_eq!(
            scraped(
                &metrics,
                "fleet_health_connections_rejected_total{reason=\"timeout\"}"
            ),
            1
        );
        // Half a client hello is no better.
        let mut slow = TcpStream::connect(addr).await.expect("connects");
        slow.write_all(&[0x16, 0x03, 0x01, 0x01, 0x00, 0x01])
            .await
            .expect("writes");
        closed_by_server(&mut slow).await;
        assert_eq!(
            scraped(
                &metrics,
                "fleet_health_connections_rejected_total{reason=\"timeout\"}"
            ),
            2
        );
    }

    #[tokio::test]
    async fn a_reload_serves_the_new_certificate_to_new_connections_and_keeps_the_open_ones() {
        let pki = crate::testing::TestPki::new("test CA");
        let (addr, mut incoming, metrics, tls) = admitting_tls(&pki, Duration::from_secs(10)).await;
        let generation = tls.subscribe();
        let tcp = TcpStream::connect(addr).await.expect("connects");
        let mut old = crate::testing::tls_client(pki.ca.cert_pem(), None)
            .connect(localhost(), tcp)
            .await
            .expect("handshake");
        let old_cert = old.get_ref().1.peer_certificates().expect("served")[0].clone();
        let mut old_io = next(&mut incoming).await;

        let renewed = pki.new_server_cert();
        tls.reload_now().expect("reloads");
        assert_eq!(*generation.borrow(), 1);
        let tcp = TcpStream::connect(addr).await.expect("connects");
        let new = crate::testing::tls_client(pki.ca.cert_pem(), None)
            .connect(localhost(), tcp)
            .await
            .expect("handshake");
        let served = new.get_ref().1.peer_certificates().expect("served")[0].clone();
        assert_eq!(served, crate::testing::der(&renewed.cert_pem));
        assert_ne!(served, old_cert);

        // The connection opened before the reload still carries bytes.
        old.write_all(b"still").await.expect("writes");
        let mut buf = [0u8; 5];
        old_io.read_exact(&mut buf).await.expect("reads");
        assert_eq!(&buf, b"still");
        old_io.write_all(b"here").await.expect("writes");
        let mut buf = [0u8; 4];
        old.read_exact(&mut buf).await.expect("reads");
        assert_eq!(&buf, b"here");

        // A broken certificate: the reload fails, the renewed one stays.
        pki.write("server.pem", "not a certificate");
        let e = tls.reload_now().expect_err("broken");
        assert!(e.contains("server.pem"), "{e}");
        assert_eq!(*generation.borrow(), 1);
        let tcp = TcpStream::connect(addr).await.expect("connects");
        let again = crate::testing::tls_client(pki.ca.cert_pem(), None)
            .connect(localhost(), tcp)
            .await
            .expect("handshake with the renewed certificate");
        assert_eq!(
            again.get_ref().1.peer_certificates().expect("served")[0],
            served
        );
        assert_eq!(
            scraped(
                &metrics,
                "fleet_health_reloads_total{what=\"tls\",result=\"failed\"}"
            ),
            1
        );
    }
}
