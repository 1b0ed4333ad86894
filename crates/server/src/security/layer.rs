//! The tower layer that checks every call against the access table.
//!
//! It runs before any service: it finds the caller ([`Security::identify`]),
//! looks the RPC's path up in [`fleet_health_auth::policy`], and either
//! answers with UNAUTHENTICATED / PERMISSION_DENIED at once (counted in
//! `fleet_health_denials_total`, one audit line) or lets the call through
//! with the [`Caller`] in its extensions.

use std::sync::Arc;
use std::task::{Context, Poll};

use fleet_health_auth::policy::{self, Decision, Denied};
use futures_util::future::{Either, Ready, ready};
use tonic::Status;
use tonic::codegen::{Service, http};

use super::{AuditEvent, Caller, Refusal, Security};
use crate::metrics::Denial;
use crate::net::ConnInfo;

/// Adds [`Auth`] around a service.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    security: Arc<Security>,
}

impl AuthLayer {
    /// The layer for `security`.
    pub fn new(security: Arc<Security>) -> AuthLayer {
        AuthLayer { security }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            security: self.security.clone(),
        }
    }
}

/// The checking service (see the module docs).
#[derive(Clone, Debug)]
pub struct Auth<S> {
    inner: S,
    security: Arc<Security>,
}

impl<S, B, R> Service<http::Request<B>> for Auth<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    R: Default,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Either<Ready<Result<http::Response<R>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if !self.security.enabled() {
            return Either::Right(self.inner.call(req));
        }
        match check(&self.security, &req) {
            Ok(Some(caller)) => {
                req.extensions_mut().insert(caller);
                Either::Right(self.inner.call(req))
            }
            Ok(None) => Either::Right(self.inner.call(req)),
            Err(status) => Either::Left(ready(Ok(status.into_http()))),
        }
    }
}

/// The caller, if the call may go ahead; the status to answer with if not.
fn check<B>(security: &Security, req: &http::Request<B>) -> Result<Option<Caller>, Status> {
    let path = req.uri().path();
    let rpc = policy::TABLE
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(p, _)| *p);
    let conn = req.extensions().get::<ConnInfo>();
    let peer = conn.map(|c| c.remote);
    // Open RPCs (health) need nothing, and are not held up by a bad token.
    if matches!(policy::access(path), Some(policy::Access::Open)) {
        return Ok(None);
    }
    let authorization = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let refuse = |r: Refusal| {
        security.metrics().count_denial(r.denial);
        security.audit().record(AuditEvent {
            event: "denied",
            identity: r.identity.clone(),
            credential: None,
            peer,
            rpc,
            agent_id: None,
            result: if r.status.code() == tonic::Code::Unauthenticated {
                "unauthenticated"
            } else {
                "permission_denied"
            },
            reason: Some(r.denial.as_str()),
            detail: Some(if rpc.is_none() {
                format!("{} (path {path})", r.status.message())
            } else {
                r.status.message().to_string()
            }),
        });
        r.status
    };
    let caller = match req.headers().get(crate::cluster::node::NODE_SECRET) {
        Some(shown) => Some(
            security
                .identify_passed(
                    shown.as_bytes(),
                    req.headers()
                        .get(crate::cluster::node::CALLER)
                        .map(|v| v.as_bytes()),
                    peer,
                )
                .map_err(refuse)?,
        ),
        None => security.identify(authorization, conn).map_err(refuse)?,
    };
    match policy::decide(path, caller.as_ref().map(|c| &*c.identity)) {
        Decision::Allow => Ok(caller),
        Decision::Deny(denied) => {
            let (denial, status) = match &denied {
                Denied::NoCredentials => (
                    Denial::NoCredentials,
                    Status::unauthenticated(denied.to_string()),
                ),
                Denied::NotInTable => (
                    Denial::UnknownRpc,
                    Status::permission_denied(denied.to_string()),
                ),
                Denied::NotAllowed { .. } => {
                    (Denial::Role, Status::permission_denied(denied.to_string()))
                }
            };
            Err(refuse(Refusal {
                denial,
                status,
                identity: caller.map(|c| c.identity.to_string()),
            }))
        }
    }
}
