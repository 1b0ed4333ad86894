//! A failure of a command, with the exit code it maps to; the client
//! crate's errors map here, once.

use std::fmt;
use std::io;

use fleet_health_client::{ClientError, ReporterError};

use crate::exit_codes::ExitCode;

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub code: ExitCode,
    /// What went wrong, with its causes.
    pub error: anyhow::Error,
}

impl Failure {
    /// A failure with an explicit code.
    pub fn new(code: ExitCode, error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            code,
            error: error.into(),
        }
    }

    /// A usage error.
    pub fn usage(message: impl fmt::Display) -> Failure {
        Failure::new(ExitCode::Usage, anyhow::anyhow!("{message}"))
    }

    /// Whether this is stdout closed under us (`| head`): not an error.
    pub fn is_broken_pipe(&self) -> bool {
        self.error
            .chain()
            .filter_map(|e| e.downcast_ref::<io::Error>())
            .any(|e| e.kind() == io::ErrorKind::BrokenPipe)
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        if let ClientError::Unreachable(why) = &e {
            let hint = if why.contains("refused") {
                " (is fleet-health-server running there? the address is --server, FLEET_HEALTH_SERVER or the context's)"
            } else if why.contains("dns error") || why.contains("failed to lookup") {
                " (the host name does not resolve: check --server)"
            } else {
                ""
            };
            return Failure::new(
                ExitCode::Unreachable,
                anyhow::anyhow!("server unreachable: {why}{hint}"),
            );
        }
        let code = match &e {
            ClientError::NotFound(_) => ExitCode::NotFound,
            ClientError::Unreachable(_) => ExitCode::Unreachable,
            ClientError::InvalidName(_)
            | ClientError::InvalidEndpoint(_)
            | ClientError::BadCredentials(_)
            | ClientError::InvalidArgument(_) => ExitCode::Usage,
            ClientError::Tls(_) => ExitCode::Tls,
            ClientError::Unauthenticated(_) => ExitCode::Unauthenticated,
            ClientError::PermissionDenied(_) => ExitCode::PermissionDenied,
            ClientError::Status(_) | ClientError::Decode(_) => ExitCode::Failure,
        };
        Failure::new(code, e)
    }
}

impl From<ReporterError> for Failure {
    fn from(e: ReporterError) -> Failure {
        let code = match &e {
            ReporterError::InvalidName(_)
            | ReporterError::InvalidEndpoint(_)
            | ReporterError::BadCredentials(_)
            | ReporterError::Refused { .. } => ExitCode::Usage,
            ReporterError::Denied {
                unauthenticated: true,
                ..
            } => ExitCode::Unauthenticated,
            ReporterError::Denied { .. } => ExitCode::PermissionDenied,
            ReporterError::Timeout { .. } => ExitCode::Unreachable,
            ReporterError::NoRuntime | ReporterError::Closed => ExitCode::Failure,
        };
        Failure::new(code, e)
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::new(ExitCode::Failure, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_health_client::{AgentId, NameError};
    use tonic::Status;

    #[test]
    fn errors_map_to_their_exit_codes() {
        let cases = [
            (
                Failure::from(ClientError::from(Status::not_found("x"))),
                ExitCode::NotFound,
            ),
            (
                Failure::from(ClientError::from(Status::unavailable("x"))),
                ExitCode::Unreachable,
            ),
            (
                Failure::from(ClientError::from(Status::deadline_exceeded("x"))),
                ExitCode::Unreachable,
            ),
            (
                Failure::from(ClientError::from(Status::invalid_argument("x"))),
                ExitCode::Usage,
            ),
            (
                Failure::from(ClientError::from(Status::internal("x"))),
                ExitCode::Failure,
            ),
            (
                Failure::from(ClientError::from(NameError::from(
                    AgentId::parse("a b").unwrap_err(),
                ))),
                ExitCode::Usage,
            ),
            (
                Failure::from(ReporterError::Timeout { unacked: 1 }),
                ExitCode::Unreachable,
            ),
            (
                Failure::from(ReporterError::Refused {
                    message: "bad".into(),
                }),
                ExitCode::Usage,
            ),
            (Failure::usage("no"), ExitCode::Usage),
            (
                Failure::from(ClientError::from(Status::unauthenticated("x"))),
                ExitCode::Unauthenticated,
            ),
            (
                Failure::from(ClientError::from(Status::permission_denied("x"))),
                ExitCode::PermissionDenied,
            ),
            (
                Failure::from(ReporterError::Denied {
                    unauthenticated: false,
                    message: "other agent".into(),
                }),
                ExitCode::PermissionDenied,
            ),
        ];
        for (failure, code) in cases {
            assert_eq!(failure.code, code, "{:#}", failure.error);
        }
    }

    #[test]
    fn a_closed_pipe_is_recognised_through_the_context() {
        let f = Failure::from(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(f.is_broken_pipe());
        let wrapped = Failure::new(
            ExitCode::Failure,
            anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe)).context("writing"),
        );
        assert!(wrapped.is_broken_pipe());
        assert!(!Failure::usage("x").is_broken_pipe());
    }
}
