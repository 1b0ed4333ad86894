//! The calls that change what is set on agents: maintenance marks, and the
//! claims and records of remediators. Each checks its request, asks the
//! registry, waits for the change to be committed (a durable server answers
//! only once a claim or a mark would survive a crash), and answers.
//!
//! Who did it (`by`) is the caller's identity when security is on, and empty
//! when it is off. Marks and "given up" cleared go to the audit log.

use std::time::Duration;

use fleet_health_proto::v1 as pb;
use fleet_health_types::wire;
use tonic::{Request, Response, Status};

use super::FleetService;
use crate::convert;
use crate::registry::{Refusal, Targets};
use crate::security::{AuditEvent, Caller};

const SET: &str = "/fleethealth.v1.FleetService/SetMaintenance";
const CLEAR: &str = "/fleethealth.v1.FleetService/ClearMaintenance";
const CLEAR_GIVEN_UP: &str = "/fleethealth.v1.FleetService/ClearGivenUp";

/// The longest maintenance mark.
const MAX_MAINTENANCE: Duration = Duration::from_secs(365 * 24 * 3600);
/// The longest claim lease.
const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);
/// The most agent IDs named in one maintenance call, and returned by one.
const MAX_IDS: usize = 10_000;
/// The most IDs a SetMaintenance answer lists.
const LISTED: usize = 1000;
/// The longest holder name.
const MAX_HOLDER: usize = 128;

/// The caller's identity, as recorded (`""` when security is off).
fn by<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<Caller>()
        .map(|c| c.identity.to_string())
        .unwrap_or_default()
}

/// A duration field that must be there and within `1 s ..= max`.
fn duration(
    d: Option<&prost_types::Duration>,
    field: &str,
    max: Duration,
) -> Result<Duration, Status> {
    let d = d.ok_or_else(|| Status::invalid_argument(format!("{field} is required")))?;
    let d = wire::from_duration(d, field)?;
    if d < Duration::from_secs(1) || d > max {
        return Err(Status::invalid_argument(format!(
            "{field} must be from 1s to {}s",
            max.as_secs()
        )));
    }
    Ok(d)
}

/// The agents a maintenance call names: exactly one of IDs, labels, all.
fn targets(
    ids: &[String],
    labels: &std::collections::HashMap<String, String>,
    all: bool,
) -> Result<Targets, Status> {
    let given = usize::from(!ids.is_empty()) + usize::from(!labels.is_empty()) + usize::from(all);
    if given != 1 {
        return Err(Status::invalid_argument(
            "name the agents by agent_ids, by labels, or all (exactly one of them)",
        ));
    }
    if ids.len() > MAX_IDS {
        return Err(Status::invalid_argument(format!(
            "{} agent IDs in one call (at most {MAX_IDS}; use labels)",
            ids.len()
        )));
    }
    Ok(if all {
        Targets::All
    } else if !labels.is_empty() {
        Targets::Labels(wire::labels(labels)?)
    } else {
        Targets::Ids(
            ids.iter()
                .map(|id| wire::agent_id(id))
                .collect::<Result<_, _>>()?,
        )
    })
}

fn holder(h: &str) -> Result<(), Status> {
    convert::text("holder", h, true)?;
    if h.len() > MAX_HOLDER {
        return Err(Status::invalid_argument(format!(
            "holder is {} bytes long (at most {MAX_HOLDER})",
            h.len()
        )));
    }
    Ok(())
}

impl FleetService {
    /// Waits until `commit` is durable (at once for a server in memory).
    async fn committed(&self, commit: u64) {
        if commit > 0
            && let Some(gate) = self.registry.commits()
        {
            gate.committed_through(commit).await;
        }
    }

    fn audit<T>(&self, request: &Request<T>, rpc: &'static str, ok: bool, detail: String) {
        if let Some(caller) = request.extensions().get::<Caller>() {
            self.security.audit().record(AuditEvent {
                event: "admin",
                identity: Some(caller.identity.to_string()),
                credential: Some(caller.credential.kind()),
                peer: caller.peer,
                rpc: Some(rpc),
                agent_id: None,
                result: if ok { "ok" } else { "failed" },
                reason: None,
                detail: Some(detail),
            });
        }
    }

    pub(super) async fn set_maintenance_(
        &self,
        request: Request<pb::SetMaintenanceRequest>,
    ) -> Result<Response<pb::SetMaintenanceResponse>, Status> {
        let who = by(&request);
        let req = request.get_ref();
        let targets = targets(&req.agent_ids, &req.labels, req.all)?;
        convert::text("reason", &req.reason, true)?;
        let length = duration(req.duration.as_ref(), "duration", MAX_MAINTENANCE)?;
        // Marking by label or all walks the fleet: off the async workers.
        let (registry, reason) = (self.registry.clone(), req.reason.clone());
        let result = tokio::task::spawn_blocking(move || {
            registry.set_maintenance(&targets, &reason, length, &who)
        })
        .await
        .map_err(|e| Status::internal(format!("marking failed: {e}")))?;
        let detail = match &result {
            Ok(m) => format!("marked {} agents: {}", m.agents.len(), req.reason),
            Err(e) => e.to_string(),
        };
        self.audit(&request, SET, result.is_ok(), detail);
        let marked = result?;
        self.committed(marked.commit).await;
        Ok(Response::new(pb::SetMaintenanceResponse {
            marked: marked.agents.len() as u64,
            until: Some(wire::timestamp(marked.until)),
            agent_ids: marked
                .agents
                .iter()
                .take(LISTED)
                .map(|k| k.to_string())
                .collect(),
        }))
    }

    pub(super) async fn clear_maintenance_(
        &self,
        request: Request<pb::ClearMaintenanceRequest>,
    ) -> Result<Response<pb::ClearMaintenanceResponse>, Status> {
        let who = by(&request);
        let req = request.get_ref();
        let targets = targets(&req.agent_ids, &req.labels, req.all)?;
        let registry = self.registry.clone();
        let result =
            tokio::task::spawn_blocking(move || registry.clear_maintenance(&targets, &who))
                .await
                .map_err(|e| Status::internal(format!("clearing failed: {e}")))?;
        let detail = match &result {
            Ok((n, _)) => format!("cleared {n} maintenance marks"),
            Err(e) => e.to_string(),
        };
        self.audit(&request, CLEAR, result.is_ok(), detail);
        let (cleared, commit) = result?;
        self.committed(commit).await;
        Ok(Response::new(pb::ClearMaintenanceResponse { cleared }))
    }

    pub(super) async fn claim_agent_(
        &self,
        request: Request<pb::ClaimAgentRequest>,
    ) -> Result<Response<pb::ClaimAgentResponse>, Status> {
        let who = by(&request);
        let req = request.into_inner();
        let id = wire::agent_id(&req.agent_id)?;
        holder(&req.holder)?;
        let lease = duration(req.lease.as_ref(), "lease", MAX_LEASE)?;
        let c = self.registry.claim(&id, &req.holder, lease, &who)?;
        self.committed(c.commit).await;
        let refusal = match c.refusal {
            None => pb::ClaimRefusal::Unspecified,
            Some(Refusal::Held) => pb::ClaimRefusal::Held,
            Some(Refusal::Maintenance) => pb::ClaimRefusal::Maintenance,
            Some(Refusal::GivenUp) => pb::ClaimRefusal::GivenUp,
            Some(Refusal::NotFaulty) => pb::ClaimRefusal::NotFaulty,
        };
        Ok(Response::new(pb::ClaimAgentResponse {
            granted: c.refusal.is_none(),
            refusal: refusal as i32,
            claim: c.claim.as_ref().map(Into::into),
            agent: Some((&c.view).into()),
            recent: c.recent.iter().map(Into::into).collect(),
        }))
    }

    pub(super) async fn release_agent_(
        &self,
        request: Request<pb::ReleaseAgentRequest>,
    ) -> Result<Response<pb::ReleaseAgentResponse>, Status> {
        let req = request.into_inner();
        let id = wire::agent_id(&req.agent_id)?;
        holder(&req.holder)?;
        let (released, commit) = self.registry.release(&id, &req.holder)?;
        self.committed(commit).await;
        Ok(Response::new(pb::ReleaseAgentResponse { released }))
    }

    pub(super) async fn record_remediation_(
        &self,
        request: Request<pb::RecordRemediationRequest>,
    ) -> Result<Response<pb::RecordRemediationResponse>, Status> {
        let who = by(&request);
        let req = request.into_inner();
        let id = wire::agent_id(&req.agent_id)?;
        holder(&req.holder)?;
        let remediation = req
            .remediation
            .as_ref()
            .map(convert::remediation)
            .transpose()?;
        let give_up = if req.give_up {
            convert::text("give_up_reason", &req.give_up_reason, true)?;
            Some(req.give_up_reason.as_str())
        } else {
            None
        };
        if remediation.is_none() && give_up.is_none() {
            return Err(Status::invalid_argument(
                "nothing to record: give a remediation, or give_up",
            ));
        }
        let commit =
            self.registry
                .record_remediation(&id, &req.holder, &who, remediation, give_up)?;
        self.committed(commit).await;
        Ok(Response::new(pb::RecordRemediationResponse {}))
    }

    pub(super) async fn clear_given_up_(
        &self,
        request: Request<pb::ClearGivenUpRequest>,
    ) -> Result<Response<pb::ClearGivenUpResponse>, Status> {
        let who = by(&request);
        let id = wire::agent_id(&request.get_ref().agent_id)?;
        let result = self.registry.clear_given_up(&id, &who);
        let detail = match &result {
            Ok((true, _)) => format!("cleared \"given up\" from {id}"),
            Ok((false, _)) => format!("{id} was not given up on"),
            Err(e) => e.to_string(),
        };
        self.audit(&request, CLEAR_GIVEN_UP, result.is_ok(), detail);
        let (cleared, commit) = result?;
        self.committed(commit).await;
        Ok(Response::new(pb::ClearGivenUpResponse { cleared }))
    }
}
