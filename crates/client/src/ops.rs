//! Maintenance marks and remediation: the values and the calls that mark
//! agents as under planned work, and that let remediators claim an agent,
//! record what they did, and give up on it.
//!
//! Like [`crate::view`], this is where the wire answers of these calls
//! become plain values; nothing above [`FleetClient`] sees their protobuf
//! messages.

use std::time::Duration;

use fleet_health_sensor::Time;
use fleet_health_types::wire::{self, timestamp};
use fleet_health_types::{AgentId, Labels, Why, check_labels};

use crate::proto::{
    self, ClaimAgentRequest, ClearGivenUpRequest, ClearMaintenanceRequest,
    RecordRemediationRequest, ReleaseAgentRequest, SetMaintenanceRequest,
};
use crate::view::{AgentView, DecodeError, time};
use crate::{ClientError, FleetClient, NameError};

/// An operator's mark: the agent is under planned work until `until`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Maintenance {
    /// Why, in the operator's words.
    pub reason: String,
    /// Who set it (the caller's identity; empty when security is off).
    pub by: String,
    /// When it was set.
    pub since: Option<Time>,
    /// When it ends by itself.
    pub until: Option<Time>,
}

impl TryFrom<proto::Maintenance> for Maintenance {
    type Error = DecodeError;

    fn try_from(m: proto::Maintenance) -> Result<Maintenance, DecodeError> {
        Ok(Maintenance {
            since: time("Maintenance.since", m.since.as_ref())?,
            until: time("Maintenance.until", m.until.as_ref())?,
            reason: m.reason,
            by: m.by,
        })
    }
}

/// A remediator's claim on an agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The remediator's name.
    pub holder: String,
    /// Its identity (empty when security is off).
    pub by: String,
    /// When it was first granted.
    pub since: Option<Time>,
    /// When its lease runs out.
    pub until: Option<Time>,
}

impl TryFrom<proto::Claim> for Claim {
    type Error = DecodeError;

    fn try_from(c: proto::Claim) -> Result<Claim, DecodeError> {
        Ok(Claim {
            since: time("Claim.since", c.since.as_ref())?,
            until: time("Claim.until", c.until.as_ref())?,
            holder: c.holder,
            by: c.by,
        })
    }
}

/// A remediator gave up on the agent; it is left alone until an operator
/// clears this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GivenUp {
    /// The remediator's name.
    pub holder: String,
    /// Its identity (empty when security is off).
    pub by: String,
    /// When.
    pub at: Option<Time>,
    /// Why, in the remediator's words.
    pub reason: String,
}

impl TryFrom<proto::GivenUp> for GivenUp {
    type Error = DecodeError;

    fn try_from(g: proto::GivenUp) -> Result<GivenUp, DecodeError> {
        Ok(GivenUp {
            at: time("GivenUp.at", g.at.as_ref())?,
            holder: g.holder,
            by: g.by,
            reason: g.reason,
        })
    }
}

/// How a remediation went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RemediationResult {
    /// The program exited with 0.
    Succeeded,
    /// It exited with another code, or a signal ended it.
    Failed,
    /// It ran past its timeout and was killed.
    TimedOut,
    /// It could not be started.
    NotStarted,
}

impl RemediationResult {
    /// The word used in output and metrics: `succeeded`, `failed`,
    /// `timed out`, `not started`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RemediationResult::Succeeded => "succeeded",
            RemediationResult::Failed => "failed",
            RemediationResult::TimedOut => "timed out",
            RemediationResult::NotStarted => "not started",
        }
    }

    fn from_wire(v: i32) -> Option<RemediationResult> {
        use proto::RemediationResult as R;
        match R::try_from(v).ok()? {
            R::Succeeded => Some(RemediationResult::Succeeded),
            R::Failed => Some(RemediationResult::Failed),
            R::TimedOut => Some(RemediationResult::TimedOut),
            R::NotStarted => Some(RemediationResult::NotStarted),
            R::Unspecified => None,
        }
    }

    fn to_wire(self) -> proto::RemediationResult {
        use proto::RemediationResult as R;
        match self {
            RemediationResult::Succeeded => R::Succeeded,
            RemediationResult::Failed => R::Failed,
            RemediationResult::TimedOut => R::TimedOut,
            RemediationResult::NotStarted => R::NotStarted,
        }
    }
}

/// One remediation: a program run for an agent, and how it went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remediation {
    /// When the program started.
    pub started: Option<Time>,
    /// When it ended.
    pub finished: Option<Time>,
    /// The program and its arguments as run (or the shell string).
    pub program: String,
    /// How it went; `None`: a result this version does not know.
    pub result: Option<RemediationResult>,
    /// Its exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// The last lines it wrote.
    pub output: String,
    /// The agent's why when the remediator acted.
    pub why: Option<Why>,
}

impl TryFrom<proto::Remediation> for Remediation {
    type Error = DecodeError;

    fn try_from(r: proto::Remediation) -> Result<Remediation, DecodeError> {
        Ok(Remediation {
            started: time("Remediation.started", r.started.as_ref())?,
            finished: time("Remediation.finished", r.finished.as_ref())?,
            result: RemediationResult::from_wire(r.result),
            exit_code: r.exit_code,
            signal: r.signal,
            why: Why::try_from(r.why).ok(),
            program: r.program,
            output: r.output,
        })
    }
}

impl From<&Remediation> for proto::Remediation {
    fn from(r: &Remediation) -> proto::Remediation {
        proto::Remediation {
            started: r.started.map(timestamp),
            finished: r.finished.map(timestamp),
            program: r.program.clone(),
            result: r
                .result
                .map_or(proto::RemediationResult::Unspecified, |r| r.to_wire())
                as i32,
            exit_code: r.exit_code,
            signal: r.signal,
            output: r.output.clone(),
            why: r.why.map_or(0, |w| proto::Why::from(w) as i32),
        }
    }
}

/// What an operator or a remediator did to an agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActivityKind {
    /// An operator marked it as under maintenance.
    MaintenanceSet,
    /// An operator ended the mark.
    MaintenanceCleared,
    /// The mark ended by itself.
    MaintenanceExpired,
    /// A remediator acted on it.
    Remediated,
    /// A remediator gave up on it.
    GaveUp,
    /// An operator cleared the "given up".
    GivenUpCleared,
}

impl ActivityKind {
    /// The words used in output: `maintenance set`, `remediated`, ...
    pub const fn as_str(self) -> &'static str {
        match self {
            ActivityKind::MaintenanceSet => "maintenance set",
            ActivityKind::MaintenanceCleared => "maintenance cleared",
            ActivityKind::MaintenanceExpired => "maintenance expired",
            ActivityKind::Remediated => "remediated",
            ActivityKind::GaveUp => "gave up",
            ActivityKind::GivenUpCleared => "given up cleared",
        }
    }

    fn from_wire(v: i32) -> Option<ActivityKind> {
        use proto::ActivityKind as K;
        match K::try_from(v).ok()? {
            K::MaintenanceSet => Some(ActivityKind::MaintenanceSet),
            K::MaintenanceCleared => Some(ActivityKind::MaintenanceCleared),
            K::MaintenanceExpired => Some(ActivityKind::MaintenanceExpired),
            K::Remediated => Some(ActivityKind::Remediated),
            K::GaveUp => Some(ActivityKind::GaveUp),
            K::GivenUpCleared => Some(ActivityKind::GivenUpCleared),
            K::Unspecified => None,
        }
    }
}

/// One entry of an agent's activity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Activity {
    /// When.
    pub at: Option<Time>,
    /// What; `None`: a kind this version does not know.
    pub kind: Option<ActivityKind>,
    /// Who (the caller's identity; empty when security is off).
    pub by: String,
    /// The remediator's name, for remediator activity.
    pub holder: String,
    /// The maintenance reason, or why a remediator gave up.
    pub reason: String,
    /// When a maintenance mark set then ends by itself.
    pub until: Option<Time>,
    /// What a remediator ran, and how it went.
    pub remediation: Option<Remediation>,
}

impl TryFrom<proto::Activity> for Activity {
    type Error = DecodeError;

    fn try_from(a: proto::Activity) -> Result<Activity, DecodeError> {
        Ok(Activity {
            at: time("Activity.at", a.at.as_ref())?,
            kind: ActivityKind::from_wire(a.kind),
            until: time("Activity.until", a.until.as_ref())?,
            remediation: a.remediation.map(Remediation::try_from).transpose()?,
            by: a.by,
            holder: a.holder,
            reason: a.reason,
        })
    }
}

/// Why a claim was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClaimRefusal {
    /// Another remediator holds the agent.
    Held,
    /// The agent is under maintenance.
    Maintenance,
    /// A remediator gave up on the agent.
    GivenUp,
    /// The agent is not faulty (any more).
    NotFaulty,
    /// A refusal this version does not know.
    Other,
}

impl ClaimRefusal {
    /// The words used in output.
    pub const fn as_str(self) -> &'static str {
        match self {
            ClaimRefusal::Held => "claimed by another remediator",
            ClaimRefusal::Maintenance => "under maintenance",
            ClaimRefusal::GivenUp => "given up",
            ClaimRefusal::NotFaulty => "not faulty",
            ClaimRefusal::Other => "refused",
        }
    }
}

/// The answer to a claim.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimOutcome {
    /// `None`: the claim is the caller's; else why not.
    pub refusal: Option<ClaimRefusal>,
    /// The claim in force: the caller's, or the other holder's.
    pub claim: Option<Claim>,
    /// The agent's status now.
    pub agent: Option<AgentView>,
    /// The agent's recent remediations, by anyone, oldest first.
    pub recent: Vec<Remediation>,
}

impl ClaimOutcome {
    /// Whether the claim is the caller's.
    pub fn granted(&self) -> bool {
        self.refusal.is_none()
    }
}

impl TryFrom<proto::ClaimAgentResponse> for ClaimOutcome {
    type Error = DecodeError;

    fn try_from(c: proto::ClaimAgentResponse) -> Result<ClaimOutcome, DecodeError> {
        use proto::ClaimRefusal as R;
        let refusal = if c.granted {
            None
        } else {
            Some(match R::try_from(c.refusal) {
                Ok(R::Held) => ClaimRefusal::Held,
                Ok(R::Maintenance) => ClaimRefusal::Maintenance,
                Ok(R::GivenUp) => ClaimRefusal::GivenUp,
                Ok(R::NotFaulty) => ClaimRefusal::NotFaulty,
                Ok(R::Unspecified) | Err(_) => ClaimRefusal::Other,
            })
        };
        Ok(ClaimOutcome {
            refusal,
            claim: c.claim.map(Claim::try_from).transpose()?,
            agent: c.agent.map(AgentView::try_from).transpose()?,
            recent: c
                .recent
                .into_iter()
                .map(Remediation::try_from)
                .collect::<Result<_, _>>()?,
        })
    }
}

/// Which agents a maintenance call names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Targets {
    /// These agents, by ID.
    Ids(Vec<String>),
    /// The agents that carry all these labels.
    Labels(Labels),
    /// Every agent (known now, or under maintenance for a clear).
    All,
}

impl Targets {
    fn check(&self) -> Result<(), NameError> {
        match self {
            Targets::Ids(ids) => {
                for id in ids {
                    AgentId::parse(id)?;
                }
            }
            Targets::Labels(labels) => check_labels(labels)?,
            Targets::All => {}
        }
        Ok(())
    }

    fn wire(&self) -> (Vec<String>, std::collections::HashMap<String, String>, bool) {
        match self {
            Targets::Ids(ids) => (ids.clone(), Default::default(), false),
            Targets::Labels(l) => (Vec::new(), l.clone().into_iter().collect(), false),
            Targets::All => (Vec::new(), Default::default(), true),
        }
    }
}

/// The answer to [`FleetClient::set_maintenance`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaintenanceSet {
    /// How many agents were marked.
    pub marked: u64,
    /// When the marks end by themselves.
    pub until: Option<Time>,
    /// The first agents marked, by ID (at most 1000).
    pub agent_ids: Vec<String>,
}

impl FleetClient {
    /// Marks agents as under maintenance for `duration`, with `reason`.
    pub async fn set_maintenance(
        &self,
        targets: &Targets,
        reason: &str,
        duration: Duration,
    ) -> Result<MaintenanceSet, ClientError> {
        targets.check()?;
        let (agent_ids, labels, all) = targets.wire();
        let request = SetMaintenanceRequest {
            agent_ids,
            labels,
            all,
            reason: reason.to_owned(),
            duration: Some(wire::duration(duration)),
        };
        let mut inner = self.inner.clone();
        let r = self.call(inner.set_maintenance(request)).await?;
        Ok(MaintenanceSet {
            marked: r.marked,
            until: time("SetMaintenanceResponse.until", r.until.as_ref())?,
            agent_ids: r.agent_ids,
        })
    }

    /// Ends maintenance marks early; returns how many were ended.
    pub async fn clear_maintenance(&self, targets: &Targets) -> Result<u64, ClientError> {
        targets.check()?;
        let (agent_ids, labels, all) = targets.wire();
        let request = ClearMaintenanceRequest {
            agent_ids,
            labels,
            all,
        };
        let mut inner = self.inner.clone();
        Ok(self.call(inner.clear_maintenance(request)).await?.cleared)
    }

    /// Claims a faulty agent for remediation as `holder`, for `lease`.
    pub async fn claim(
        &self,
        agent_id: &str,
        holder: &str,
        lease: Duration,
    ) -> Result<ClaimOutcome, ClientError> {
        AgentId::parse(agent_id).map_err(NameError::from)?;
        let request = ClaimAgentRequest {
            agent_id: agent_id.to_owned(),
            holder: holder.to_owned(),
            lease: Some(wire::duration(lease)),
        };
        let mut inner = self.inner.clone();
        Ok(self.call(inner.claim_agent(request)).await?.try_into()?)
    }

    /// Releases `holder`'s claim on an agent; false if it held none.
    pub async fn release(&self, agent_id: &str, holder: &str) -> Result<bool, ClientError> {
        AgentId::parse(agent_id).map_err(NameError::from)?;
        let request = ReleaseAgentRequest {
            agent_id: agent_id.to_owned(),
            holder: holder.to_owned(),
        };
        let mut inner = self.inner.clone();
        Ok(self.call(inner.release_agent(request)).await?.released)
    }

    /// Records what `holder` did to an agent, and whether it gives up on it
    /// (`give_up`: the reason).
    pub async fn record_remediation(
        &self,
        agent_id: &str,
        holder: &str,
        remediation: Option<&Remediation>,
        give_up: Option<&str>,
    ) -> Result<(), ClientError> {
        AgentId::parse(agent_id).map_err(NameError::from)?;
        let request = RecordRemediationRequest {
            agent_id: agent_id.to_owned(),
            holder: holder.to_owned(),
            remediation: remediation.map(Into::into),
            give_up: give_up.is_some(),
            give_up_reason: give_up.unwrap_or_default().to_owned(),
        };
        let mut inner = self.inner.clone();
        self.call(inner.record_remediation(request)).await?;
        Ok(())
    }

    /// Clears a remediator's "given up" from an agent; false if there was
    /// none.
    pub async fn clear_given_up(&self, agent_id: &str) -> Result<bool, ClientError> {
        AgentId::parse(agent_id).map_err(NameError::from)?;
        let request = ClearGivenUpRequest {
            agent_id: agent_id.to_owned(),
        };
        let mut inner = self.inner.clone();
        Ok(self.call(inner.clear_given_up(request)).await?.cleared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remediation_round_trips_through_the_wire() {
        let r = Remediation {
            started: Some(Time::from_micros(1_700_000_000_000_000).unwrap()),
            finished: Some(Time::from_micros(1_700_000_001_500_000).unwrap()),
            program: "systemctl restart agent@web-1".into(),
            result: Some(RemediationResult::Failed),
            exit_code: Some(3),
            signal: None,
            output: "unit not found\n".into(),
            why: Some(Why::StuckAtShutdown),
        };
        let back = Remediation::try_from(proto::Remediation::from(&r)).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn a_refused_claim_says_why() {
        let c = ClaimOutcome::try_from(proto::ClaimAgentResponse {
            granted: false,
            refusal: proto::ClaimRefusal::Maintenance as i32,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.refusal, Some(ClaimRefusal::Maintenance));
        assert!(!c.granted());
        let granted = ClaimOutcome::try_from(proto::ClaimAgentResponse {
            granted: true,
            ..Default::default()
        })
        .unwrap();
        assert!(granted.granted());
    }

    #[tokio::test]
    async fn bad_targets_are_refused_before_sending() {
        let client =
            FleetClient::connect_lazy("http://127.0.0.1:1", Duration::from_secs(1)).unwrap();
        let e = client
            .set_maintenance(
                &Targets::Ids(vec!["a b".into()]),
                "x",
                Duration::from_secs(60),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::InvalidName(_)), "{e}");
    }
}
