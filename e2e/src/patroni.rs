//! A highly available PostgreSQL for the failure tier: etcd and three
//! Patroni-managed PostgreSQL servers in synchronous mode (a commit returns
//! only once a synchronous standby has it, and Patroni promotes only that
//! standby), everything on loopback ports with its data in one temporary
//! directory, stopped and removed when dropped. Debian's `patroni` and
//! `etcd-server` packages (`scripts/failure-tier.sh` installs them); never a
//! mock.
//!
//! The leader key lives `TTL` seconds in etcd and Patroni runs its loop every
//! second, so a killed primary is replaced within about `TTL` seconds.
//! Patroni and PostgreSQL refuse to run as root: as root, Patroni runs as the
//! `postgres` user through `setpriv`, which executes it in place (its process
//! ID is Patroni's own, to be killed).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::eventually;
use crate::postgres::{bin_dir, is_root, run_plain};

/// How long Patroni's leader key lives without a renewal (seconds): the
/// bound on how long a dead primary stays the leader.
pub const TTL: u64 = 8;

/// The longest the three servers may take to start, with a synchronous
/// standby streaming.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// One Patroni-managed PostgreSQL server.
#[derive(Debug)]
struct Member {
    name: String,
    rest: SocketAddr,
    pg: SocketAddr,
    data: PathBuf,
    /// `None` once killed.
    patroni: Option<Child>,
}

/// etcd and three Patroni-managed PostgreSQL servers, killed and removed
/// when dropped.
#[derive(Debug)]
pub struct Patroni {
    etcd: Child,
    members: Vec<Member>,
    bin: PathBuf,
    as_postgres: bool,
    // Declared last: removed after everything is stopped.
    dir: TempDir,
}

/// A free loopback address (taken again by a server at once).
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// The parent process ID of `pid`, from `/proc`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (COMMAND) STATE PPID ...": the command may hold spaces and
    // parentheses, so read after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| parent_of(*p) == Some(pid))
        .collect()
}

/// The postmaster's process ID of the server in `data`, if it runs.
fn postmaster(data: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

/// One HTTP GET of `path` from `addr`: the status code and the body, or
/// `None` when nothing answers.
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let answer = tokio::time::timeout(
        Duration::from_secs(3),
        crate::try_http_get(&addr.to_string(), path),
    )
    .await
    .ok()??;
    let code = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((code, body.to_owned()))
}

impl Patroni {
    /// Starts etcd and three Patroni nodes, and waits until one leads with a
    /// synchronous standby streaming. Panics with what to install when etcd
    /// or Patroni is missing.
    pub async fn start() -> Patroni {
        let dir = tempfile::Builder::new()
            .prefix("fleet-health-patroni-")
            .tempdir()
            .expect("a temporary directory");
        let as_postgres = is_root();
        if as_postgres {
            run_plain("chown", &["postgres:", &dir.path().display().to_string()]);
        }
        let (client, peer) = (free_addr(), free_addr());
        let etcd_log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd's log");
        let etcd = Command::new("etcd")
            .args(["--name", "etcd"])
            .arg("--data-dir")
            .arg(dir.path().join("etcd"))
            .args(["--listen-client-urls", &format!("http://{client}")])
            .args(["--advertise-client-urls", &format!("http://{client}")])
            .args(["--listen-peer-urls", &format!("http://{peer}")])
            .args(["--initial-advertise-peer-urls", &format!("http://{peer}")])
            .args(["--initial-cluster", &format!("etcd=http://{peer}")])
            .stdin(Stdio::null())
            .stdout(etcd_log.try_clone().expect("the log"))
            .stderr(etcd_log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run etcd ({e}): run `bash scripts/failure-tier.sh`, or \
                     apt-get install etcd-server patroni"
                )
            });
        let mut patroni = Patroni {
            etcd,
            members: Vec::new(),
            bin: bin_dir(),
            as_postgres,
            dir,
        };
        eventually("etcd is healthy", Duration::from_secs(30), || async {
            let (code, body) = get(client, "/health").await?;
            (code == 200 && body.contains("true")).then_some(())
        })
        .await;

        for i in 0..3 {
            let member = Member {
                name: format!("pg{i}"),
                rest: free_addr(),
                pg: free_addr(),
                data: patroni.dir.path().join(format!("pg{i}")),
                patroni: None,
            };
            let config = patroni.config(&member, client);
            let path = patroni.dir.path().join(format!("{}.yml", member.name));
            std::fs::write(&path, config).expect("write Patroni's configuration");
            patroni.members.push(member);
            patroni.spawn(i);
        }
        patroni.until_synchronous(START_TIMEOUT).await;
        patroni
    }

    /// Patroni's configuration for `member`, with its state in etcd at
    /// `etcd`.
    fn config(&self, member: &Member, etcd: SocketAddr) -> String {
        let dir = self.dir.path().display();
        format!(
            "scope: fleet-health
name: {name}
restapi:
  listen: {rest}
  connect_address: {rest}
etcd3:
  hosts: {etcd}
bootstrap:
  dcs:
    ttl: {TTL}
    loop_wait: 1
    retry_timeout: 3
    synchronous_mode: true
    postgresql:
      use_pg_rewind: false
      parameters:
        fsync: 'off'
        max_connections: 200
        wal_level: replica
        hot_standby: 'on'
  initdb:
    - encoding: UTF8
    - locale: C
    - auth: trust
postgresql:
  listen: {pg}
  connect_address: {pg}
  data_dir: {data}
  bin_dir: {bin}
  pgpass: {dir}/{name}.pgpass
  authentication:
    superuser:
      username: postgres
    replication:
      username: postgres
  parameters:
    unix_socket_directories: {dir}
  pg_hba:
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
  basebackup:
    - checkpoint: fast
",
            name = member.name,
            rest = member.rest,
            pg = member.pg,
            data = member.data.display(),
            bin = self.bin.display(),
        )
    }

    /// Starts member `i`'s Patroni (which starts its PostgreSQL).
    fn spawn(&mut self, i: usize) {
        let name = self.members[i].name.clone();
        let config = self.dir.path().join(format!("{name}.yml"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .expect("Patroni's log");
        let mut cmd = if self.as_postgres {
            run_plain("chown", &["postgres:", &config.display().to_string()]);
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
                "patroni",
            ]);
            c
        } else {
            Command::new("patroni")
        };
        let child = cmd
            .arg(&config)
            .env("HOME", self.dir.path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run patroni ({e}): run `bash scripts/failure-tier.sh`, or \
                     apt-get install patroni etcd-server"
                )
            });
        self.members[i].patroni = Some(child);
    }

    /// The addresses the PostgreSQL servers listen on, by member.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.members.iter().map(|m| m.pg).collect()
    }

    /// The URL of a database reached at any of `hosts`, connecting to the one
    /// that accepts writes (the primary): libpq's multi-host form with
    /// `target_session_attrs=read-write`.
    pub fn url_through(hosts: &[SocketAddr]) -> String {
        let hosts: Vec<String> = hosts.iter().map(ToString::to_string).collect();
        format!(
            "postgres://postgres@{}/postgres?target_session_attrs=read-write&connect_timeout=3",
            hosts.join(",")
        )
    }

    /// The multi-host URL of the three servers.
    pub fn url(&self) -> String {
        Patroni::url_through(&self.addrs())
    }

    /// The member that leads now (its index), by each running Patroni's
    /// `/leader` (200 only on the leader holding the key).
    pub async fn leader(&self) -> Option<usize> {
        for (i, m) in self.members.iter().enumerate() {
            if m.patroni.is_some() && get(m.rest, "/leader").await.is_some_and(|(c, _)| c == 200) {
                return Some(i);
            }
        }
        None
    }

    /// The cluster as a running Patroni sees it (`/cluster`).
    pub async fn cluster(&self) -> Option<serde_json::Value> {
        for m in self.members.iter().filter(|m| m.patroni.is_some()) {
            if let Some((200, body)) = get(m.rest, "/cluster").await
                && let Ok(v) = serde_json::from_str(&body)
            {
                return Some(v);
            }
        }
        None
    }

    /// Waits until a running member leads and another streams as its
    /// synchronous standby; returns the leader's index.
    pub async fn until_synchronous(&self, limit: Duration) -> usize {
        eventually(
            "a Patroni leader with a synchronous standby",
            limit,
            || async {
                let leader = self.leader().await?;
                let cluster = self.cluster().await?;
                let members = cluster["members"].as_array()?;
                let sync = members.iter().any(|m| {
                    m["role"] == "sync_standby"
                        && (m["state"] == "streaming" || m["state"] == "running")
                });
                sync.then_some(leader)
            },
        )
        .await
    }

    /// Kills the leader's Patroni and PostgreSQL (the postmaster and every
    /// backend) with SIGKILL at once, as a machine's death would; returns
    /// its index and when it was killed.
    pub async fn kill_leader(&mut self) -> (usize, Instant) {
        let leader = eventually("a Patroni leader", Duration::from_secs(30), || {
            self.leader()
        })
        .await;
        let member = &mut self.members[leader];
        let mut child = member.patroni.take().expect("the leader runs");
        let mut pids = vec![child.id()];
        if let Some(pm) = postmaster(&member.data) {
            pids.push(pm);
            pids.extend(children_of(pm));
        }
        let pids: Vec<String> = pids.iter().map(ToString::to_string).collect();
        let mut args = vec!["-KILL"];
        args.extend(pids.iter().map(String::as_str));
        run_plain("kill", &args);
        let killed = Instant::now();
        let _ = child.wait();
        (leader, killed)
    }

    /// Waits until a member other than `old` leads; returns its index.
    pub async fn until_new_leader(&self, old: usize, limit: Duration) -> usize {
        eventually("a new Patroni leader", limit, || async {
            self.leader().await.filter(|l| *l != old)
        })
        .await
    }

    /// Every member's log and etcd's, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for name in self.members.iter().map(|m| m.name.as_str()).chain(["etcd"]) {
            let log = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
                .unwrap_or_default();
            out.push_str(&format!("--- {name}\n{log}\n"));
        }
        out
    }

    /// Stops member `i`'s PostgreSQL at once, as its postgres user.
    fn stop_postgres(&self, i: usize) {
        let data = self.members[i].data.display().to_string();
        let pg_ctl = self.bin.join("pg_ctl");
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
            c
        } else {
            Command::new(&pg_ctl)
        };
        let _ = cmd
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Patroni {
    fn drop(&mut self) {
        // Patroni first, so that it does not start PostgreSQL again.
        for m in &mut self.members {
            if let Some(mut child) = m.patroni.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for i in 0..self.members.len() {
            if postmaster(&self.members[i].data).is_some() {
                self.stop_postgres(i);
            }
        }
        let _ = self.etcd.kill();
        let _ = self.etcd.wait();
    }
}
