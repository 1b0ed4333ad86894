//! `fleet-health remediate` against the real server: it acts once per agent
//! and only after settle; the cooldown and the crash-loop limit hold;
//! concurrency and rate are never exceeded; a storm stops everything and its
//! end resumes; two remediators never act on one agent twice; a hanging
//! program is killed at the timeout; a server restart mid-run loses no claim
//! and causes no double action; dry-run acts on nothing; an agent under
//! maintenance is never acted on until its mark ends.
//!
//! The programs are `/bin/sh` scripts that append `start ID TIME` and
//! `end ID TIME` lines to a log file, which the tests read afterwards.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_health_e2e::{Proxy, Server, cli_command, micros};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

/// The longest a remediator may take to print its next decision.
const LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `fleet-health remediate -o ndjson`.
pub(crate) struct Remediator {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    /// Every decision printed so far.
    seen: Vec<Value>,
}

impl Remediator {
    /// Starts `remediate -o ndjson ARGS --exec PROGRAM...` against `url`.
    pub(crate) fn start(url: &str, args: &[&str], program: &[&str]) -> Remediator {
        let mut all = vec!["remediate", "-o", "ndjson", "--server", url];
        all.extend_from_slice(args);
        all.push("--exec");
        all.extend_from_slice(program);
        let mut child = cli_command(&all).spawn().expect("start remediate");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Remediator {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next decision; panics if the remediator ends or is silent.
    pub(crate) async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(LINE_TIMEOUT, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("remediate said nothing new; so far: {:#?}", self.seen))
            .expect("read remediate")
            .unwrap_or_else(|| panic!("remediate ended; it said: {:#?}", self.seen));
        let value: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        self.seen.push(value.clone());
        value
    }

    /// Reads decisions until one matches.
    async fn until(&mut self, what: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.next().await;
            if what(&v) {
                return v;
            }
        }
    }

    /// Reads until `n` programs have ended; their `acted` decisions.
    pub(crate) async fn acted(&mut self, n: usize) -> Vec<Value> {
        let mut acted = Vec::new();
        while acted.len() < n {
            let v = self.until(|v| v["type"] == "acted").await;
            acted.push(v);
        }
        acted
    }

    /// Waits for it to exit; its code, after reading what it still said.
    async fn exit(mut self) -> (Option<i32>, Vec<Value>) {
        while let Ok(Some(line)) = tokio::time::timeout(LINE_TIMEOUT, self.lines.next_line())
            .await
            .expect("remediate ends in time")
        {
            self.seen.push(serde_json::from_str(&line).expect("JSON"));
        }
        let status = tokio::time::timeout(LINE_TIMEOUT, self.child.wait())
            .await
            .expect("remediate exits in time")
            .expect("wait for remediate");
        (status.code(), self.seen)
    }

    /// Kills it and returns what it wrote to stderr.
    pub(crate) async fn kill(mut self) -> String {
        self.child.start_kill().expect("kill remediate");
        let _ = self.child.wait().await;
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut stderr).await;
        }
        stderr
    }
}

/// A program that logs its start and end (with the time, in seconds) to
/// `log`, sleeping `secs` in between, and exits with `code`.
pub(crate) fn logging_program(log: &Path, secs: &str, code: u8) -> Vec<String> {
    let log = log.display();
    vec![
        "/bin/sh".into(),
        "-c".into(),
        format!(
            "echo \"start $0 $(date +%s.%N)\" >> {log}; sleep {secs}; echo \"end $0 $(date +%s.%N)\" >> {log}; exit {code}"
        ),
        "{id}".into(),
    ]
}

/// `(kind, agent, seconds)` of each line of a program log, in order.
pub(crate) fn read_log(log: &Path) -> Vec<(String, String, f64)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .map(|l| {
            let mut words = l.split_whitespace();
            let kind = words.next().expect("kind").to_owned();
            let agent = words.next().expect("agent").to_owned();
            let at: f64 = words.next().expect("time").parse().expect("seconds");
            (kind, agent, at)
        })
        .collect()
}

/// How many times each agent's program started.
pub(crate) fn starts(log: &[(String, String, f64)]) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for (kind, agent, _) in log {
        if kind == "start" {
            *n.entry(agent.clone()).or_default() += 1;
        }
    }
    n
}

pub(crate) fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

pub(crate) fn scratch() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a scratch folder");
    let log = dir.path().join("programs.log");
    (dir, log)
}

/// Agents faulty now ("no data sent to server", for an hour already).
pub(crate) async fn faulty(server: &Server, agents: &[&str]) {
    let events: &[&str] = &["starting --at -7h"];
    let list: Vec<(&str, &[&str])> = agents.iter().map(|a| (*a, events)).collect();
    server.report_all(&list).await;
}

/// Agents (re)started and healthy: data sent and received now.
async fn healthy(server: &Server, agents: &[&str]) {
    let events: &[&str] = &["starting", "server_data_received", "server_data_sent"];
    let list: Vec<(&str, &[&str])> = agents.iter().map(|a| (*a, events)).collect();
    server.report_all(&list).await;
}

/// `history ID -o json`'s activity.
pub(crate) async fn activity(server: &Server, agent: &str) -> Vec<Value> {
    let h = server.cli(&["history", agent, "-o", "json"]).await;
    h.expect_code(0).json()["activity"]
        .as_array()
        .expect("activity")
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_acts_once_per_agent_and_only_after_settle() {
    // Agents turn faulty one second after they start.
    let server = Server::start(&["--send-window", "1s"]).await;
    let (_dir, log) = scratch();
    let program = logging_program(&log, "0", 0);
    server
        .report_all(&[("s-1", &["starting"]), ("s-2", &["starting"])])
        .await;
    let mut r = Remediator::start(
        &server.url(),
        &["--settle", "2s", "--cooldown", "1h", "--rate", "100/s"],
        &strs(&program),
    );
    let ready = r.next().await;
    assert_eq!(ready["type"], "ready", "{ready}");
    let acted = r.acted(2).await;
    for a in &acted {
        assert_eq!(a["result"], "succeeded", "{a}");
        assert_eq!(a["recorded"], true, "{a}");
    }
    // A third agent, later: by the time it is acted on, the first two have
    // had every chance to be acted on again.
    server.report("s-3", "starting", &[]).await;
    let third = r.acted(1).await;
    assert_eq!(third[0]["agent_id"], "s-3");
    r.kill().await;

    let log = read_log(&log);
    assert_eq!(
        starts(&log),
        [("s-1".into(), 1), ("s-2".into(), 1), ("s-3".into(), 1)].into()
    );
    for (kind, agent, at) in &log {
        if kind != "start" {
            continue;
        }
        let status = server.cli(&["status", agent, "-o", "json"]).await;
        let since = micros(
            status.expect_code(0).json()["since"]
                .as_str()
                .expect("since"),
        );
        let started = (*at * 1e6) as i64;
        assert!(
            started >= since + 2_000_000,
            "{agent} acted on {}ms after turning faulty, before the 2s settle",
            (started - since) / 1000
        );
        let act = activity(&server, agent).await;
        assert_eq!(act.len(), 1, "{act:?}");
        assert_eq!(act[0]["kind"], "remediated");
        assert_eq!(act[0]["remediation"]["result"], "succeeded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cooldown_and_the_crash_loop_limit_hold_until_an_operator_clears() {
    let server = Server::start(&[]).await;
    faulty(&server, &["c-1"]).await;
    let (_dir, log) = scratch();
    // It never helps: the agent stays faulty.
    let program = logging_program(&log, "0", 1);
    let mut r = Remediator::start(
        &server.url(),
        &[
            "--settle",
            "0s",
            "--cooldown",
            "1s",
            "--max-restarts",
            "2",
            "--per",
            "1h",
            "--holder",
            "ops-1",
        ],
        &strs(&program),
    );
    let first = r.acted(1).await.remove(0);
    assert_eq!(first["result"], "failed");
    assert_eq!(first["exit_code"], 1);
    let second_start = r.until(|v| v["type"] == "acting").await;
    let second = r.acted(1).await.remove(0);
    let gave_up = r.until(|v| v["type"] == "gave_up").await;
    assert_eq!(gave_up["agent_id"], "c-1");
    assert_eq!(gave_up["recorded"], true);
    assert!(
        gave_up["reason"]
            .as_str()
            .unwrap()
            .contains("remediated 2 times within 1h"),
        "{gave_up}"
    );
    let log_now = read_log(&log);
    assert_eq!(starts(&log_now)["c-1"], 2, "{log_now:?}");
    // The second start came at least the cooldown after the first ended.
    let first_end = micros(first["finished"].as_str().unwrap());
    let second_began = micros(second["started"].as_str().unwrap());
    assert!(
        second_began - first_end >= 1_000_000,
        "{}ms apart: {second_start}",
        (second_began - first_end) / 1000
    );
    let status = server.cli(&["status", "c-1", "-o", "json"]).await;
    let status = status.expect_code(0).json();
    assert_eq!(status["given_up"]["holder"], "ops-1", "{status}");

    // An operator clears it: the remediator acts again, with a fresh budget.
    server
        .cli(&["remediate", "clear", "c-1"])
        .await
        .expect_code(0);
    let again = r.acted(1).await.remove(0);
    assert_eq!(again["agent_id"], "c-1");
    r.kill().await;
    let kinds: Vec<Value> = activity(&server, "c-1")
        .await
        .iter()
        .map(|a| a["kind"].clone())
        .collect();
    assert_eq!(
        kinds,
        [
            "remediated",
            "remediated",
            "gave up",
            "given up cleared",
            "remediated"
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_and_rate_are_never_exceeded() {
    let server = Server::start(&[]).await;
    let agents: Vec<String> = (0..8).map(|i| format!("k-{i}")).collect();
    faulty(&server, &strs(&agents)).await;
    let (_dir, log) = scratch();
    let program = logging_program(&log, "0.6", 0);
    let mut r = Remediator::start(
        &server.url(),
        &[
            "--settle",
            "0s",
            "--cooldown",
            "1h",
            "--concurrency",
            "2",
            "--rate",
            "3/2s",
        ],
        &strs(&program),
    );
    r.acted(8).await;
    r.kill().await;

    let log = read_log(&log);
    assert_eq!(starts(&log).len(), 8, "{log:?}");
    assert!(starts(&log).values().all(|&n| n == 1), "{log:?}");
    // Never more than 2 at once.
    let mut running = 0;
    let mut most = 0;
    let mut events: Vec<(f64, i32)> = log
        .iter()
        .map(|(k, _, at)| (*at, if k == "start" { 1 } else { -1 }))
        .collect();
    // At the same instant, an end comes before a start.
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    for (_, d) in events {
        running += d;
        most = most.max(running);
    }
    assert!(most <= 2, "{most} programs ran at once: {log:?}");
    assert_eq!(most, 2, "the concurrency was used: {log:?}");
    // Never more than 3 starts in any 2 s (a few ms of process start-up
    // aside: the remediator counts the start when it spawns the program).
    let mut times: Vec<f64> = log
        .iter()
        .filter(|(k, _, _)| k == "start")
        .map(|(_, _, at)| *at)
        .collect();
    times.sort_by(f64::total_cmp);
    for w in times.windows(4) {
        assert!(
            w[3] - w[0] >= 2.0 - 0.05,
            "4 starts within {:.3}s: {times:?}",
            w[3] - w[0]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_stops_every_action_and_its_end_resumes() {
    let server = Server::start(&[]).await;
    // Three agents that hear nothing from the data server (an outside
    // cause), one that sends nothing: three of four share an outside why.
    server
        .report_all(&[
            ("o-1", &["heartbeat"]),
            ("o-2", &["heartbeat"]),
            ("o-3", &["heartbeat"]),
        ])
        .await;
    faulty(&server, &["x-1"]).await;
    let (_dir, log) = scratch();
    let program = logging_program(&log, "0", 0);
    let mut r = Remediator::start(
        &server.url(),
        &[
            "--settle",
            "0s",
            "--cooldown",
            "1h",
            "--storm-min",
            "3",
            "--rate",
            "100/s",
        ],
        &strs(&program),
    );
    let ready = r.next().await;
    assert_eq!(ready["type"], "ready");
    let held = r.next().await;
    assert_eq!(held["type"], "storm", "{held}");
    assert_eq!(held["held"], true);
    assert_eq!(held["cause"], "outside");
    assert!(
        held["detail"]
            .as_str()
            .unwrap()
            .contains("3 of 4 faulty agents say \"no data received from server\""),
        "{held}"
    );
    // Two come back: two faulty agents are under --storm-min.
    healthy(&server, &["o-1", "o-2"]).await;
    let cleared = r.until(|v| v["type"] == "storm").await;
    assert_eq!(cleared["held"], false, "{cleared}");
    // Nothing started while the storm stop held.
    assert!(
        r.seen.iter().all(|v| v["type"] != "acting"),
        "{:#?}",
        r.seen
    );
    let acted = r.acted(2).await;
    r.kill().await;
    let mut ids: Vec<&str> = acted
        .iter()
        .map(|a| a["agent_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["o-3", "x-1"]);
    assert_eq!(starts(&read_log(&log)).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_storm_flag_stops_every_action() {
    // Three of four active agents faulty: the server raises its flag.
    let server = Server::start(&["--storm-min-agents", "4", "--storm-share", "0.5"]).await;
    faulty(&server, &["f-1", "f-2", "f-3"]).await;
    healthy(&server, &["h-1"]).await;
    let once = server
        .cli(&[
            "remediate",
            "-o",
            "json",
            "--once",
            "--settle",
            "0s",
            "--exec",
            "/bin/true",
        ])
        .await;
    once.expect_code(5);
    let decisions: Vec<Value> = once
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        decisions
            .iter()
            .any(|d| d["type"] == "storm" && d["cause"] == "server"),
        "{decisions:?}"
    );
    assert!(
        decisions
            .iter()
            .all(|d| d["type"] != "acting" && d["type"] != "acted"),
        "{decisions:?}"
    );
    let storm_skips = decisions
        .iter()
        .filter(|d| d["type"] == "skipped" && d["reason"] == "storm")
        .count();
    assert_eq!(storm_skips, 3, "{decisions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_remediators_never_act_on_one_agent_twice() {
    let server = Server::start(&[]).await;
    let agents: Vec<String> = (0..6).map(|i| format!("t-{i}")).collect();
    faulty(&server, &strs(&agents)).await;
    let (_dir, log) = scratch();
    let program = logging_program(&log, "0.3", 0);
    let args = |holder: &'static str| {
        [
            "--settle",
            "0s",
            "--cooldown",
            "1h",
            "--rate",
            "100/s",
            "--concurrency",
            "6",
            "--holder",
            holder,
        ]
    };
    let mut one = Remediator::start(&server.url(), &args("r-one"), &strs(&program));
    let mut two = Remediator::start(&server.url(), &args("r-two"), &strs(&program));
    // Every agent is decided by one of them: acted on, or skipped as held
    // by the other.
    let mut acted: BTreeMap<String, &str> = BTreeMap::new();
    let mut skipped_held = 0;
    for (r, name) in [(&mut one, "r-one"), (&mut two, "r-two")] {
        let mut decided = 0;
        while decided < 6 {
            let v = r.next().await;
            match v["type"].as_str() {
                Some("acted") => {
                    let id = v["agent_id"].as_str().unwrap().to_owned();
                    assert!(acted.insert(id, name).is_none(), "acted on twice: {v}");
                    decided += 1;
                }
                Some("skipped") => {
                    assert_eq!(v["reason"], "held", "{v}");
                    skipped_held += 1;
                    decided += 1;
                }
                _ => {}
            }
        }
    }
    one.kill().await;
    two.kill().await;
    assert_eq!(acted.len(), 6, "{acted:?}");
    assert_eq!(skipped_held, 6);
    assert!(starts(&read_log(&log)).values().all(|&n| n == 1));
    // The claims stay with who acted (they end at their lease).
    for (agent, holder) in &acted {
        let s = server.cli(&["status", agent, "-o", "json"]).await;
        assert_eq!(s.expect_code(0).json()["claim"]["holder"], *holder);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_program_is_killed_at_the_timeout() {
    let server = Server::start(&[]).await;
    faulty(&server, &["h-1"]).await;
    let (dir, _) = scratch();
    let pid_file = dir.path().join("pid");
    let script = format!("echo $$ > {}; echo hanging; sleep 60", pid_file.display());
    let once = server
        .cli(&[
            "remediate",
            "-o",
            "json",
            "--once",
            "--settle",
            "0s",
            "--timeout",
            "1s",
            "--exec",
            "/bin/sh",
            "-c",
            &script,
        ])
        .await;
    once.expect_code(9);
    let acted: Value = once
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["type"] == "acted")
        .expect("an acted decision");
    assert_eq!(acted["result"], "timed out", "{acted}");
    assert_eq!(acted["signal"], 15, "{acted}");
    assert_eq!(acted["output"], "hanging\n");
    let ms = acted["duration_ms"].as_u64().unwrap();
    assert!((1000..5000).contains(&ms), "{ms} ms");
    let pid = std::fs::read_to_string(&pid_file).expect("the pid");
    assert!(
        !Path::new(&format!("/proc/{}", pid.trim())).exists()
            || std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
                .unwrap_or_default()
                .contains(") Z "),
        "the program outlived its timeout"
    );
    let act = activity(&server, "h-1").await;
    assert_eq!(act[0]["remediation"]["result"], "timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_mid_run_loses_no_claim_and_causes_no_double_action() {
    let mut server = Server::start(&[]).await;
    faulty(&server, &["p-1", "p-2", "p-3"]).await;
    let (_dir, log) = scratch();
    let program = logging_program(&log, "2", 0);
    let proxy = Proxy::start(server.addr()).await;
    let mut r = Remediator::start(
        &proxy.url(),
        &[
            "--settle",
            "0s",
            "--cooldown",
            "1h",
            "--rate",
            "100/s",
            "--holder",
            "steady",
        ],
        &strs(&program),
    );
    for _ in 0..3 {
        r.until(|v| v["type"] == "acting").await;
    }
    // The programs run; the server dies and comes back on its data.
    proxy.set_target(None);
    server.kill9().await;
    proxy.cut();
    server.restart().await;
    proxy.set_target(Some(server.addr()));

    let acted = r.acted(3).await;
    for a in &acted {
        assert_eq!(a["result"], "succeeded", "{a}");
        assert_eq!(a["recorded"], true, "{a}");
    }
    // Another remediator finds every claim still held.
    let other = server
        .cli(&[
            "remediate",
            "-o",
            "json",
            "--once",
            "--settle",
            "0s",
            "--holder",
            "newcomer",
            "--exec",
            "/bin/true",
        ])
        .await;
    other.expect_code(0);
    let held = other
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["type"] == "skipped" && v["reason"] == "held" && v["holder"] == "steady")
        .count();
    assert_eq!(held, 3, "{}", other.stdout);
    // The first remediator, resumed, started nothing again.
    server.report("p-4", "starting", &["--at", "-7h"]).await;
    let fourth = r.acted(1).await.remove(0);
    assert_eq!(fourth["agent_id"], "p-4");
    r.kill().await;
    let log = read_log(&log);
    assert!(starts(&log).values().all(|&n| n == 1), "{log:?}");
    for agent in ["p-1", "p-2", "p-3"] {
        let act = activity(&server, agent).await;
        assert_eq!(act.len(), 1, "{agent}: {act:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_acts_on_nothing() {
    let server = Server::start(&[]).await;
    faulty(&server, &["d-1", "d-2"]).await;
    let (_dir, log) = scratch();
    let program = logging_program(&log, "0", 0);
    let mut args = vec![
        "remediate",
        "-o",
        "json",
        "--dry-run",
        "--once",
        "--settle",
        "0s",
        "--exec",
    ];
    args.extend(strs(&program));
    let plan = server.cli(&args).await;
    plan.expect_code(0);
    let acting: Vec<Value> = plan
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["type"] == "acting")
        .collect();
    assert_eq!(acting.len(), 2, "{}", plan.stdout);
    for a in &acting {
        assert_eq!(a["dry_run"], true);
        assert!(
            a["program"]
                .as_str()
                .unwrap()
                .ends_with(a["agent_id"].as_str().unwrap())
        );
    }
    assert!(!log.exists(), "a program ran");
    for agent in ["d-1", "d-2"] {
        let s = server.cli(&["status", agent, "-o", "json"]).await;
        assert_eq!(s.expect_code(0).json()["claim"], Value::Null);
        assert!(activity(&server, agent).await.is_empty());
    }
    // People read it too.
    let people = server
        .cli(&[
            "remediate",
            "--dry-run",
            "--once",
            "--settle",
            "0s",
            "--exec",
            "restart",
            "{id}",
        ])
        .await;
    let line = people
        .expect_code(0)
        .stdout
        .lines()
        .find(|l| l.starts_with("would act on d-1 "))
        .unwrap_or_else(|| panic!("{}", people.stdout))
        .to_owned();
    assert!(
        line.starts_with("would act on d-1 (no data sent to server, faulty for ")
            && line.ends_with("): restart d-1"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_under_maintenance_is_never_acted_on_until_its_mark_ends() {
    let server = Server::start(&[]).await;
    faulty(&server, &["m-1", "n-1"]).await;
    server
        .cli(&[
            "maintenance",
            "set",
            "m-1",
            "--reason",
            "disk swap",
            "--for",
            "3s",
        ])
        .await
        .expect_code(0);
    let until = {
        let s = server.cli(&["status", "m-1", "-o", "json"]).await;
        micros(
            s.expect_code(0).json()["maintenance"]["until"]
                .as_str()
                .unwrap(),
        )
    };
    let (_dir, log) = scratch();
    let program = logging_program(&log, "0", 0);
    let mut r = Remediator::start(
        &server.url(),
        &["--settle", "0s", "--cooldown", "1h", "--rate", "100/s"],
        &strs(&program),
    );
    let first = r.acted(1).await.remove(0);
    assert_eq!(first["agent_id"], "n-1", "{first}");
    // The mark ends by itself: m-1 is a candidate again, and only then.
    let second = r.acted(1).await.remove(0);
    assert_eq!(second["agent_id"], "m-1", "{second}");
    r.kill().await;
    let started = micros(second["started"].as_str().unwrap());
    assert!(
        started >= until,
        "acted {}ms before the mark ended",
        (until - started) / 1000
    );
    assert_eq!(starts(&read_log(&log)).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_new_actions_and_waits_for_the_programs_running() {
    let server = Server::start(&[]).await;
    faulty(&server, &["g-1", "g-2"]).await;
    let (_dir, log) = scratch();
    let program = logging_program(&log, "1", 0);
    let mut r = Remediator::start(
        &server.url(),
        &["--settle", "0s", "--concurrency", "1", "--rate", "100/s"],
        &strs(&program),
    );
    let acting = r.until(|v| v["type"] == "acting").await;
    let pid = r.child.id().expect("running").to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("run kill");
    assert!(killed.success());
    let (code, seen) = r.exit().await;
    assert_eq!(code, Some(0), "{seen:#?}");
    let types: Vec<&str> = seen.iter().map(|v| v["type"].as_str().unwrap()).collect();
    let stop = types
        .iter()
        .position(|t| *t == "stopping")
        .expect("stopping");
    assert_eq!(seen[stop]["running"], 1, "{seen:#?}");
    // The program running ended and was recorded; the other agent was
    // not started.
    let acted: Vec<&Value> = seen.iter().filter(|v| v["type"] == "acted").collect();
    assert_eq!(acted.len(), 1, "{seen:#?}");
    assert_eq!(acted[0]["agent_id"], acting["agent_id"]);
    assert_eq!(acted[0]["result"], "succeeded");
    assert_eq!(acted[0]["recorded"], true);
    assert_eq!(
        types.iter().filter(|t| **t == "acting").count(),
        1,
        "{seen:#?}"
    );
    assert_eq!(starts(&read_log(&log)).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_security_on_only_an_orchestrator_remediates() {
    let dir = tempfile::tempdir().expect("a scratch folder");
    let tokens = dir.path().join("tokens.toml").display().to_string();
    let mut secrets = BTreeMap::new();
    for (name, role) in [
        ("ops", "admin"),
        ("rem", "orchestrator"),
        ("look", "reader"),
    ] {
        let made = fleet_health_e2e::cli(&[
            "token",
            "create",
            name,
            "--role",
            role,
            "--tokens-file",
            &tokens,
        ])
        .await;
        secrets.insert(name, made.expect_code(0).stdout.trim().to_owned());
    }
    let server = Server::start(&["--tokens", &tokens]).await;
    server
        .cli(&[
            "--token",
            &secrets["ops"],
            "report",
            "--agent",
            "z-1",
            "starting",
            "--at",
            "-7h",
        ])
        .await
        .expect_code(0);
    let remediate = |who: &str| {
        vec![
            "--token".to_owned(),
            secrets[who].clone(),
            "remediate".into(),
            "--once".into(),
            "--settle".into(),
            "0s".into(),
            "--holder".into(),
            format!("as-{who}"),
            "--exec".into(),
            "/bin/true".into(),
        ]
    };
    // A reader may watch, not claim: exit 7, saying what is needed.
    let reader = server.cli(&strs(&remediate("look"))).await;
    reader.expect_code(7);
    assert!(reader.stderr.contains("orchestrator"), "{}", reader.stderr);
    let orchestrator = server.cli(&strs(&remediate("rem"))).await;
    orchestrator.expect_code(0);
    assert!(
        orchestrator.stdout.contains("acted on z-1: succeeded"),
        "{}",
        orchestrator.stdout
    );
    let history = server
        .cli(&["--token", &secrets["look"], "history", "z-1", "-o", "json"])
        .await;
    let history = history.expect_code(0).json();
    let act = &history["activity"][0];
    assert_eq!(act["holder"], "as-rem", "{history}");
    assert!(act["by"].as_str().unwrap().contains("rem"), "{history}");
}
