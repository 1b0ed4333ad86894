//! End-to-end test support: runs the real `fleet-health-server` and
//! `fleet-health` binaries together.
//!
//! - [`Server`]: the server binary on an ephemeral port with its own
//!   temporary data directory; it can be killed with SIGKILL and restarted on
//!   the same directory.
//! - [`Server::cli`] and [`cli`]: one run of the CLI binary, with its exit
//!   code, stdout and stderr ([`Run`]).
//! - [`Proxy`]: a TCP relay between an agent and the server, so that a test
//!   can cut connections, hold back the server's answers, and point agents at
//!   a restarted server (whose port changed) without them knowing.
//! - [`eventually`]: polls a condition until a bounded deadline.
//! - [`postgres::Postgres`]: a real PostgreSQL server in a temporary
//!   directory, for the cluster's tests.
//! - [`patroni::Patroni`]: etcd and three Patroni-managed PostgreSQL servers
//!   with a synchronous standby, for the cluster's failure tier.
//! - [`ledger`]: reporters whose events' times encode their sequence
//!   numbers, and the check that each acknowledged event was applied once.
//!
//! The binaries are looked up next to the test executable (see [`binary`]);
//! `cargo test --workspace` builds them before running any test.

pub mod ledger;
pub mod patroni;
pub mod postgres;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The longest any single CLI run may take before the test fails.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a server may take to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The path of one of the workspace's binaries (`fleet-health-server` or
/// `fleet-health`), found next to the test executable: the test runs as
/// `target/<profile>/deps/<test>-<hash>` and the binaries are in
/// `target/<profile>/`. Panics with what to do when it is missing.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable is in target/<profile>/deps/");
    let path = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} not found: run `cargo test --workspace`, which builds the binaries, \
         or `cargo build -p fleet-health-server -p fleet-health-cli` first",
        path.display()
    );
    path
}

/// A free loopback port (for a server that must know its address before it
/// starts, such as a cluster's node, which advertises it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Whether a `fleet-health cluster status -o json` answer has `n` live
/// nodes, each serving shards, and every shard served (a dead node stays
/// listed, not live, until it comes back).
pub fn serving(status: &serde_json::Value, n: usize) -> bool {
    status["unowned"] == 0
        && status["nodes"].as_array().is_some_and(|nodes| {
            let live: Vec<_> = nodes.iter().filter(|n| n["live"] == true).collect();
            live.len() == n && live.iter().all(|n| n["shards"].as_u64() > Some(0))
        })
}

/// A new, empty temporary directory for a server's data, removed on drop.
pub fn data_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("fleet-health-e2e-")
        .tempdir()
        .expect("create a temporary data directory")
}

/// A running `fleet-health-server` binary, killed when dropped.
#[derive(Debug)]
pub struct Server {
    child: Child,
    addr: SocketAddr,
    args: Vec<String>,
    env: Vec<(String, String)>,
    logs: Arc<Mutex<Vec<String>>>,
    // Declared last: removed after the child is killed.
    dir: TempDir,
}

impl Server {
    /// Starts the server on `127.0.0.1:0` with metrics off (unless `args` give `--metrics-listen`), JSON logs, a new
    /// temporary data directory, and `args` (such as `--silence-window 2s`).
    pub async fn start(args: &[&str]) -> Server {
        Server::start_with_env(args, &[]).await
    }

    /// [`Server::start`] with these environment variables set for the server.
    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_in(data_dir(), args, env).await
    }

    /// [`Server::start_with_env`] on the data directory `dir` (which may hold
    /// a restored state).
    pub async fn start_in(dir: TempDir, args: &[&str], env: &[(&str, &str)]) -> Server {
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (child, addr) = spawn_server(dir.path(), &args, &env, Arc::clone(&logs)).await;
        Server {
            child,
            addr,
            args,
            env,
            logs,
            dir,
        }
    }

    /// A node of the cluster whose database is at `url`, with the ID `name`
    /// and a lease of `lease` (`2s`), listening on (and advertising) a free
    /// loopback port, metrics on.
    pub async fn start_node(url: &str, name: &str, lease: &str) -> Server {
        let addr = format!("127.0.0.1:{}", free_port());
        Server::start(&[
            "--cluster",
            url,
            "--node-id",
            name,
            "--listen",
            &addr,
            "--advertise",
            &addr,
            "--cluster-lease",
            lease,
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .await
    }

    /// Waits (at most 20 s) until this node says `n` live nodes serve every
    /// shard.
    pub async fn until_serving(&self, n: usize) {
        eventually(
            &format!("{n} nodes serve every shard"),
            Duration::from_secs(20),
            || async {
                serving(
                    &self.cli(&["cluster", "status", "-o", "json"]).await.json(),
                    n,
                )
                .then_some(())
            },
        )
        .await;
    }

    /// The gRPC address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The gRPC address as a URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The gRPC address as a TLS URL (`https://127.0.0.1:PORT`), for a
    /// server started with `--tls-cert`.
    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The web view's own address the server logged at start, for a server
    /// started with `--web-listen`.
    pub fn web_addr(&self) -> String {
        self.logs()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|v| v["fields"]["web"].as_str().map(str::to_owned))
            .filter(|a| a != "off")
            .expect("the server logs its web address (started with --web-listen?)")
    }

    /// The HTTP (metrics) address the server logged at start, for a server
    /// started with `--metrics-listen`.
    pub fn http_addr(&self) -> String {
        self.logs()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|v| v["fields"]["metrics"].as_str().map(str::to_owned))
            .expect("the server logs its HTTP address (started with --metrics-listen?)")
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's process ID (to send it a signal).
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the server is running")
    }

    /// What the server has logged so far (for failure messages).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Kills the server with SIGKILL (no chance to commit or say goodbye) and
    /// waits until it is gone.
    pub async fn kill9(&mut self) {
        self.child.start_kill().expect("send SIGKILL to the server");
        let status = tokio::time::timeout(START_TIMEOUT, self.child.wait())
            .await
            .expect("the killed server exits")
            .expect("wait for the server");
        assert!(!status.success(), "a killed server does not exit cleanly");
    }

    /// Sends the server `signal` (`"STOP"`, `"CONT"`, `"TERM"`...) with
    /// `kill`.
    pub async fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Stops the server with SIGTERM (a graceful stop: a cluster's node
    /// hands its shards over first) and waits until it exits; panics unless
    /// it exits cleanly within `limit`.
    pub async fn terminate(&mut self, limit: Duration) {
        self.signal("TERM").await;
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the server did not stop within {limit:?} of SIGTERM"))
            .expect("wait for the server");
        assert!(
            status.success(),
            "the server exited with {status} after SIGTERM:\n{}",
            self.logs().join("\n")
        );
    }

    /// Starts the server again on the same data directory and flags (after
    /// [`Server::kill9`]); it listens on a new ephemeral port.
    pub async fn restart(&mut self) {
        let (child, addr) = spawn_server(
            self.dir.path(),
            &self.args,
            &self.env,
            Arc::clone(&self.logs),
        )
        .await;
        self.child = child;
        self.addr = addr;
    }

    /// A `fleet-health` command aimed at this server, not yet started.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = cli_command(args);
        cmd.env("FLEET_HEALTH_SERVER", self.url());
        cmd
    }

    /// Runs `fleet-health` against this server and waits for it to end.
    pub async fn cli(&self, args: &[&str]) -> Run {
        run(self.cli_command(args), args).await
    }

    /// `fleet-health report --agent AGENT EVENT [extra...]`, which must succeed.
    pub async fn report(&self, agent: &str, event: &str, extra: &[&str]) {
        let mut args = vec!["report", "--agent", agent, event];
        args.extend_from_slice(extra);
        self.cli(&args).await.expect_code(0);
    }

    /// Several agents' event sequences at once: each event is `report`'s
    /// arguments after the agent, split at spaces (`"starting --at -7h"`).
    /// Each agent's events are reported one after the other (each `report`
    /// waits for its acknowledgement), the agents concurrently.
    pub async fn report_all(&self, agents: &[(&str, &[&str])]) {
        let mut tasks = Vec::new();
        for (agent, events) in agents {
            let url = self.url();
            let agent = (*agent).to_owned();
            let events: Vec<String> = events.iter().map(|e| (*e).to_owned()).collect();
            tasks.push(tokio::spawn(async move {
                for event in events {
                    let mut args = vec!["report", "--agent", &agent];
                    args.extend(event.split_whitespace());
                    let mut cmd = cli_command(&args);
                    cmd.env("FLEET_HEALTH_SERVER", &url);
                    run(cmd, &args).await.expect_code(0);
                }
            }));
        }
        for task in tasks {
            task.await.expect("a report task");
        }
    }
}

async fn spawn_server(
    dir: &Path,
    args: &[String],
    env: &[(String, String)],
    logs: Arc<Mutex<Vec<String>>>,
) -> (Child, SocketAddr) {
    // Metrics off unless the test asks for them.
    let metrics: &[&str] = if args.iter().any(|a| a.starts_with("--metrics-listen")) {
        &[]
    } else {
        &["--metrics-listen", "off"]
    };
    // An address of the test's own (a cluster's node advertises it).
    let listen: &[&str] = if args.iter().any(|a| a == "--listen") {
        &[]
    } else {
        &["--listen", "127.0.0.1:0"]
    };
    let mut child = Command::new(binary("fleet-health-server"))
        .args(listen)
        .args(["--log-format", "json"])
        .args(metrics)
        .args(
            // A server in memory, or a cluster's node, takes no data
            // directory.
            (!args.iter().any(|a| a == "--in-memory" || a == "--cluster"))
                .then(|| [std::ffi::OsStr::new("--data-dir"), dir.as_os_str()])
                .into_iter()
                .flatten(),
        )
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start fleet-health-server");
    let mut lines = BufReader::new(child.stderr.take().expect("the server's stderr")).lines();
    let find_addr = async {
        loop {
            let Some(line) = lines.next_line().await.expect("read the server's stderr") else {
                let seen = logs.lock().unwrap_or_else(|e| e.into_inner()).join("\n");
                panic!("the server exited before listening; it said:\n{seen}");
            };
            logs.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(line.clone());
            if let Some(addr) = listening_addr(&line) {
                return addr;
            }
        }
    };
    let addr = tokio::time::timeout(START_TIMEOUT, find_addr)
        .await
        .expect("the server says where it listens in time");
    // Keep reading, so that the server never blocks on a full pipe.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let mut logs = logs.lock().unwrap_or_else(|e| e.into_inner());
            if logs.len() < 10_000 {
                logs.push(line);
            }
        }
    });
    (child, addr)
}

/// The gRPC address in the server's JSON "listening" log line.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = value.get("fields")?;
    if fields.get("message")?.as_str()? != "listening" {
        return None;
    }
    fields.get("grpc")?.as_str()?.parse().ok()
}

/// A `fleet-health` command with `args`: no colour, and no server address,
/// credentials or contexts from the environment of the test run (nor from
/// the contexts file of whoever runs it).
pub fn cli_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(binary("fleet-health"));
    cmd.args(args)
        .env_remove("FLEET_HEALTH_SERVER")
        .env_remove("FLEET_HEALTH_CONTEXT")
        .env_remove("FLEET_HEALTH_CA")
        .env_remove("FLEET_HEALTH_CERT")
        .env_remove("FLEET_HEALTH_KEY")
        .env_remove("FLEET_HEALTH_TOKEN")
        .env_remove("FLEET_HEALTH_TOKEN_FILE")
        .env_remove("FLEET_HEALTH_TOKENS")
        .env(
            "FLEET_HEALTH_CONFIG",
            "/nonexistent/fleet-health-e2e/config.toml",
        )
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs `fleet-health` with `args` (no server set: the default address, or
/// `--server` among the args).
pub async fn cli(args: &[&str]) -> Run {
    run(cli_command(args), args).await
}

async fn run(mut cmd: Command, args: &[&str]) -> Run {
    let output = tokio::time::timeout(RUN_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "`fleet-health {}` took over {RUN_TIMEOUT:?}",
                args.join(" ")
            )
        })
        .expect("run fleet-health");
    Run {
        args: args.join(" "),
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(output.stderr).expect("UTF-8 stderr"),
    }
}

/// One finished run of the CLI.
#[derive(Clone, Debug)]
pub struct Run {
    /// The arguments, for messages.
    pub args: String,
    /// The exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
}

impl Run {
    /// Asserts the exit code, showing the output when it differs.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code,
            Some(code),
            "`fleet-health {}` exited with {:?}, not {code}\n--- stdout\n{}--- stderr\n{}",
            self.args,
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Stdout as one JSON document.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "`fleet-health {}` printed no JSON ({e}):\n{}",
                self.args, self.stdout
            )
        })
    }

    /// Stdout as lines.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

/// Calls `check` every 50 ms until it returns `Some`, for at most `limit`;
/// panics naming `what` if it never does.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An RFC 3339 time as the CLI prints it, in microseconds since the epoch.
#[track_caller]
pub fn micros(rfc3339: &str) -> i64 {
    let t = humantime::parse_rfc3339(rfc3339)
        .unwrap_or_else(|e| panic!("{rfc3339:?} is not an RFC 3339 time: {e}"));
    let d = t.duration_since(UNIX_EPOCH).expect("after the epoch");
    i64::try_from(d.as_micros()).expect("in range")
}

/// The field `key` of `value` as an RFC 3339 time, in microseconds.
#[track_caller]
pub fn time_field(value: &serde_json::Value, key: &str) -> i64 {
    let text = value[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a time in {value}"));
    micros(text)
}

/// Now, in microseconds since the epoch.
pub fn now_micros() -> i64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after the epoch");
    i64::try_from(d.as_micros()).expect("in range")
}

/// A TCP relay on `127.0.0.1:0` to a server address that can change. It lets
/// a test cut every relayed connection at once, hold back what the server
/// sends (while still passing on what the client sends), and repoint agents
/// at a restarted server without them knowing.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<ProxyShared>,
    accept: JoinHandle<()>,
}

#[derive(Debug)]
struct ProxyShared {
    target: Mutex<Option<SocketAddr>>,
    connections: Mutex<Vec<JoinHandle<()>>>,
    hold: watch::Sender<bool>,
}

impl Proxy {
    /// Starts relaying to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let shared = Arc::new(ProxyShared {
            target: Mutex::new(Some(target)),
            connections: Mutex::new(Vec::new()),
            hold: watch::Sender::new(false),
        });
        let accept_shared = Arc::clone(&shared);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let shared = Arc::clone(&accept_shared);
                let task = tokio::spawn(relay(client, Arc::clone(&shared)));
                let mut connections = accept_shared
                    .connections
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                connections.retain(|t| !t.is_finished());
                connections.push(task);
            }
        });
        Proxy {
            addr,
            shared,
            accept,
        }
    }

    /// The URL agents connect to.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Relays new connections to `target`; `None`: refuses them (closes
    /// each at once).
    pub fn set_target(&self, target: Option<SocketAddr>) {
        *self.shared.target.lock().unwrap_or_else(|e| e.into_inner()) = target;
    }

    /// Holds back (`true`) or passes on again (`false`) what servers send to
    /// clients; what clients send still goes through.
    pub fn hold_replies(&self, hold: bool) {
        self.shared.hold.send_replace(hold);
    }

    /// Closes every relayed connection now, as a broken network would.
    pub fn cut(&self) {
        let connections = std::mem::take(
            &mut *self
                .shared
                .connections
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for task in connections {
            task.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn relay(client: TcpStream, shared: Arc<ProxyShared>) {
    let target = *shared.target.lock().unwrap_or_else(|e| e.into_inner());
    let Some(target) = target else { return };
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    let upstream = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match client_rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if server_wr.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let mut hold = shared.hold.subscribe();
    let downstream = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if hold.wait_for(|h| !*h).await.is_err() {
                return;
            }
            match server_rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    // Read while passing, but held back if the hold began
                    // meanwhile.
                    if hold.wait_for(|h| !*h).await.is_err() {
                        return;
                    }
                    if client_wr.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    // Either side ending ends the relay, closing both connections.
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}

/// One plaintext HTTP/1.1 GET of `path` from `addr` (HOST:PORT): the whole
/// answer, status line and headers included.
pub async fn http_get(addr: &str, path: &str) -> String {
    try_http_get(addr, path)
        .await
        .unwrap_or_else(|| panic!("GET {path} from {addr}: cannot connect or send"))
}

/// [`http_get`], or `None` when `addr` cannot be reached.
pub async fn try_http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    Some(String::from_utf8_lossy(&out).into_owned())
}
