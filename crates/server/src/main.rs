//! `fleet-health-server`: parses flags, starts logging, binds, and runs the
//! server until SIGINT or SIGTERM.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use fleet_health_auth::TrustDomain;
use fleet_health_sensor::Windows;
use fleet_health_server::clock::SystemClock;
use fleet_health_server::config::{
    ClusterConfig, Config, ConnLimits, FleetRules, IdentityLimits, Limits, SecurityConfig,
    Shutdown, Storage, StreamLimits, TlsFiles, Transport, WatchLimits,
};
use fleet_health_server::telemetry::{Telemetry, TelemetryConfig};
use fleet_health_server::{Listeners, Server, bind};

/// The fleet-health aggregator: agents stream their lifecycle events here; it
/// knows at every moment which agents are faulty and why.
#[derive(Debug, Parser)]
#[command(
    name = "fleet-health-server",
    version,
    about,
    max_term_width = 100,
    args_conflicts_with_subcommands = true
)]
struct Args {
    /// Run this instead of the server.
    #[command(subcommand)]
    command: Option<Sub>,

    /// Address for gRPC (agents, the CLI, grpcurl, health probes).
    #[arg(long, env = "FLEET_HEALTH_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,

    /// Address for Prometheus metrics (`/metrics`) and `/healthz`; `off` for none.
    #[arg(
        long,
        env = "FLEET_HEALTH_METRICS_LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    metrics_listen: MetricsAddr,

    /// Address for the web view on a port of its own. With security on,
    /// the view is served only here, over TLS (the gRPC port's certificate),
    /// to a reader identity: a token entered once, or a client certificate.
    /// Without security, the view is also on the metrics port.
    #[arg(long, env = "FLEET_HEALTH_WEB_LISTEN")]
    web_listen: Option<SocketAddr>,

    /// Directory of the durable store [default: $XDG_STATE_HOME/fleet-health,
    /// or ~/.local/state/fleet-health, or ./fleet-health-data].
    #[arg(long, env = "FLEET_HEALTH_DATA_DIR", conflicts_with = "in_memory")]
    data_dir: Option<PathBuf>,

    /// Keep no state on disk: a restart forgets the whole fleet.
    #[arg(long, env = "FLEET_HEALTH_IN_MEMORY")]
    in_memory: bool,

    /// Join a cluster of servers over this PostgreSQL database
    /// (postgres://USER[:PASSWORD]@HOST:PORT/DB) instead of keeping a store
    /// of one's own; needs --node-id and --advertise. See "Running several
    /// servers" in the README.
    #[arg(long, env = "FLEET_HEALTH_CLUSTER", value_name = "URL", conflicts_with_all = ["in_memory", "data_dir"])]
    cluster: Option<String>,

    /// This server's ID in the cluster: unique, and the same across its
    /// restarts [default: the host name].
    #[arg(long, env = "FLEET_HEALTH_NODE_ID", requires = "cluster")]
    node_id: Option<String>,

    /// The address (HOST:PORT of the gRPC port) the cluster's other servers
    /// reach this one on.
    #[arg(
        long,
        env = "FLEET_HEALTH_ADVERTISE",
        value_name = "HOST:PORT",
        requires = "cluster"
    )]
    advertise: Option<String>,

    /// How long a server's hold on its shards lasts without renewal: a
    /// server that dies hands its agents over within about two of these.
    #[arg(long, env = "FLEET_HEALTH_CLUSTER_LEASE", default_value = "10s", value_parser = positive_duration)]
    cluster_lease: Duration,

    /// With security on: a file holding the secret (at least 32
    /// characters) that the cluster's servers show each other when they pass
    /// a call on, over TLS. The same on every server; make one with
    /// `openssl rand -hex 32` or `head -c 32 /dev/urandom | base64`.
    #[arg(
        long,
        env = "FLEET_HEALTH_CLUSTER_SECRET_FILE",
        value_name = "FILE",
        requires = "cluster"
    )]
    cluster_secret_file: Option<PathBuf>,

    /// With security on: the trust bundle (PEM) for the other servers'
    /// certificates [default: --client-ca].
    #[arg(
        long,
        env = "FLEET_HEALTH_CLUSTER_CA",
        value_name = "FILE",
        requires = "cluster"
    )]
    cluster_ca: Option<PathBuf>,

    /// With security on: the name the other servers' certificates are
    /// checked for, when it is not the host of the address each advertises
    /// (behind one Service, the Service's name in the shared certificate).
    #[arg(
        long,
        env = "FLEET_HEALTH_CLUSTER_SERVER_NAME",
        value_name = "NAME",
        requires = "cluster"
    )]
    cluster_server_name: Option<String>,

    /// The number of shards, for the server that makes the cluster (fixed
    /// for the cluster's life; the cluster's own number wins afterwards).
    #[arg(long, env = "FLEET_HEALTH_CLUSTER_SHARDS", default_value_t = ClusterConfig::DEFAULT_SHARDS, value_parser = clap::value_parser!(u32).range(1..=65536))]
    cluster_shards: u32,

    /// The most memory the durable store's page cache may take, in MiB
    /// (no store, no cache: ignored with --in-memory).
    #[arg(long, env = "FLEET_HEALTH_STORE_CACHE_MB", default_value_t = (Storage::DEFAULT_CACHE_BYTES >> 20) as u32)]
    store_cache_mb: u32,

    /// How long a stopping server waits for open streams and requests to end
    /// before it cuts the connections still open.
    #[arg(long, env = "FLEET_HEALTH_DRAIN_TIMEOUT", default_value = "10s", value_parser = duration)]
    drain_timeout: Duration,

    /// Faulty when no data was received from the data server for this long
    /// (and the agent started at least this long ago).
    #[arg(long, env = "FLEET_HEALTH_RECEIVE_WINDOW", default_value = "18h", value_parser = duration)]
    receive_window: Duration,

    /// Faulty when no data was sent to the data server for this long (and the
    /// agent started at least this long ago).
    #[arg(long, env = "FLEET_HEALTH_SEND_WINDOW", default_value = "6h", value_parser = duration)]
    send_window: Duration,

    /// A shutdown that has lasted this long is stuck.
    #[arg(long, env = "FLEET_HEALTH_SHUTDOWN_TIMEOUT", default_value = "600s", value_parser = duration)]
    shutdown_timeout: Duration,

    /// Faulty ("not reporting") when nothing was heard for this long; 0 turns
    /// the rule off.
    #[arg(long, env = "FLEET_HEALTH_SILENCE_WINDOW", default_value = "5m", value_parser = duration)]
    silence_window: Duration,

    /// Inactive (kept, never a restart candidate) when nothing was heard for this long.
    #[arg(long, env = "FLEET_HEALTH_INACTIVE_WINDOW", default_value = "7d", value_parser = duration)]
    inactive_window: Duration,

    /// Event times further than this in the future are clamped to the
    /// server's clock (and counted).
    #[arg(long, env = "FLEET_HEALTH_CLOCK_SKEW", default_value = "5m", value_parser = duration)]
    clock_skew: Duration,

    /// How often agents are asked to say they are alive.
    #[arg(long, env = "FLEET_HEALTH_HEARTBEAT_INTERVAL", default_value = "30s", value_parser = duration)]
    heartbeat_interval: Duration,

    /// The share of the active fleet that, faulty at once, raises the storm flag.
    #[arg(long, env = "FLEET_HEALTH_STORM_SHARE", default_value_t = 0.5, value_parser = share)]
    storm_share: f64,

    /// The storm flag is never raised for a fleet smaller than this.
    #[arg(long, env = "FLEET_HEALTH_STORM_MIN_AGENTS", default_value_t = FleetRules::default().storm_min_agents)]
    storm_min_agents: u64,

    /// Transitions kept per agent.
    #[arg(long, env = "FLEET_HEALTH_HISTORY", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    history: u16,

    /// The most agents the server will know (more: RESOURCE_EXHAUSTED).
    #[arg(long, env = "FLEET_HEALTH_MAX_AGENTS", default_value_t = Limits::default().max_agents)]
    max_agents: usize,

    /// The most agent streams open at once (more: RESOURCE_EXHAUSTED).
    #[arg(long, env = "FLEET_HEALTH_MAX_STREAMS", default_value_t = StreamLimits::default().max_streams)]
    max_streams: usize,

    /// The most events in one message.
    #[arg(long, env = "FLEET_HEALTH_MAX_BATCH", default_value_t = StreamLimits::default().max_batch)]
    max_batch: usize,

    /// Sustained events per second one stream may send, with bursts of twice
    /// that (more: RESOURCE_EXHAUSTED); 0 for no limit.
    #[arg(
        long,
        env = "FLEET_HEALTH_MAX_STREAM_EVENTS_PER_SEC",
        default_value_t = StreamLimits::default().max_events_per_sec
    )]
    max_stream_events_per_sec: u32,

    /// Watches open at once, in all; more: RESOURCE_EXHAUSTED.
    #[arg(long, env = "FLEET_HEALTH_MAX_WATCHERS", default_value_t = WatchLimits::default().max_watchers)]
    max_watchers: usize,

    /// A watcher that takes nothing for this long, or stays behind the
    /// changes this long, is ended with ABORTED (it watches again and gets a
    /// fresh snapshot).
    #[arg(long, env = "FLEET_HEALTH_WATCH_STALL_TIMEOUT", default_value = "30s", value_parser = duration)]
    watch_stall_timeout: Duration,

    /// The largest message accepted, in bytes.
    #[arg(long, env = "FLEET_HEALTH_MAX_MESSAGE_BYTES", default_value_t = Transport::default().max_message_bytes)]
    max_message_bytes: usize,

    /// An agent stream with no message for this long is closed.
    #[arg(long, env = "FLEET_HEALTH_IDLE_TIMEOUT", default_value = "2m", value_parser = duration)]
    idle_timeout: Duration,

    /// The server's TLS certificate chain (PEM, its own certificate first):
    /// gRPC is served over TLS 1.3. Reloaded when the file changes or on SIGHUP.
    #[arg(
        long,
        env = "FLEET_HEALTH_TLS_CERT",
        requires = "tls_key",
        help_heading = "Security"
    )]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(
        long,
        env = "FLEET_HEALTH_TLS_KEY",
        requires = "tls_cert",
        help_heading = "Security"
    )]
    tls_key: Option<PathBuf>,

    /// Trust bundle (PEM) for client certificates: agents and operators
    /// identify with certificates it signs (SPIFFE IDs
    /// spiffe://TRUST-DOMAIN/agent/ID or spiffe://TRUST-DOMAIN/ROLE/NAME).
    #[arg(
        long,
        env = "FLEET_HEALTH_CLIENT_CA",
        requires = "tls_cert",
        help_heading = "Security"
    )]
    client_ca: Option<PathBuf>,

    /// A certificate revocation list (PEM or DER) for client certificates;
    /// repeat for several (environment: comma-separated).
    #[arg(
        long,
        env = "FLEET_HEALTH_CRL",
        value_delimiter = ',',
        requires = "client_ca",
        help_heading = "Security"
    )]
    crl: Vec<PathBuf>,

    /// The tokens file (`fleet-health token create` writes it): bearer
    /// tokens, stored as hashes, with their roles.
    #[arg(long, env = "FLEET_HEALTH_TOKENS", help_heading = "Security")]
    tokens: Option<PathBuf>,

    /// Accept client certificates of this trust domain only [default: any
    /// that the trust bundle signs].
    #[arg(long, env = "FLEET_HEALTH_TRUST_DOMAIN", value_parser = trust_domain, help_heading = "Security")]
    trust_domain: Option<TrustDomain>,

    /// The audit log (JSON lines) [default with security on: audit.log in
    /// the data directory; with --in-memory, the server's log].
    #[arg(long, env = "FLEET_HEALTH_AUDIT_LOG", help_heading = "Security")]
    audit_log: Option<PathBuf>,

    /// Serve plaintext gRPC on a non-loopback address (refused without it).
    /// Only behind a network layer you trust to encrypt and authenticate.
    #[arg(long, env = "FLEET_HEALTH_INSECURE", help_heading = "Security")]
    insecure: bool,

    /// Open Report streams one identity (an agent, a relay, a token) may hold.
    #[arg(long, env = "FLEET_HEALTH_MAX_STREAMS_PER_IDENTITY", default_value_t = IdentityLimits::default().max_streams, help_heading = "Security")]
    max_streams_per_identity: u32,

    /// Events per second one identity may send over all its streams (bursts
    /// of twice as many); 0: no limit.
    #[arg(long, env = "FLEET_HEALTH_MAX_EVENTS_PER_SEC_PER_IDENTITY", default_value_t = IdentityLimits::default().max_events_per_sec, help_heading = "Security")]
    max_events_per_sec_per_identity: u32,

    /// Open watches one identity may hold.
    #[arg(long, env = "FLEET_HEALTH_MAX_WATCHES_PER_IDENTITY", default_value_t = IdentityLimits::default().max_watches, help_heading = "Security")]
    max_watches_per_identity: u32,

    /// Connections held at most (gRPC and metrics together).
    #[arg(long, env = "FLEET_HEALTH_MAX_CONNECTIONS", default_value_t = ConnLimits::default().total, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_connections: usize,

    /// Connections held at most from one peer address.
    #[arg(long, env = "FLEET_HEALTH_MAX_CONNECTIONS_PER_PEER", default_value_t = ConnLimits::default().per_peer, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections_per_peer: u32,

    /// How long a new connection has to finish its TLS handshake (or, in
    /// plaintext, to send the HTTP/2 preface) before it is closed; on the
    /// metrics port, how long a connection may stay idle.
    #[arg(long, env = "FLEET_HEALTH_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    handshake_timeout: Duration,

    /// Connections in their handshake at once, at most; more are closed.
    #[arg(long, env = "FLEET_HEALTH_MAX_HANDSHAKES", default_value_t = Transport::default().max_handshakes, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_handshakes: usize,

    /// Log format.
    #[arg(long, env = "FLEET_HEALTH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,

    /// Log filter, as RUST_LOG (e.g. `info`, `fleet_health_server=debug`)
    /// [default: $RUST_LOG, else `info`].
    #[arg(long, env = "FLEET_HEALTH_LOG")]
    log: Option<String>,

    /// Export traces (the spans of each call) to this OpenTelemetry
    /// collector over OTLP/gRPC, e.g. http://127.0.0.1:4317. Off by
    /// default, and costs nothing then. The exporter's OTEL_* variables
    /// apply (OTEL_BSP_SCHEDULE_DELAY, OTEL_EXPORTER_OTLP_HEADERS, ...).
    #[arg(long, env = "FLEET_HEALTH_OTLP_ENDPOINT", value_name = "URL")]
    otlp_endpoint: Option<String>,

    /// Which spans to export, as RUST_LOG.
    #[arg(
        long,
        env = "FLEET_HEALTH_OTLP_FILTER",
        default_value = "info,fleet_health_server=debug"
    )]
    otlp_filter: String,
}

/// What the binary does besides serving.
#[derive(Debug, Subcommand)]
enum Sub {
    /// Check a running server: GET URL (default: its readiness on the
    /// default metrics address) and exit 0 on 200, 1 otherwise, saying why.
    /// For a container's HEALTHCHECK, where no HTTP client is installed.
    Probe {
        /// The URL to check (`/readyz` for readiness, `/healthz` for liveness).
        #[arg(default_value = "http://127.0.0.1:9464/readyz")]
        url: String,
        /// How long to wait for the answer.
        #[arg(long, default_value = "5s", value_parser = positive_duration)]
        timeout: Duration,
    },
    /// Copy a running server's state into DIR (new or empty): a consistent
    /// snapshot taken while the server goes on serving, written as a data
    /// directory of its own. Needs the admin role when security is on.
    Backup {
        /// Where to write the backup.
        dir: PathBuf,
        /// The running server.
        #[arg(long, env = "FLEET_HEALTH_SERVER", default_value = fleet_health_client::DEFAULT_SERVER)]
        server: String,
        /// Trust bundle (PEM) for the server's certificate.
        #[arg(long, env = "FLEET_HEALTH_CA", value_name = "FILE")]
        ca: Option<PathBuf>,
        /// Client certificate (PEM) of an admin.
        #[arg(long, env = "FLEET_HEALTH_CERT", value_name = "FILE")]
        cert: Option<PathBuf>,
        /// Its key (PEM).
        #[arg(long, env = "FLEET_HEALTH_KEY", value_name = "FILE")]
        key: Option<PathBuf>,
        /// A file holding an admin's bearer token.
        #[arg(long, env = "FLEET_HEALTH_TOKEN_FILE", value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// How long to wait for the server to answer.
        #[arg(long, default_value = "10s", value_parser = positive_duration)]
        timeout: Duration,
    },
    /// Put a backup in place: check every record of BACKUP, then write them
    /// into the data directory, which must hold no data yet. Run it while
    /// no server uses that directory.
    Restore {
        /// The backup (a directory written by `backup`).
        backup: PathBuf,
        /// The data directory to fill [default: as the server's].
        #[arg(long, env = "FLEET_HEALTH_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Move a single server's data directory into a cluster: every agent's
    /// record is written to the cluster's database, in its shard, in one
    /// transaction. Run it with no server using DATA_DIR and none of the
    /// cluster's servers running (it refuses otherwise).
    Import {
        /// The data directory of the single server.
        data_dir: PathBuf,
        /// The cluster's database (postgres://USER[:PASSWORD]@HOST:PORT/DB).
        #[arg(long, env = "FLEET_HEALTH_CLUSTER", value_name = "URL")]
        cluster: String,
        /// The number of shards, if the import makes the cluster.
        #[arg(long, default_value_t = ClusterConfig::DEFAULT_SHARDS, value_parser = clap::value_parser!(u32).range(1..=65536))]
        shards: u32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Lines for people.
    Human,
    /// One JSON object per line.
    Json,
}

#[derive(Clone, Copy, Debug)]
enum MetricsAddr {
    Off,
    At(SocketAddr),
}

impl std::str::FromStr for MetricsAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<MetricsAddr, String> {
        if s == "off" {
            return Ok(MetricsAddr::Off);
        }
        s.parse()
            .map(MetricsAddr::At)
            .map_err(|e| format!("{e} (an address such as 127.0.0.1:9464, or `off`)"))
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (say e.g. 600s, 5m, 18h, 7d)"))
}

/// A duration above zero: for limits where zero would refuse everything.
fn positive_duration(s: &str) -> Result<Duration, String> {
    match duration(s)? {
        Duration::ZERO => Err("must be more than zero (every connection would be closed)".into()),
        d => Ok(d),
    }
}

fn trust_domain(s: &str) -> Result<TrustDomain, String> {
    TrustDomain::parse(s).map_err(|e| e.to_string())
}

fn share(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err("a share in (0, 1], such as 0.5".into())
    }
}

impl Args {
    /// How this server joins the cluster at `url`.
    fn cluster_config(&self, url: &str) -> anyhow::Result<ClusterConfig> {
        let node = match &self.node_id {
            Some(n) => n.clone(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .map(|h| h.trim().to_owned())
                .unwrap_or_default(),
        };
        if node.is_empty() || node.len() > 128 {
            anyhow::bail!("--node-id must be 1 to 128 bytes (got {node:?})");
        }
        let Some(advertise) = self.advertise.clone() else {
            anyhow::bail!(
                "--cluster needs --advertise HOST:PORT: the address of this server's gRPC port that the cluster's other servers reach"
            );
        };
        if advertise.parse::<std::net::SocketAddr>().is_err()
            && advertise
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            anyhow::bail!("--advertise {advertise:?}: give HOST:PORT");
        }
        let peers = if self.tls_cert.is_some() || self.tokens.is_some() {
            if self.tls_cert.is_none() {
                anyhow::bail!(
                    "--cluster with --tokens needs TLS (--tls-cert, --tls-key): the servers pass calls on to each other with a secret"
                );
            }
            let Some(file) = &self.cluster_secret_file else {
                anyhow::bail!(
                    "--cluster with security on needs --cluster-secret-file: the secret the cluster's servers show each other"
                );
            };
            let secret = std::fs::read_to_string(file)
                .map_err(|e| anyhow::anyhow!("--cluster-secret-file {}: {e}", file.display()))?
                .trim()
                .to_owned();
            if secret.len() < 32 || secret.chars().any(|c| !c.is_ascii_graphic()) {
                anyhow::bail!(
                    "--cluster-secret-file {}: give at least 32 printable characters, no spaces (openssl rand -hex 32)",
                    file.display()
                );
            }
            let Some(ca) = self.cluster_ca.clone().or_else(|| self.client_ca.clone()) else {
                anyhow::bail!(
                    "--cluster with TLS needs --cluster-ca (or --client-ca): the trust bundle for the other servers' certificates"
                );
            };
            Some(fleet_health_server::cluster::node::PeerSecurity {
                ca,
                secret: secret.into(),
                server_name: self.cluster_server_name.clone(),
            })
        } else {
            None
        };
        Ok(ClusterConfig {
            url: url.to_owned(),
            node,
            address: advertise,
            lease: self.cluster_lease,
            shards: self.cluster_shards,
            peers,
        })
    }

    fn config(&self) -> anyhow::Result<Config> {
        let config = self.unchecked_config()?;
        config.check().map_err(anyhow::Error::msg)?;
        Ok(config)
    }

    fn unchecked_config(&self) -> anyhow::Result<Config> {
        let windows = Windows::new(self.receive_window, self.send_window, self.shutdown_timeout)?;
        Ok(Config {
            rules: FleetRules {
                windows,
                silence: self.silence_window,
                inactive: self.inactive_window,
                skew: self.clock_skew,
                heartbeat: self.heartbeat_interval,
                storm_share: self.storm_share,
                storm_min_agents: self.storm_min_agents,
                history: usize::from(self.history),
            },
            limits: Limits {
                max_agents: self.max_agents,
                ..Limits::default()
            },
            streams: StreamLimits {
                max_streams: self.max_streams,
                max_batch: self.max_batch,
                max_events_per_sec: self.max_stream_events_per_sec,
                idle_timeout: self.idle_timeout,
                ..StreamLimits::default()
            },
            watch: WatchLimits {
                max_watchers: self.max_watchers,
                stall_timeout: self.watch_stall_timeout.max(Duration::from_millis(1)),
            },
            transport: Transport {
                max_message_bytes: self.max_message_bytes,
                connections: ConnLimits {
                    total: self.max_connections,
                    per_peer: self.max_connections_per_peer,
                },
                handshake_timeout: self.handshake_timeout,
                max_handshakes: self.max_handshakes,
                ..Transport::default()
            },
            storage: if let Some(url) = &self.cluster {
                Storage::Cluster(self.cluster_config(url)?)
            } else if self.in_memory {
                Storage::InMemory
            } else {
                Storage::Durable {
                    dir: self.data_dir.clone().unwrap_or_else(default_data_dir),
                    cache_bytes: usize::try_from(self.store_cache_mb)?.saturating_mul(1024 * 1024),
                }
            },
            shutdown: Shutdown {
                drain_timeout: self.drain_timeout,
            },
            security: self.security()?,
        })
    }

    fn security(&self) -> anyhow::Result<SecurityConfig> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.client_ca.clone(),
                crls: self.crl.clone(),
            }),
            _ => None,
        };
        let mut security = SecurityConfig {
            tls,
            tokens: self.tokens.clone(),
            trust_domain: self.trust_domain.clone(),
            audit_log: self.audit_log.clone(),
            insecure: false,
            identity_limits: IdentityLimits {
                max_streams: self.max_streams_per_identity,
                max_events_per_sec: self.max_events_per_sec_per_identity,
                max_watches: self.max_watches_per_identity,
            },
        };
        security.insecure = security
            .check_listen(self.listen, self.insecure)
            .map_err(anyhow::Error::msg)?;
        Ok(security)
    }
}

/// `$XDG_STATE_HOME/fleet-health`, else `~/.local/state/fleet-health`, else
/// `./fleet-health-data` (the state directory as the `dirs` crate finds it).
fn default_data_dir() -> PathBuf {
    dirs::state_dir()
        .or_else(|| dirs::home_dir().map(|h| h.join(".local/state")))
        .map_or_else(
            || PathBuf::from("fleet-health-data"),
            |d| d.join("fleet-health"),
        )
}

/// The log filter: `--log` (or `FLEET_HEALTH_LOG`), else `RUST_LOG`, else
/// `info`.
fn log_filter(flag: Option<&str>, rust_log: Option<&str>) -> String {
    flag.or(rust_log.filter(|s| !s.trim().is_empty()))
        .unwrap_or("info")
        .to_owned()
}

fn init_logging(args: &Args) -> anyhow::Result<Telemetry> {
    let rust_log = std::env::var("RUST_LOG").ok();
    Telemetry::init(&TelemetryConfig {
        log_filter: log_filter(args.log.as_deref(), rust_log.as_deref()),
        json: args.log_format == LogFormat::Json,
        ansi: std::io::stderr().is_terminal(),
        otlp_endpoint: args.otlp_endpoint.clone(),
        otlp_filter: args.otlp_filter.clone(),
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = args.config()?;
    let grpc = bind(args.listen).await?;
    let metrics = match args.metrics_listen {
        MetricsAddr::Off => None,
        MetricsAddr::At(addr) => Some(bind(addr).await?),
    };
    let metrics_addr = metrics.as_ref().map(|l| l.local_addr()).transpose()?;
    let web = args.web_listen.map(bind);
    let web = match web {
        Some(b) => Some(b.await?),
        None => None,
    };
    let server = match &config.storage {
        Storage::Cluster(_) => Server::cluster(config, Arc::new(SystemClock)).await?,
        _ => Server::open(config, Arc::new(SystemClock))?,
    };
    fleet_health_server::reload::install_sighup();
    tracing::info!(
        grpc = %grpc.local_addr()?,
        metrics = %metrics_addr.map_or("off".to_string(), |a| a.to_string()),
        web = %web
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map_or("off".to_string(), |a| a.to_string()),
        "listening"
    );
    server
        .run_all(Listeners { grpc, metrics, web }, shutdown_signal())
        .await?;
    Ok(())
}

/// Runs a subcommand to its end.
fn run_sub(sub: Sub) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fleet-health-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match sub {
        Sub::Backup {
            dir,
            server,
            ca,
            cert,
            key,
            token_file,
            timeout,
        } => {
            let token = match token_file.map(std::fs::read_to_string).transpose() {
                Ok(t) => t.map(|t| t.trim().to_owned()),
                Err(e) => {
                    eprintln!("fleet-health-server backup: --token-file: {e}");
                    return ExitCode::from(2);
                }
            };
            let credentials = fleet_health_client::Credentials {
                ca,
                cert,
                key,
                token,
            };
            let copied = runtime.block_on(fleet_health_server::backup::backup(
                &server,
                &credentials,
                timeout,
                &dir,
            ));
            match copied {
                Ok(c) => {
                    println!("backed up {} agents into {}", c.records, dir.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("fleet-health-server backup: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Sub::Restore { backup, data_dir } => {
            let to = data_dir.unwrap_or_else(default_data_dir);
            match fleet_health_server::backup::restore(&backup, &to) {
                Ok(c) => {
                    println!(
                        "restored {} agents into {}; start the server on it",
                        c.records,
                        to.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("fleet-health-server restore: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Sub::Import {
            data_dir,
            cluster,
            shards,
        } => match runtime.block_on(fleet_health_server::cluster::import::import(
            &data_dir, &cluster, shards,
        )) {
            Ok((agents, shards)) => {
                println!(
                    "imported {agents} agents from {} into the cluster at {} ({shards} shards); start its servers",
                    data_dir.display(),
                    fleet_health_server::cluster::store::redact(&cluster)
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fleet-health-server import: {e}");
                ExitCode::FAILURE
            }
        },
        Sub::Probe { url, timeout } => {
            match runtime.block_on(fleet_health_server::probe::probe(&url, timeout)) {
                Ok(body) => {
                    println!("{body}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("fleet-health-server probe: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if let Some(sub) = args.command.take() {
        return run_sub(sub);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fleet-health-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The trace exporter's gRPC client is made inside the runtime.
    let telemetry = match runtime.block_on(async { init_logging(&args) }) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("fleet-health-server: {e:#}");
            return ExitCode::from(2);
        }
    };
    let code = match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    };
    runtime.block_on(async { telemetry.shutdown() });
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults_are_the_references_and_the_specs() {
        let args = Args::try_parse_from(["fleet-health-server"]).expect("no flags needed");
        let config = args.config().expect("valid defaults");
        assert_eq!(config.rules, FleetRules::default());
        assert_eq!(config.shutdown, Shutdown::default());
        assert_eq!(args.listen.to_string(), "127.0.0.1:50051");
        let (limits, streams) = (Limits::default(), StreamLimits::default());
        assert_eq!(config.limits.max_agents, limits.max_agents);
        assert_eq!(config.limits.watch_buffer, limits.watch_buffer);
        assert_eq!(config.streams.max_streams, streams.max_streams);
        assert_eq!(config.streams.max_batch, streams.max_batch);
        assert_eq!(
            config.streams.max_events_per_sec,
            streams.max_events_per_sec
        );
        assert_eq!(config.streams.hello_timeout, streams.hello_timeout);
        assert_eq!(config.streams.idle_timeout, streams.idle_timeout);
        assert_eq!(
            config.transport.max_message_bytes,
            Transport::default().max_message_bytes
        );
        match config.storage {
            Storage::Durable { dir, cache_bytes } => {
                assert_eq!(dir, default_data_dir());
                assert_eq!(cache_bytes, Storage::DEFAULT_CACHE_BYTES);
            }
            Storage::InMemory | Storage::Cluster(_) => panic!("durable by default"),
        }
    }

    #[test]
    fn storage_and_shutdown_flags_reach_the_config() {
        let args = Args::try_parse_from([
            "fleet-health-server",
            "--data-dir=/var/lib/fh",
            "--store-cache-mb=48",
            "--drain-timeout=2s",
        ])
        .expect("valid flags");
        let config = args.config().expect("valid");
        assert_eq!(
            config.storage,
            Storage::Durable {
                dir: PathBuf::from("/var/lib/fh"),
                cache_bytes: 48 * 1024 * 1024
            }
        );
        assert_eq!(config.shutdown.drain_timeout, Duration::from_secs(2));
        let args = Args::try_parse_from(["fleet-health-server", "--in-memory"]).expect("valid");
        assert_eq!(args.config().expect("valid").storage, Storage::InMemory);
    }

    #[test]
    fn connection_flags_reach_the_config() {
        let args = Args::try_parse_from([
            "fleet-health-server",
            "--max-connections=500",
            "--max-connections-per-peer=20",
            "--handshake-timeout=3s",
            "--max-handshakes=64",
        ])
        .expect("valid flags");
        let t = args.config().expect("valid").transport;
        assert_eq!(
            t.connections,
            ConnLimits {
                total: 500,
                per_peer: 20
            }
        );
        assert_eq!(t.handshake_timeout, Duration::from_secs(3));
        assert_eq!(t.max_handshakes, 64);
    }

    #[test]
    fn the_log_flag_wins_over_rust_log_which_wins_over_info() {
        assert_eq!(log_filter(Some("warn"), Some("debug")), "warn");
        assert_eq!(log_filter(None, Some("debug")), "debug");
        assert_eq!(log_filter(None, Some(" ")), "info");
        assert_eq!(log_filter(None, None), "info");
    }

    #[test]
    fn settings_that_cannot_work_together_are_refused_with_what_would() {
        let config = |flags: &[&str]| {
            let mut argv = vec!["fleet-health-server"];
            argv.extend_from_slice(flags);
            Args::try_parse_from(argv).expect("parses").config()
        };
        // The old README demo: idle agents would flap every 30 s.
        let e = config(&["--silence-window", "30s"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("too short for --heartbeat-interval 30s"), "{e}");
        assert!(e.contains("1m or more"), "{e}");
        assert!(config(&["--silence-window", "30s", "--heartbeat-interval", "10s"]).is_ok());
        assert!(config(&["--silence-window", "0"]).is_ok(), "the rule off");
        let e = config(&["--idle-timeout", "45s"]).unwrap_err().to_string();
        assert!(e.contains("--idle-timeout 45s"), "{e}");
        let e = config(&["--inactive-window", "5m"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be longer than --silence-window 5m"), "{e}");
        let e = config(&["--heartbeat-interval", "0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than zero"), "{e}");
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            ["fleet-health-server", "--storm-share", "1.5"],
            ["fleet-health-server", "--silence-window", "soon"],
            ["fleet-health-server", "--history", "0"],
            ["fleet-health-server", "--metrics-listen", "nowhere"],
            ["fleet-health-server", "--in-memory", "--data-dir=/tmp/x"],
            // Zero would close every connection.
            ["fleet-health-server", "--max-connections", "0"],
            ["fleet-health-server", "--max-connections-per-peer", "0"],
            ["fleet-health-server", "--max-handshakes", "0"],
            ["fleet-health-server", "--handshake-timeout", "0s"],
        ] {
            assert!(Args::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }
}
