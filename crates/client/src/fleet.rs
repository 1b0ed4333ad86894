//! A typed client for `FleetService`: the operators' and orchestrators' view.

use std::time::Duration;

use fleet_health_sensor::Time;
use tonic::transport::Channel;
use tonic::{Code, Status};

use fleet_health_types::wire::timestamp;
use fleet_health_types::{AgentId, Labels, MaintenanceFilter, StateFilter, Why, check_labels};

use crate::proto::fleet_service_client::FleetServiceClient;
use crate::proto::{
    self, ForgetAgentRequest, GetAgentRequest, GetHistoryRequest, GetSummaryRequest,
    ListAgentsRequest, WatchAgentsRequest,
};
use crate::view::{AgentList, AgentPage, AgentView, DecodeError, History, Summary, the_agent};
use crate::watch::Watch;
use crate::{AuthChannel, Bearer, ConnectError, Credentials, InvalidEndpoint, NameError};

impl From<ConnectError> for ClientError {
    fn from(e: ConnectError) -> ClientError {
        match e {
            ConnectError::Endpoint(e) => ClientError::InvalidEndpoint(e),
            ConnectError::Credentials(e) => ClientError::BadCredentials(e),
        }
    }
}

/// What can go wrong with a fleet query.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// An agent ID or a label given to the client breaks the rules.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// The server address is not a valid URL.
    #[error(transparent)]
    InvalidEndpoint(#[from] InvalidEndpoint),
    /// The server does not know the agent (`NOT_FOUND`).
    #[error("{0}")]
    NotFound(String),
    /// The server refused the request (`INVALID_ARGUMENT`).
    #[error("the server refused the request: {0}")]
    InvalidArgument(String),
    /// The server could not be reached, or did not answer in time.
    #[error("server unreachable: {0}")]
    Unreachable(String),
    /// The connection's TLS failed (wrong CA, expired certificate, a server
    /// that does not speak TLS, or does and was called with http://).
    #[error("TLS: {0}")]
    Tls(String),
    /// The client's credentials could not be used.
    #[error(transparent)]
    BadCredentials(#[from] crate::BadCredentials),
    /// The server does not know who this is (`UNAUTHENTICATED`): no
    /// credentials, an unknown or expired token, a revoked certificate.
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    /// The server knows who this is, and refuses (`PERMISSION_DENIED`): the
    /// role is too small, or a certificate for another agent.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The server's answer could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Any other error status.
    #[error("{}", describe(.0))]
    Status(Status),
}

fn describe(status: &Status) -> String {
    format!("server error {:?}: {}", status.code(), status.message())
}

impl From<Status> for ClientError {
    fn from(status: Status) -> ClientError {
        let mut message = if status.message().is_empty() {
            format!("{:?}", status.code())
        } else {
            status.message().to_owned()
        };
        // A transport failure carries its cause ("Connection refused (os
        // error 111)") below the message ("tcp connect error"): say it.
        let mut cause: Option<&(dyn std::error::Error + 'static)> =
            std::error::Error::source(&status);
        while let Some(e) = cause {
            let text = e.to_string();
            if !message.contains(&text) {
                message = format!("{message}: {text}");
            }
            cause = e.source();
        }
        if let Some(trouble) = crate::tls_trouble(&status) {
            return ClientError::Tls(trouble);
        }
        match status.code() {
            Code::Unauthenticated => ClientError::Unauthenticated(message),
            Code::PermissionDenied => ClientError::PermissionDenied(message),
            Code::NotFound => ClientError::NotFound(message),
            Code::InvalidArgument => ClientError::InvalidArgument(message),
            Code::Unavailable | Code::DeadlineExceeded => ClientError::Unreachable(message),
            _ => ClientError::Status(status),
        }
    }
}

/// Which agents a list or a watch takes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentQuery {
    /// Which states; the default is the active agents.
    pub filter: StateFilter,
    /// Only these whys (any of them); empty: any.
    pub why: Vec<Why>,
    /// Only agents that carry all these labels.
    pub labels: Labels,
    /// Evaluate at this time instead of now (lists only).
    pub at: Option<Time>,
    /// Agents under maintenance: by default left out of faulty lists only.
    pub maintenance: MaintenanceFilter,
    /// Only agents whose ID contains this text (lists only).
    pub id_contains: Option<String>,
}

impl AgentQuery {
    /// Checks the labels against the rules before anything is sent.
    fn check(&self) -> Result<(), NameError> {
        Ok(check_labels(&self.labels)?)
    }

    /// The state filter as its wire number.
    fn wire_filter(&self) -> i32 {
        proto::StateFilter::from(self.filter) as i32
    }

    /// The whys as their wire numbers.
    fn wire_whys(&self) -> Vec<i32> {
        self.why
            .iter()
            .map(|w| proto::Why::from(*w) as i32)
            .collect()
    }
}

/// What a server says of itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    /// Its version.
    pub version: String,
    /// When it started.
    pub started_at: Option<Time>,
    /// Whether it keeps its state in a durable store.
    pub durable: bool,
    /// Whether security (TLS or tokens) is on.
    pub secured: bool,
    /// The heartbeat interval agents are told.
    pub heartbeat_interval: Option<Duration>,
    /// The silence window (zero: off).
    pub silence_window: Option<Duration>,
}

/// The cluster a server is a node of (see `GetClusterStatus`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterStatus {
    /// Whether the server is a node of a cluster (false: a single server).
    pub clustered: bool,
    /// The node that answered.
    pub answered_by: String,
    /// The database, without its password.
    pub database: String,
    /// The cluster's shard count.
    pub shards: u32,
    /// Shards with no live owner now.
    pub unowned: u32,
    /// The lease shards are held with.
    pub lease: Option<Duration>,
    /// The nodes, by ID.
    pub nodes: Vec<ClusterNodeStatus>,
    /// The database's standbys: name, state, sync state, replay lag.
    pub standbys: Vec<(String, String, String, Option<Duration>)>,
}

/// One node of a cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterNodeStatus {
    /// Its ID.
    pub node: String,
    /// The address other nodes reach it on.
    pub address: String,
    /// How long ago it was last heard from.
    pub seen_ago: Duration,
    /// Whether it counts as alive.
    pub live: bool,
    /// Whether it is handing its shards over to stop.
    pub draining: bool,
    /// How many shards it holds.
    pub shards: u32,
    /// The shortest time left on its leases.
    pub lease_left: Option<Duration>,
}

/// A client for `FleetService`. Cheap to clone: clones share one connection.
#[derive(Clone, Debug)]
pub struct FleetClient {
    pub(crate) inner: FleetServiceClient<AuthChannel>,
    timeout: Duration,
    page_size: u32,
}

impl FleetClient {
    /// A client on a channel; each call must answer within `timeout`.
    pub fn new(channel: Channel, timeout: Duration) -> FleetClient {
        FleetClient::with_bearer(channel, Bearer::none(), timeout)
    }

    /// A client on a channel that presents `bearer` on every call.
    pub fn with_bearer(channel: Channel, bearer: Bearer, timeout: Duration) -> FleetClient {
        FleetClient {
            inner: FleetServiceClient::with_interceptor(channel, bearer),
            timeout,
            page_size: 1000,
        }
    }

    /// A client for the server at `url` with `credentials` (TLS, a token),
    /// connecting lazily.
    pub fn connect_with(
        url: &str,
        credentials: &Credentials,
        timeout: Duration,
    ) -> Result<FleetClient, ClientError> {
        Ok(FleetClient {
            inner: FleetServiceClient::new(crate::auth_channel(url, timeout, credentials)?),
            timeout,
            page_size: 1000,
        })
    }

    /// A client for the server at `url`, connecting lazily (the first call
    /// connects, within `timeout`).
    pub fn connect_lazy(url: &str, timeout: Duration) -> Result<FleetClient, ClientError> {
        Ok(FleetClient::new(
            crate::lazy_channel(url, timeout)?,
            timeout,
        ))
    }

    /// Sets the page size used by [`FleetClient::list`] (1 to 10 000).
    #[must_use]
    pub fn with_page_size(mut self, page_size: u32) -> FleetClient {
        self.page_size = page_size.clamp(1, 10_000);
        self
    }

    pub(crate) async fn call<T, F>(&self, fut: F) -> Result<T, ClientError>
    where
        F: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(result) => Ok(result?.into_inner()),
            Err(_) => Err(ClientError::Unreachable(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// One agent's status, now or at `at`.
    pub async fn get_agent(
        &self,
        agent_id: &str,
        at: Option<Time>,
    ) -> Result<AgentView, ClientError> {
        AgentId::parse(agent_id).map_err(NameError::from)?;
        let request = GetAgentRequest {
            agent_id: agent_id.to_owned(),
            at: at.map(timestamp),
        };
        let mut inner = self.inner.clone();
        let response = self.call(inner.get_agent(request)).await?;
        Ok(the_agent(response)?)
    }

    /// One page of a list, from `page_token` (`None` for the first).
    pub async fn list_page(
        &self,
        query: &AgentQuery,
        page_token: Option<String>,
    ) -> Result<AgentPage, ClientError> {
        query.check()?;
        let request = ListAgentsRequest {
            filter: query.wire_filter(),
            why: query.wire_whys(),
            labels: query.labels.clone().into_iter().collect(),
            at: query.at.map(timestamp),
            page_size: self.page_size,
            page_token: page_token.unwrap_or_default(),
            maintenance: proto::MaintenanceFilter::from(query.maintenance) as i32,
            id_contains: query.id_contains.clone().unwrap_or_default(),
            // By ID: the CLI sorts whole lists itself (`--sort-by`).
            order: proto::ListOrder::Unspecified as i32,
        };
        let mut inner = self.inner.clone();
        Ok(self.call(inner.list_agents(request)).await?.try_into()?)
    }

    /// Every agent matching `query`, following the pages to the end.
    pub async fn list(&self, query: &AgentQuery) -> Result<AgentList, ClientError> {
        let mut list = AgentList::default();
        let mut token = None;
        loop {
            let page = self.list_page(query, token).await?;
            if list.evaluated_at.is_none() {
                list.evaluated_at = page.evaluated_at;
            }
            list.agents.extend(page.agents);
            list.incomplete |= page.incomplete;
            if page.storm.is_some() {
                list.storm = page.storm;
            }
            match page.next_page_token {
                None => return Ok(list),
                Some(next) => token = Some(next),
            }
        }
    }

    /// Starts a watch: the current matching set, then each change.
    pub async fn watch(&self, query: &AgentQuery) -> Result<Watch, ClientError> {
        query.check()?;
        let request = WatchAgentsRequest {
            filter: query.wire_filter(),
            why: query.wire_whys(),
            labels: query.labels.clone().into_iter().collect(),
            maintenance: proto::MaintenanceFilter::from(query.maintenance) as i32,
        };
        let mut inner = self.inner.clone();
        let stream = self.call(inner.watch_agents(request)).await?;
        Ok(Watch::new(stream))
    }

    /// Counts by state and why, and the storm flag, now or at `at`.
    pub async fn summary(&self, at: Option<Time>) -> Result<Summary, ClientError> {
        let request = GetSummaryRequest {
            at: at.map(timestamp),
        };
        let mut inner = self.inner.clone();
        Ok(self.call(inner.get_summary(request)).await?.try_into()?)
    }

    /// The recent transitions of one agent, oldest first.
    pub async fn history(&self, agent_id: &str) -> Result<History, ClientError> {
        AgentId::parse(agent_id).map_err(NameError::from)?;
        let request = GetHistoryRequest {
            agent_id: agent_id.to_owned(),
        };
        let mut inner = self.inner.clone();
        Ok(self.call(inner.get_history(request)).await?.try_into()?)
    }

    /// The cluster the server is a node of: nodes, shards, leases, standbys.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, ClientError> {
        let mut inner = self.inner.clone();
        let r = self
            .call(inner.get_cluster_status(proto::GetClusterStatusRequest {}))
            .await?;
        let duration = |d: Option<&prost_types::Duration>| {
            d.and_then(|d| fleet_health_types::wire::from_duration(d, "duration").ok())
        };
        Ok(ClusterStatus {
            clustered: r.clustered,
            answered_by: r.answered_by,
            database: r.database,
            shards: r.shards,
            unowned: r.unowned,
            lease: duration(r.lease.as_ref()),
            nodes: r
                .nodes
                .iter()
                .map(|n| ClusterNodeStatus {
                    node: n.node.clone(),
                    address: n.address.clone(),
                    seen_ago: duration(n.seen_ago.as_ref()).unwrap_or_default(),
                    live: n.live,
                    draining: n.draining,
                    shards: n.shards,
                    lease_left: duration(n.lease_left.as_ref()),
                })
                .collect(),
            standbys: r
                .standbys
                .iter()
                .map(|s| {
                    (
                        s.name.clone(),
                        s.state.clone(),
                        s.sync_state.clone(),
                        duration(s.replay_lag.as_ref()),
                    )
                })
                .collect(),
        })
    }

    /// The server's version and the settings clients may want to know.
    pub async fn server_info(&self) -> Result<ServerInfo, ClientError> {
        let mut inner = self.inner.clone();
        let r = self
            .call(inner.get_server_info(proto::GetServerInfoRequest {}))
            .await?;
        let duration = |d: Option<prost_types::Duration>, field: &'static str| {
            d.map(|d| {
                fleet_health_types::wire::from_duration(&d, field).map_err(|e| DecodeError {
                    field,
                    reason: e.to_string(),
                })
            })
            .transpose()
        };
        Ok(ServerInfo {
            version: r.version,
            started_at: crate::view::time(
                "GetServerInfoResponse.started_at",
                r.started_at.as_ref(),
            )?,
            durable: r.durable,
            secured: r.secured,
            heartbeat_interval: duration(
                r.heartbeat_interval,
                "GetServerInfoResponse.heartbeat_interval",
            )?,
            silence_window: duration(r.silence_window, "GetServerInfoResponse.silence_window")?,
        })
    }

    /// Removes an agent; returns its status just before.
    pub async fn forget(&self, agent_id: &str) -> Result<Option<AgentView>, ClientError> {
        AgentId::parse(agent_id).map_err(NameError::from)?;
        let request = ForgetAgentRequest {
            agent_id: agent_id.to_owned(),
        };
        let mut inner = self.inner.clone();
        let last = self.call(inner.forget_agent(request)).await?.last;
        Ok(last.map(AgentView::try_from).transpose()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_query_with_a_bad_label_is_refused_before_sending() {
        // Nothing listens at port 1: a request that were sent would fail
        // as unreachable, not as an invalid name.
        let client =
            FleetClient::connect_lazy("http://127.0.0.1:1", Duration::from_secs(1)).unwrap();
        let query = AgentQuery {
            labels: [("bad key".to_owned(), "v".to_owned())]
                .into_iter()
                .collect(),
            ..AgentQuery::default()
        };
        assert!(matches!(
            client.list(&query).await,
            Err(ClientError::InvalidName(NameError::Labels(_)))
        ));
        assert!(matches!(
            client.watch(&query).await,
            Err(ClientError::InvalidName(NameError::Labels(_)))
        ));
    }

    #[test]
    fn a_query_goes_out_as_its_wire_numbers() {
        let query = AgentQuery {
            filter: StateFilter::Inactive,
            why: vec![Why::NoDataSent, Why::Inactive],
            ..AgentQuery::default()
        };
        assert_eq!(query.wire_filter(), proto::StateFilter::Inactive as i32);
        assert_eq!(
            query.wire_whys(),
            [proto::Why::NoDataSent as i32, proto::Why::Inactive as i32]
        );
        assert_eq!(
            AgentQuery::default().wire_filter(),
            proto::StateFilter::Active as i32
        );
    }

    #[tokio::test]
    async fn a_bad_agent_id_is_refused_before_sending() {
        let client =
            FleetClient::connect_lazy("http://127.0.0.1:1", Duration::from_secs(1)).unwrap();
        let e = client.get_agent("a b", None).await.unwrap_err();
        assert!(
            matches!(e, ClientError::InvalidName(NameError::AgentId(_))),
            "{e}"
        );
        assert!(e.to_string().contains("1 to 253 characters"), "{e}");
    }

    #[test]
    fn statuses_map_to_the_errors_scripts_tell_apart() {
        assert!(matches!(
            ClientError::from(Status::not_found("agent web-1 not found")),
            ClientError::NotFound(m) if m == "agent web-1 not found"
        ));
        assert!(matches!(
            ClientError::from(Status::unavailable("down")),
            ClientError::Unreachable(_)
        ));
        assert!(matches!(
            ClientError::from(Status::deadline_exceeded("")),
            ClientError::Unreachable(_)
        ));
        assert!(matches!(
            ClientError::from(Status::invalid_argument("bad")),
            ClientError::InvalidArgument(_)
        ));
        assert!(matches!(
            ClientError::from(Status::internal("x")),
            ClientError::Status(_)
        ));
    }
}
