//! The exit codes of `fleet-health`: stable, so that scripts can tell the
//! cases apart. They are documented in the crate's README.

/// How `fleet-health` exits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// 0: success.
    Success = 0,
    /// 1: any other error (the server failed, an unexpected answer, a local
    /// I/O error).
    Failure = 1,
    /// 2: a usage error: bad flags or arguments (an invalid agent ID, TIME,
    /// label or why), or a request the server refused as invalid.
    Usage = 2,
    /// 3: the server could not be reached or did not answer in time
    /// (including an event that `report` could not get acknowledged).
    Unreachable = 3,
    /// 4: the agent is not known to the server (`status`, `history`,
    /// `forget`, `maintenance`).
    NotFound = 4,
    /// 5: the storm flag is raised: `list --faulty` or `summary` succeeded
    /// but a large share of the fleet is faulty at once, which points at a
    /// shared cause rather than at every agent. The output is complete.
    /// Also `remediate --once` when the storm stop held every action back.
    Storm = 5,
    /// 6: the server does not know who this is (UNAUTHENTICATED): no
    /// certificate or token, an unknown, expired or revoked one. Fix the
    /// credentials (`--cert`/`--key`, `--token`, the context).
    Unauthenticated = 6,
    /// 7: the server knows who this is and refuses (PERMISSION_DENIED): the
    /// role is too small, or a certificate for another agent.
    PermissionDenied = 7,
    /// 8: TLS failed: the server's certificate is not signed by `--ca`, has
    /// expired or names another host; or the server does not speak TLS (or
    /// speaks only TLS).
    Tls = 8,
    /// 9: `remediate --once`: a program failed, timed out or could not
    /// start, or an agent was given up (the crash-loop limit). Every
    /// decision was printed; the server has the record.
    RemediationFailed = 9,
}

impl ExitCode {
    /// Every code, in order.
    pub const ALL: [ExitCode; 10] = [
        ExitCode::Success,
        ExitCode::Failure,
        ExitCode::Usage,
        ExitCode::Unreachable,
        ExitCode::NotFound,
        ExitCode::Storm,
        ExitCode::Unauthenticated,
        ExitCode::PermissionDenied,
        ExitCode::Tls,
        ExitCode::RemediationFailed,
    ];

    /// The number the process exits with.
    pub const fn code(self) -> u8 {
        self as u8
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> std::process::ExitCode {
        std::process::ExitCode::from(code.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_stable() {
        let numbers: Vec<u8> = ExitCode::ALL.iter().map(|c| c.code()).collect();
        assert_eq!(numbers, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    }
}
