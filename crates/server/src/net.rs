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
//! Lock: [`Connections`] keeps the live connections in one mutex, taken when
//! a connection is accepted, when it is dropped, and when all are cut; never
//! on a read or a write.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

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
    /// The waker of each live connection's task, by connection number.
    live: Mutex<HashMap<u64, Arc<AtomicWaker>>>,
}

impl Connections {
    /// A new, empty set.
    pub fn new() -> Connections {
        Connections::default()
    }

    /// How many accepted connections are still open.
    pub fn len(&self) -> usize {
        self.live().len()
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
        for waker in live.values() {
            waker.wake();
        }
        live.len()
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<AtomicWaker>>> {
        // The map is only inserted into and removed from: a panic elsewhere
        // cannot leave it half-changed.
        self.shared
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn enrol(&self, io: TcpStream) -> Conn {
        let id = self.shared.next.fetch_add(1, Ordering::Relaxed);
        let waker = Arc::new(AtomicWaker::new());
        self.live().insert(id, waker.clone());
        Conn {
            io,
            waker,
            id,
            connections: self.clone(),
        }
    }
}

/// A listener whose accepted sockets have `TCP_NODELAY` set and are enrolled
/// in a [`Connections`]. Serves tonic as a stream ([`Acceptor::into_stream`])
/// and axum as a [`axum::serve::Listener`].
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
                    return (self.connections.enrol(io), peer);
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
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

impl axum::serve::Listener for Acceptor {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        Acceptor::accept(self).await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// An accepted connection: the socket, and its place in [`Connections`].
/// Reads and writes fail once the connections are cut.
#[derive(Debug)]
pub struct Conn {
    io: TcpStream,
    waker: Arc<AtomicWaker>,
    id: u64,
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
        self.connections.live().remove(&self.id);
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

    #[tokio::test]
    async fn a_connection_accepted_after_the_cut_fails_at_once() {
        let connections = Connections::new();
        connections.cut_all();
        let (mut conn, _client) = pair(&connections).await;
        let err = conn.write_all(b"x").await.expect_err("cut");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    }
}
