//! Runs one remediation program: without a shell (or with `/bin/sh -c` when
//! asked), in its own process group, stdin from /dev/null, stdout and stderr
//! captured together with only their last lines kept (at most
//! [`OUTPUT_LIMIT`] bytes). At the timeout the whole group gets SIGTERM,
//! then SIGKILL after a grace period, so that a program's children die with
//! it. Dropping a run under way kills the group too.

use std::collections::VecDeque;
use std::process::Stdio;
use std::time::Duration;

use fleet_health_client::{RemediationResult, Time};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// The most output kept: the end of it, cut at a line start.
pub const OUTPUT_LIMIT: usize = 4096;

/// How long the output may stay open after the program exited (a child it
/// left behind holding the pipe) before the remediator stops reading.
const DRAIN: Duration = Duration::from_millis(200);

/// What to run, before `{id}` and `{why}` are replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Program {
    /// A program and its arguments, run directly.
    Exec(Vec<String>),
    /// A string for `/bin/sh -c`; `{id}` and `{why}` are replaced by
    /// single-quoted words.
    Shell(String),
}

impl Program {
    /// The command line for one agent: the argument vector to run, and the
    /// words to record.
    pub fn for_agent(&self, id: &str, why: &str) -> (Vec<String>, String) {
        match self {
            Program::Exec(argv) => {
                let argv: Vec<String> = argv
                    .iter()
                    .map(|a| a.replace("{id}", id).replace("{why}", why))
                    .collect();
                let shown = argv.join(" ");
                (argv, shown)
            }
            Program::Shell(script) => {
                let script = script
                    .replace("{id}", &shell_quote(id))
                    .replace("{why}", &shell_quote(why));
                (vec!["/bin/sh".into(), "-c".into(), script.clone()], script)
            }
        }
    }
}

/// A word for `sh`: single-quoted, with `'` written as `'\''`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// One program to run.
#[derive(Clone, Debug)]
pub struct Job {
    /// The program and its arguments (already substituted); not empty.
    pub argv: Vec<String>,
    /// Variables added to the remediator's environment.
    pub env: Vec<(String, String)>,
    /// Variables taken out of it (credentials the program has no need of).
    pub env_remove: Vec<String>,
    /// How long it may run.
    pub timeout: Duration,
    /// How long after SIGTERM before SIGKILL.
    pub grace: Duration,
}

/// How a run went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ran {
    /// When it started.
    pub started: Time,
    /// When it ended.
    pub finished: Time,
    /// How long it ran.
    pub duration: Duration,
    /// Succeeded, failed, timed out, not started.
    pub result: RemediationResult,
    /// Its exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// The last lines of its stdout and stderr together, or why it could not
    /// start.
    pub output: String,
}

/// The environment for an agent: `FLEET_HEALTH_AGENT_ID`,
/// `FLEET_HEALTH_WHY` and `FLEET_HEALTH_LABEL_<KEY>` for each label (the key
/// upper-cased, every character but A-Z and 0-9 as `_`).
pub fn agent_env<'a>(
    id: &str,
    why: &str,
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Vec<(String, String)> {
    let mut env = vec![
        ("FLEET_HEALTH_AGENT_ID".to_owned(), id.to_owned()),
        ("FLEET_HEALTH_WHY".to_owned(), why.to_owned()),
    ];
    for (k, v) in labels {
        let key: String = k
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        env.push((format!("FLEET_HEALTH_LABEL_{key}"), v.clone()));
    }
    env
}

/// Kills a process group when dropped, unless disarmed: a run dropped half
/// way (the remediator interrupted) leaves nothing behind.
struct GroupGuard {
    pgid: Option<rustix::process::Pid>,
}

impl GroupGuard {
    fn signal(&self, signal: rustix::process::Signal) {
        if let Some(pgid) = self.pgid {
            // The group may be gone already: nothing to do then.
            let _ = rustix::process::kill_process_group(pgid, signal);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(rustix::process::Signal::KILL);
    }
}

/// Runs a job to its end (or its timeout) and says how it went.
pub async fn run(job: &Job) -> Ran {
    let started = fleet_health_client::now();
    let clock = tokio::time::Instant::now();
    let not_started = |output: String| {
        let finished = fleet_health_client::now();
        Ran {
            started,
            finished,
            duration: clock.elapsed(),
            result: RemediationResult::NotStarted,
            exit_code: None,
            signal: None,
            output,
        }
    };
    let Some((program, args)) = job.argv.split_first() else {
        return not_started("no program to run".into());
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for key in &job.env_remove {
        command.env_remove(key);
    }
    command.envs(job.env.iter().map(|(k, v)| (k, v)));
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return not_started(format!("cannot start {program}: {e}")),
    };
    // The child leads its own group: its ID is the group's.
    let mut guard = GroupGuard {
        pgid: child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(i32::try_from(id).ok()?)),
    };
    let mut tail = Tail::default();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let deadline = clock + job.timeout;
    let mut timed_out = false;
    let mut killed = false;
    let mut buf_out = [0u8; 4096];
    let mut buf_err = [0u8; 4096];
    let status = loop {
        tokio::select! {
            n = read_some(&mut stdout, &mut buf_out) => match n {
                Some(n) => tail.push(&buf_out[..n]),
                None => stdout = None,
            },
            n = read_some(&mut stderr, &mut buf_err) => match n {
                Some(n) => tail.push(&buf_err[..n]),
                None => stderr = None,
            },
            status = child.wait() => break status,
            () = tokio::time::sleep_until(deadline), if !timed_out => {
                timed_out = true;
                guard.signal(rustix::process::Signal::TERM);
            }
            () = tokio::time::sleep_until(deadline + job.grace), if timed_out && !killed => {
                killed = true;
                guard.signal(rustix::process::Signal::KILL);
            }
        }
    };
    // What it wrote just before it ended, unless a child it left holds the
    // pipes open.
    let drain = tokio::time::sleep(DRAIN);
    tokio::pin!(drain);
    while stdout.is_some() || stderr.is_some() {
        tokio::select! {
            n = read_some(&mut stdout, &mut buf_out) => match n {
                Some(n) => tail.push(&buf_out[..n]),
                None => stdout = None,
            },
            n = read_some(&mut stderr, &mut buf_err) => match n {
                Some(n) => tail.push(&buf_err[..n]),
                None => stderr = None,
            },
            () = &mut drain => break,
        }
    }
    let finished = fleet_health_client::now();
    let duration = clock.elapsed();
    if !timed_out {
        // Its children (if any) may go on: the program ended on its own.
        guard.pgid = None;
    }
    let (exit_code, signal) = match &status {
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            (s.code(), s.signal())
        }
        Err(_) => (None, None),
    };
    let result = match (&status, timed_out) {
        (_, true) => RemediationResult::TimedOut,
        (Ok(s), false) if s.success() => RemediationResult::Succeeded,
        _ => RemediationResult::Failed,
    };
    let mut output = tail.into_string();
    if let Err(e) = &status {
        output.push_str(&format!("(waiting for the program failed: {e})\n"));
    }
    Ran {
        started,
        finished,
        duration,
        result,
        exit_code,
        signal,
        output,
    }
}

/// Reads some bytes from a pipe; `None` at its end (or an error), and
/// never ready for a pipe already closed.
async fn read_some<R: AsyncRead + Unpin>(pipe: &mut Option<R>, buf: &mut [u8]) -> Option<usize> {
    match pipe {
        Some(p) => match p.read(buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(n),
        },
        None => std::future::pending().await,
    }
}

/// The last [`OUTPUT_LIMIT`] bytes of a stream.
#[derive(Debug, Default)]
struct Tail {
    bytes: VecDeque<u8>,
    cut: bool,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        self.bytes.extend(data);
        while self.bytes.len() > OUTPUT_LIMIT {
            self.bytes.pop_front();
            self.cut = true;
        }
    }

    /// The text kept: when the start was cut, from the first whole line on
    /// (unless there is no line end at all); invalid UTF-8 replaced.
    fn into_string(self) -> String {
        let bytes: Vec<u8> = self.bytes.into();
        let start = if self.cut {
            bytes
                .iter()
                .position(|&b| b == b'\n')
                .filter(|&i| i + 1 < bytes.len())
                .map_or(0, |i| i + 1)
        } else {
            0
        };
        let text = String::from_utf8_lossy(&bytes[start..]);
        // A replacement character is 3 bytes: cut again to stay in bounds.
        let mut text = text.into_owned();
        while text.len() > OUTPUT_LIMIT {
            let mut i = text.len() - OUTPUT_LIMIT;
            while !text.is_char_boundary(i) {
                i += 1;
            }
            text.drain(..i);
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(script: &str, timeout: Duration) -> Job {
        Job {
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec![],
            env_remove: vec![],
            timeout,
            grace: Duration::from_millis(300),
        }
    }

    fn alive(pid: i32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ")
    }

    #[tokio::test]
    async fn a_program_that_exits_is_recorded_with_its_code_and_output() {
        let ran = run(&job(
            "echo out; echo err >&2; exit 3",
            Duration::from_secs(10),
        ))
        .await;
        assert_eq!(ran.result, RemediationResult::Failed);
        assert_eq!(ran.exit_code, Some(3));
        assert_eq!(ran.signal, None);
        assert!(ran.output.contains("out\n"), "{:?}", ran.output);
        assert!(ran.output.contains("err\n"), "{:?}", ran.output);
        assert!(ran.finished >= ran.started);
        let ok = run(&job("true", Duration::from_secs(10))).await;
        assert_eq!(ok.result, RemediationResult::Succeeded);
        assert_eq!(ok.exit_code, Some(0));
    }

    #[tokio::test]
    async fn only_the_last_lines_are_kept() {
        let ran = run(&job(
            "i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); done",
            Duration::from_secs(10),
        ))
        .await;
        assert_eq!(ran.result, RemediationResult::Succeeded);
        assert!(ran.output.len() <= OUTPUT_LIMIT, "{}", ran.output.len());
        assert!(ran.output.len() > OUTPUT_LIMIT - 20, "{}", ran.output.len());
        assert!(ran.output.starts_with("line "), "{:?}", &ran.output[..20]);
        assert!(ran.output.ends_with("line 1999\n"));
    }

    #[tokio::test]
    async fn a_hanging_program_and_its_children_are_killed_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        // A child in the background, and a shell that waits for it.
        let script = format!(
            "sleep 60 & echo $! > {p}; echo $$ >> {p}; echo started; wait",
            p = pids.display()
        );
        let clock = std::time::Instant::now();
        let ran = run(&job(&script, Duration::from_millis(500))).await;
        let took = clock.elapsed();
        assert_eq!(ran.result, RemediationResult::TimedOut);
        assert_eq!(ran.signal, Some(15), "{ran:?}");
        assert!(ran.output.contains("started"), "{:?}", ran.output);
        assert!(took >= Duration::from_millis(500), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        for pid in std::fs::read_to_string(&pids).unwrap().lines() {
            let pid: i32 = pid.parse().unwrap();
            // Signalled: gone as soon as the kernel has finished it off.
            let gone = async {
                while alive(pid) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(5), gone)
                .await
                .unwrap_or_else(|_| panic!("process {pid} outlived the timeout"));
        }
    }

    #[tokio::test]
    async fn a_program_that_ignores_sigterm_gets_sigkill_after_the_grace() {
        let clock = std::time::Instant::now();
        let ran = run(&job(
            "trap '' TERM; echo ready; while :; do sleep 0.05; done",
            Duration::from_millis(300),
        ))
        .await;
        assert_eq!(ran.result, RemediationResult::TimedOut);
        assert_eq!(ran.signal, Some(9), "{ran:?}");
        let took = clock.elapsed();
        assert!(took >= Duration::from_millis(600), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[tokio::test]
    async fn a_missing_program_is_not_started() {
        let ran = run(&Job {
            argv: vec!["/nonexistent/restart-agent".into()],
            ..job("", Duration::from_secs(1))
        })
        .await;
        assert_eq!(ran.result, RemediationResult::NotStarted);
        assert!(ran.output.contains("cannot start"), "{}", ran.output);
    }

    #[tokio::test]
    async fn the_agent_reaches_the_program_in_arguments_and_environment() {
        let labels: fleet_health_client::Labels = [
            ("site".to_owned(), "eu-1".to_owned()),
            ("k8s.io/app".to_owned(), "agent".to_owned()),
        ]
        .into();
        let program = Program::Exec(vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo \"$0 $1|$FLEET_HEALTH_AGENT_ID|$FLEET_HEALTH_WHY|$FLEET_HEALTH_LABEL_SITE|$FLEET_HEALTH_LABEL_K8S_IO_APP|${FLEET_HEALTH_TOKEN-unset}\"".into(),
            "{id}".into(),
            "why={why}".into(),
        ]);
        let (argv, shown) = program.for_agent("web-1", "stuck at shutdown");
        assert!(shown.ends_with("web-1 why=stuck at shutdown"), "{shown}");
        let ran = run(&Job {
            argv,
            env: agent_env("web-1", "stuck at shutdown", &labels),
            env_remove: vec!["FLEET_HEALTH_TOKEN".into()],
            ..job("", Duration::from_secs(10))
        })
        .await;
        assert_eq!(
            ran.output,
            "web-1 why=stuck at shutdown|web-1|stuck at shutdown|eu-1|agent|unset\n"
        );
        // In a shell string, the words are quoted.
        let (argv, shown) =
            Program::Shell("echo {id} {why}".into()).for_agent("web-1", "it's stuck");
        assert_eq!(shown, r"echo 'web-1' 'it'\''s stuck'");
        let ran = run(&Job {
            argv,
            ..job("", Duration::from_secs(10))
        })
        .await;
        assert_eq!(ran.output, "web-1 it's stuck\n");
    }
}
