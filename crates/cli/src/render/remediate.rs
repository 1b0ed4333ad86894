//! What `remediate` tells: one line per decision for people, one JSON object
//! per decision for scripts (`-o json` or `-o ndjson`), and the answer of
//! `remediate clear`.

use std::io::{self, Write};

use fleet_health_client::{ClaimRefusal, RemediationResult, Time, Why};
use serde::Serialize;

use super::time::{format_time, human_duration};
use super::{Style, write_json, write_ndjson};
use crate::remediate::Event;
use crate::remediate::engine::{Skip, StormCause};

/// One decision as NDJSON.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum EventJson<'a> {
    Ready {
        faulty: u64,
        holder: &'a str,
    },
    Acting {
        agent_id: &'a str,
        why: &'a str,
        program: &'a str,
        faulty_since: String,
        dry_run: bool,
    },
    Acted {
        agent_id: &'a str,
        why: &'a str,
        program: &'a str,
        result: &'static str,
        exit_code: Option<i32>,
        signal: Option<i32>,
        started: String,
        finished: String,
        duration_ms: u128,
        output: &'a str,
        recorded: bool,
        record_error: Option<&'a str>,
    },
    Skipped {
        agent_id: &'a str,
        why: &'static str,
        reason: &'static str,
        detail: String,
        holder: Option<&'a str>,
        until: Option<String>,
    },
    GaveUp {
        agent_id: &'a str,
        why: &'static str,
        reason: &'a str,
        recorded: bool,
        record_error: Option<&'a str>,
    },
    Storm {
        held: bool,
        cause: Option<&'static str>,
        detail: Option<String>,
    },
    Stopping {
        running: usize,
    },
}

fn why_words(why: Option<Why>) -> &'static str {
    why.map_or("", Why::as_str)
}

/// The short word for a skip, as JSON's `reason` gives it.
fn skip_reason(skip: &Skip) -> &'static str {
    match skip {
        Skip::Refused {
            refusal: ClaimRefusal::Held,
            ..
        } => "held",
        Skip::Refused {
            refusal: ClaimRefusal::Maintenance,
            ..
        }
        | Skip::Maintenance => "maintenance",
        Skip::Refused {
            refusal: ClaimRefusal::GivenUp,
            ..
        }
        | Skip::GivenUp { .. } => "given_up",
        Skip::Refused {
            refusal: ClaimRefusal::NotFaulty,
            ..
        }
        | Skip::NoLongerFaulty => "not_faulty",
        Skip::Refused { .. } => "refused",
        Skip::Cooldown { .. } => "cooldown",
        Skip::Storm => "storm",
        Skip::NotSettled { .. } => "not_settled",
        Skip::ClaimFailed(_) => "claim_failed",
    }
}

/// A skip in words.
fn skip_detail(skip: &Skip, now: Time) -> String {
    match skip {
        Skip::Refused {
            refusal: ClaimRefusal::Held,
            holder,
            until,
        } => {
            let by = holder.as_deref().unwrap_or("another remediator");
            match until {
                Some(u) => format!(
                    "claimed by {by} (until {}, in {})",
                    format_time(*u),
                    human_duration(u.since(now))
                ),
                None => format!("claimed by {by}"),
            }
        }
        Skip::Refused { refusal, .. } => {
            format!("the server refused the claim: {}", refusal.as_str())
        }
        Skip::Cooldown { last, until } => format!(
            "cooldown: remediated {} ago; not before {} (in {})",
            human_duration(now.since(*last)),
            format_time(*until),
            human_duration(until.since(now))
        ),
        Skip::Storm => "the storm stop holds every action".into(),
        Skip::NotSettled { faulty_for } => {
            format!(
                "faulty for only {}, under --settle",
                human_duration(*faulty_for)
            )
        }
        Skip::Maintenance => "under maintenance".into(),
        Skip::GivenUp { reason } => {
            format!("given up ({reason}); `fleet-health remediate clear ID` to act again")
        }
        Skip::NoLongerFaulty => "no longer faulty".into(),
        Skip::ClaimFailed(e) => format!("the claim failed: {e}; trying again"),
    }
}

fn storm_detail(cause: &StormCause) -> (&'static str, String) {
    match cause {
        StormCause::Server { faulty, active } => (
            "server",
            format!("the server's storm flag is up ({faulty} of {active} active agents faulty)"),
        ),
        StormCause::Outside { why, count, faulty } => (
            "outside",
            format!(
                "{count} of {faulty} faulty agents say \"{}\", which points away from the agents",
                why.as_str()
            ),
        ),
    }
}

fn ran_words(result: RemediationResult, exit_code: Option<i32>, signal: Option<i32>) -> String {
    let how = match (exit_code, signal) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("signal {s}"),
        (None, None) => String::new(),
    };
    if how.is_empty() {
        result.as_str().to_owned()
    } else {
        format!("{} ({how})", result.as_str())
    }
}

/// A decision as one NDJSON line.
pub fn event_ndjson(out: &mut dyn Write, event: &Event, now: Time) -> io::Result<()> {
    let json = match event {
        Event::Ready { faulty, holder } => EventJson::Ready {
            faulty: *faulty,
            holder,
        },
        Event::Acting {
            agent,
            why,
            program,
            faulty_since,
            dry_run,
        } => EventJson::Acting {
            agent_id: agent,
            why,
            program,
            faulty_since: format_time(*faulty_since),
            dry_run: *dry_run,
        },
        Event::Acted {
            agent,
            why,
            program,
            ran,
            recorded,
        } => EventJson::Acted {
            agent_id: agent,
            why,
            program,
            result: ran.result.as_str(),
            exit_code: ran.exit_code,
            signal: ran.signal,
            started: format_time(ran.started),
            finished: format_time(ran.finished),
            duration_ms: ran.duration.as_millis(),
            output: &ran.output,
            recorded: recorded.is_ok(),
            record_error: recorded.as_ref().err().map(String::as_str),
        },
        Event::Skipped { agent, why, skip } => {
            let (holder, until) = match skip {
                Skip::Refused { holder, until, .. } => (holder.as_deref(), *until),
                Skip::Cooldown { until, .. } => (None, Some(*until)),
                _ => (None, None),
            };
            EventJson::Skipped {
                agent_id: agent,
                why: why_words(*why),
                reason: skip_reason(skip),
                detail: skip_detail(skip, now),
                holder,
                until: until.map(format_time),
            }
        }
        Event::GaveUp {
            agent,
            why,
            reason,
            recorded,
        } => EventJson::GaveUp {
            agent_id: agent,
            why: why_words(*why),
            reason,
            recorded: recorded.is_ok(),
            record_error: recorded.as_ref().err().map(String::as_str),
        },
        Event::StormHeld(cause) => {
            let (cause, detail) = storm_detail(cause);
            EventJson::Storm {
                held: true,
                cause: Some(cause),
                detail: Some(detail),
            }
        }
        Event::StormCleared => EventJson::Storm {
            held: false,
            cause: None,
            detail: None,
        },
        Event::Stopping { running } => EventJson::Stopping { running: *running },
    };
    write_ndjson(out, &json)
}

/// A decision as one line for people.
pub fn event_line(style: Style, event: &Event, now: Time) -> String {
    match event {
        Event::Ready { faulty, holder } => format!(
            "watching: {faulty} faulty agent{} now; acting as {holder}",
            if *faulty == 1 { "" } else { "s" }
        ),
        Event::Acting {
            agent,
            why,
            program,
            faulty_since,
            dry_run,
        } => format!(
            "{} {agent} ({why}, faulty for {}): {program}",
            if *dry_run {
                "would act on"
            } else {
                "acting on"
            },
            human_duration(now.since(*faulty_since))
        ),
        Event::Acted {
            agent,
            program: _,
            why: _,
            ran,
            recorded,
        } => {
            let mut line = format!(
                "acted on {agent}: {} in {}",
                ran_words(ran.result, ran.exit_code, ran.signal),
                human_ms(ran.duration)
            );
            if ran.result != RemediationResult::Succeeded
                && let Some(last) = ran.output.lines().rev().find(|l| !l.trim().is_empty())
            {
                line.push_str(&format!(": {}", last.trim()));
            }
            if let Err(e) = recorded {
                line.push_str(&format!(" (not recorded on the server: {e})"));
            }
            if ran.result == RemediationResult::Succeeded {
                line
            } else {
                style.warn(&line)
            }
        }
        Event::Skipped { agent, why, skip } => {
            let why = why.map_or(String::new(), |w| format!(" ({})", w.as_str()));
            format!("skipped {agent}{why}: {}", skip_detail(skip, now))
        }
        Event::GaveUp {
            agent,
            why,
            reason,
            recorded,
        } => {
            let why = why.map_or(String::new(), |w| format!(" ({})", w.as_str()));
            let mut line = format!(
                "gave up on {agent}{why}: {reason}; left alone until `fleet-health remediate clear {agent}`"
            );
            if let Err(e) = recorded {
                line.push_str(&format!(" (not recorded on the server: {e})"));
            }
            style.warn(&line)
        }
        Event::StormHeld(cause) => style.warn(&format!(
            "storm: {}; starting nothing until it clears (--allow-mass-restart overrides)",
            storm_detail(cause).1
        )),
        Event::StormCleared => "storm cleared: acting again".to_owned(),
        Event::Stopping { running: 0 } => "stopping: no program running".to_owned(),
        Event::Stopping { running } => format!(
            "stopping: no new action; waiting for {running} running program{} (again to kill them)",
            if *running == 1 { "" } else { "s" }
        ),
    }
}

/// A duration with milliseconds under a minute (`1.25s`), else as
/// [`human_duration`].
fn human_ms(d: std::time::Duration) -> String {
    if d.as_secs() < 60 {
        format!("{:.2}s", d.as_secs_f64())
    } else {
        human_duration(d)
    }
}

/// `remediate clear`'s answer.
#[derive(Debug, Serialize)]
struct ClearedJson<'a> {
    agent_id: &'a str,
    cleared: bool,
}

/// `remediate clear -o json`.
pub fn cleared_json(out: &mut dyn Write, agent: &str, cleared: bool) -> io::Result<()> {
    write_json(
        out,
        &ClearedJson {
            agent_id: agent,
            cleared,
        },
    )
}

/// `remediate clear` for people.
pub fn cleared_line(out: &mut dyn Write, agent: &str, cleared: bool) -> io::Result<()> {
    if cleared {
        writeln!(out, "cleared: remediators may act on {agent} again")
    } else {
        writeln!(out, "{agent} was not given up: nothing to clear")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::fixtures::{NOW, PLAIN, render, t};
    use super::*;
    use crate::remediate::runner::Ran;

    fn now() -> Time {
        t(NOW).unwrap()
    }

    fn acted(result: RemediationResult, code: Option<i32>, signal: Option<i32>) -> Event {
        Event::Acted {
            agent: "web-1".into(),
            why: "stuck at shutdown".into(),
            program: "systemctl restart agent@web-1".into(),
            ran: Ran {
                started: t(NOW - 2).unwrap(),
                finished: t(NOW).unwrap(),
                duration: Duration::from_millis(1500),
                result,
                exit_code: code,
                signal,
                output: "Job for agent@web-1.service failed.\n".into(),
            },
            recorded: Ok(()),
        }
    }

    #[test]
    fn each_decision_reads_as_one_line() {
        let acting = Event::Acting {
            agent: "web-1".into(),
            why: "stuck at shutdown".into(),
            program: "systemctl restart agent@web-1".into(),
            faulty_since: t(NOW - 125).unwrap(),
            dry_run: false,
        };
        assert_eq!(
            event_line(PLAIN, &acting, now()),
            "acting on web-1 (stuck at shutdown, faulty for 2m5s): systemctl restart agent@web-1"
        );
        assert_eq!(
            event_line(
                PLAIN,
                &acted(RemediationResult::Succeeded, Some(0), None),
                now()
            ),
            "acted on web-1: succeeded (exit 0) in 1.50s"
        );
        assert_eq!(
            event_line(
                PLAIN,
                &acted(RemediationResult::Failed, Some(1), None),
                now()
            ),
            "acted on web-1: failed (exit 1) in 1.50s: Job for agent@web-1.service failed."
        );
        assert_eq!(
            event_line(
                PLAIN,
                &acted(RemediationResult::TimedOut, None, Some(15)),
                now()
            ),
            "acted on web-1: timed out (signal 15) in 1.50s: Job for agent@web-1.service failed."
        );
        let held = Event::Skipped {
            agent: "web-2".into(),
            why: Some(Why::NotReporting),
            skip: Skip::Refused {
                refusal: ClaimRefusal::Held,
                holder: Some("ops-2:77".into()),
                until: t(NOW + 90),
            },
        };
        assert_eq!(
            event_line(PLAIN, &held, now()),
            "skipped web-2 (not reporting): claimed by ops-2:77 (until 2024-05-01T12:01:30Z, in 1m30s)"
        );
        let storm = Event::StormHeld(StormCause::Outside {
            why: Why::NoDataReceived,
            count: 40,
            faulty: 50,
        });
        assert_eq!(
            event_line(PLAIN, &storm, now()),
            "storm: 40 of 50 faulty agents say \"no data received from server\", which points away from the agents; starting nothing until it clears (--allow-mass-restart overrides)"
        );
    }

    #[test]
    fn each_decision_is_one_json_object() {
        let text = render(|out| {
            event_ndjson(out, &acted(RemediationResult::Failed, Some(3), None), now())?;
            event_ndjson(
                out,
                &Event::Skipped {
                    agent: "web-3".into(),
                    why: Some(Why::StuckAtShutdown),
                    skip: Skip::Cooldown {
                        last: t(NOW - 60).unwrap(),
                        until: t(NOW + 540).unwrap(),
                    },
                },
                now(),
            )?;
            event_ndjson(out, &Event::StormCleared, now())
        });
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines[0],
            serde_json::json!({
                "type": "acted", "agent_id": "web-1", "why": "stuck at shutdown",
                "program": "systemctl restart agent@web-1", "result": "failed",
                "exit_code": 3, "signal": null,
                "started": "2024-05-01T11:59:58Z", "finished": "2024-05-01T12:00:00Z",
                "duration_ms": 1500, "output": "Job for agent@web-1.service failed.\n",
                "recorded": true, "record_error": null
            })
        );
        assert_eq!(lines[1]["reason"], "cooldown");
        assert_eq!(lines[1]["until"], "2024-05-01T12:09:00Z");
        assert_eq!(
            lines[2],
            serde_json::json!({"type": "storm", "held": false, "cause": null, "detail": null})
        );
    }
}
