//! The `fleet-health` binary's exit codes for what needs no server: a usage
//! error is 2, an unreachable server is 3, and `--help` is 0. (Having this
//! integration test also makes `cargo test --workspace` build the binary that
//! the end-to-end tests in `tests/` run.)

use std::process::Command;

fn fleet_health(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fleet-health"))
        .args(args)
        .env_remove("FLEET_HEALTH_SERVER")
        .env("NO_COLOR", "1")
        .output()
        .expect("fleet-health runs");
    (
        out.status.code().expect("exited"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_every_command_and_the_exit_codes() {
    let (code, out, _) = fleet_health(&["--help"]);
    assert_eq!(code, 0);
    for cmd in [
        "list",
        "status",
        "watch",
        "summary",
        "history",
        "forget",
        "report",
        "simulate",
        "remediate",
    ] {
        assert!(out.contains(cmd), "{cmd} missing from --help");
    }
    assert!(out.contains("3 server unreachable"), "{out}");
    assert!(out.contains("9 a remediation failed"), "{out}");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["list", "--faulty", "--healthy"][..],
        &["status", "bad id!"],
        &["report", "--agent", "a", "exploded"],
        &["list", "--at", "yesterday-ish"],
        &["no-such-command"],
    ] {
        let (code, _, err) = fleet_health(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(!err.is_empty(), "{args:?} said nothing");
    }
}

#[test]
fn an_unreachable_server_exits_3() {
    let (code, _, err) = fleet_health(&[
        "--server",
        "http://127.0.0.1:1",
        "--timeout",
        "2s",
        "summary",
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("unreachable"), "{err}");
}
