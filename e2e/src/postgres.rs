//! A real PostgreSQL server for the tests, started in a temporary directory
//! on a loopback port and stopped when dropped: `initdb` and `pg_ctl` from
//! the machine's PostgreSQL (Debian's `postgresql` package; `.ci/run`
//! installs it). Never a mock.
//!
//! The binaries are found in `$FLEET_HEALTH_PG_BIN`, else in the newest
//! `/usr/lib/postgresql/VERSION/bin`, else on the `PATH`. PostgreSQL refuses
//! to run as root: as root, the server runs as the `postgres` user (which
//! the package creates) through `runuser`.
//!
//! The server trusts every local connection (a test's own, on loopback) and
//! runs with `fsync=off`: the tests kill processes, never the machine.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

/// A running PostgreSQL server, stopped (immediately) when dropped.
#[derive(Debug)]
pub struct Postgres {
    bin: PathBuf,
    as_postgres: bool,
    port: u16,
    // Declared last: removed after the server is stopped.
    dir: TempDir,
}

/// The directory of PostgreSQL's server binaries.
pub(crate) fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLEET_HEALTH_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map_or_else(|| PathBuf::from(""), |(_, bin)| bin)
}

/// Whether the tests run as root (PostgreSQL then runs as `postgres`).
pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

impl Postgres {
    /// Starts a new, empty server; panics with what to install when
    /// PostgreSQL is missing.
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("fleet-health-pg-")
            .tempdir()
            .expect("a temporary directory");
        let as_postgres = is_root();
        let mut pg = Postgres {
            bin,
            as_postgres,
            port: 0,
            dir,
        };
        if as_postgres {
            run_plain(
                "chown",
                &["postgres:", &pg.dir.path().display().to_string()],
            );
        }
        let data = pg.data().display().to_string();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "fleet",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
        // A free port, taken again by the server; retried if another
        // process took it meanwhile.
        for attempt in 0.. {
            pg.port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
                pg.port,
                pg.dir.path().display()
            );
            let log = pg.dir.path().join("postgres.log").display().to_string();
            let out = pg.command(
                "pg_ctl",
                &[
                    "-D", &data, "-l", &log, "-o", &options, "-w", "-t", "60", "start",
                ],
            );
            if out.status.success() {
                break;
            }
            assert!(
                attempt < 3,
                "PostgreSQL did not start: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        pg
    }

    /// The connection URL: the `fleet` superuser, database `postgres`.
    pub fn url(&self) -> String {
        format!("postgres://fleet@127.0.0.1:{}/postgres", self.port)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, tool: &str, args: &[&str]) -> Output {
        let path = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        cmd.args(args).current_dir(self.dir.path());
        cmd.output().unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): install PostgreSQL (Debian: apt-get install postgresql) \
                 or set FLEET_HEALTH_PG_BIN",
                path.display()
            )
        })
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self.command(tool, args);
        assert!(
            out.status.success(),
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// The directory it runs in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data().display().to_string();
        let _ = self.command("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }
}

/// `program args...`, which must succeed.
pub(crate) fn run_plain(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
