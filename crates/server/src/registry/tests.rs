//! The registry's behaviour through its public handle.

use std::time::Duration;

use super::*;
use crate::clock::ManualClock;
use crate::model::{AgentEvent, AgentId, ByWhy, EventKind, Labels, MaintenanceFilter, State};

use crate::testing::{T0, t};

fn setup() -> (Registry, ManualClock) {
    let clock = ManualClock::new(t(T0));
    let reg = Registry::new(
        FleetRules::default(),
        Limits::default(),
        Arc::new(clock.clone()),
        Arc::new(Metrics::default()),
    );
    (reg, clock)
}

fn id(s: &str) -> AgentId {
    AgentId::parse(s).expect("valid id")
}

fn ev(seq: u64, kind: EventKind, at: Option<i64>) -> AgentEvent {
    AgentEvent {
        seq,
        kind,
        time: at.map(t),
    }
}

fn healthy_start(reg: &Registry, name: &str) -> Session {
    let Connected {
        session: s,
        last_applied_seq: _,
        ..
    } = reg.connect(&id(name), 7, Labels::new()).expect("connects");
    let applied = reg
        .apply(
            &s,
            &[
                ev(1, EventKind::Starting, None),
                ev(2, EventKind::ServerDataSent, None),
                ev(3, EventKind::ServerDataReceived, None),
            ],
        )
        .expect("applies");
    assert_eq!(applied.applied_through, 3);
    s
}

#[test]
fn a_new_agent_is_faulty_until_it_starts() {
    let (reg, _) = setup();
    let Connected {
        session: s,
        last_applied_seq: last,
        ..
    } = reg.connect(&id("a"), 1, Labels::new()).expect("connects");
    assert_eq!(last, 0);
    assert_eq!(
        reg.get(&id("a"), None).expect("known").why,
        Why::NoDataReceived
    );
    reg.apply(&s, &[ev(1, EventKind::Starting, None)])
        .expect("applies");
    assert_eq!(reg.get(&id("a"), None).expect("known").why, Why::AllIsOk);
    let h = reg.history(&id("a")).expect("known");
    assert_eq!(h.len(), 2);
    assert_eq!(h[0].from, None);
    assert_eq!(h[1].to, Why::AllIsOk);
}

#[test]
fn resent_events_are_applied_once() {
    let (reg, _) = setup();
    let s = healthy_start(&reg, "a");
    let again = reg
        .apply(
            &s,
            &[
                ev(2, EventKind::Unregistered, None),
                ev(4, EventKind::Heartbeat, None),
            ],
        )
        .expect("applies");
    assert_eq!(again.duplicates, 1);
    assert_eq!(again.applied, 1);
    assert_eq!(again.applied_through, 4);
    assert_eq!(reg.get(&id("a"), None).expect("known").why, Why::AllIsOk);
    // A reconnect with the same incarnation resumes; a new one starts over.
    let Connected {
        session: _,
        last_applied_seq: last,
        ..
    } = reg.connect(&id("a"), 7, Labels::new()).expect("connects");
    assert_eq!(last, 4);
    let Connected {
        session: s2,
        last_applied_seq: last,
        ..
    } = reg.connect(&id("a"), 8, Labels::new()).expect("connects");
    assert_eq!(last, 0);
    let fresh = reg
        .apply(&s2, &[ev(1, EventKind::Unregistered, None)])
        .expect("applies");
    assert_eq!(fresh.applied, 1);
    assert_eq!(
        reg.get(&id("a"), None).expect("known").why,
        Why::NotRegistered
    );
}

#[test]
fn a_newer_stream_supersedes_the_older() {
    let (reg, _) = setup();
    let old = healthy_start(&reg, "a");
    let Connected {
        session: _new,
        last_applied_seq: _,
        ..
    } = reg.connect(&id("a"), 7, Labels::new()).expect("connects");
    assert!(matches!(
        reg.apply(&old, &[ev(9, EventKind::Heartbeat, None)]),
        Err(RegistryError::Superseded(_))
    ));
    reg.disconnect(&old);
    assert_eq!(reg.connected(), 1);
}

#[test]
fn time_driven_transitions_happen_at_their_due_time() {
    let (reg, clock) = setup();
    let s = healthy_start(&reg, "a");
    let mut feed = reg.subscribe();
    // Heard every 4 minutes for almost 6 hours: the send window runs out.
    for i in 1..=89 {
        clock.advance(Duration::from_secs(240));
        reg.apply(&s, &[ev(3 + i, EventKind::ServerDataReceived, None)])
            .expect("applies");
    }
    // The heap wakes the agent lazily, at or before its real next change.
    assert!(reg.process_due().is_some_and(|due| due <= t(T0 + 21_600)));
    let v = reg.get(&id("a"), None).expect("known");
    assert_eq!((v.why, v.next_change), (Why::AllIsOk, Some(t(T0 + 21_600))));
    clock.set(t(T0 + 21_599));
    assert_eq!(reg.get(&id("a"), None).expect("known").why, Why::AllIsOk);
    clock.set(t(T0 + 21_600));
    reg.process_due();
    let v = reg.get(&id("a"), None).expect("known");
    assert_eq!((v.why, v.since), (Why::NoDataSent, t(T0 + 21_600)));
    match feed.try_recv().expect("a change was sent") {
        Change::Status { view, before, .. } => {
            assert_eq!(before, Some(Why::AllIsOk));
            assert_eq!(view.why, Why::NoDataSent);
        }
        other => panic!("unexpected {other:?}"),
    }
    // Then silence: not reporting at last_heard + 5 min.
    clock.set(t(T0 + 21_360 + 400));
    let v = reg.get(&id("a"), None).expect("known");
    assert_eq!((v.why, v.since), (Why::NotReporting, t(T0 + 21_360 + 300)));
    // The read settled nothing, yet the history shows the transition due.
    let due = reg.history(&id("a")).expect("known");
    assert_eq!(due.len(), 4);
    assert_eq!(reg.inner.agents.get("a").expect("known").history().len(), 3);
    // The timer task records it exactly as it was shown.
    reg.process_due();
    assert_eq!(reg.history(&id("a")).expect("known"), due);
    assert_eq!(reg.inner.agents.get("a").expect("known").history(), due);
}

#[tokio::test]
async fn the_timer_task_settles_what_is_due_when_it_stops() {
    let (reg, clock) = setup();
    let s = healthy_start(&reg, "a");
    reg.disconnect(&s);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = {
        let reg = reg.clone();
        tokio::spawn(async move {
            reg.run_scheduler(async move {
                let _ = stopped.await;
            })
            .await;
        })
    };
    // Let the task settle what is due and go to sleep until the silence
    // window ends; then move past it and stop the task in one step.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        reg.inner.agents.get("a").expect("known").why(),
        Why::AllIsOk
    );
    clock.advance(Duration::from_secs(400));
    stop.send(()).expect("task waits");
    task.await.expect("task ends");
    let a = reg.inner.agents.get("a").expect("known");
    assert_eq!((a.why(), a.since()), (Why::NotReporting, t(T0 + 300)));
}

#[test]
fn faulty_list_uses_the_index_and_pages() {
    let (reg, clock) = setup();
    for i in 0..30 {
        let name = format!("agent-{i:02}");
        if i % 3 == 0 {
            healthy_start(&reg, &name);
        } else {
            reg.connect(&id(&name), 1, Labels::new()).expect("connects");
        }
    }
    let sel = Selector {
        filter: StateFilter::Faulty,
        ..Selector::default()
    };
    let p1 = reg.list(&sel, None, None, 15);
    assert_eq!(p1.agents.len(), 15);
    assert!(p1.more);
    assert!(p1.storm.active);
    assert_eq!(p1.storm.dominant, Some((Why::NoDataReceived, 20)));
    let last = p1.agents.last().expect("non-empty").id.to_string();
    let p2 = reg.list(&sel, None, Some(&last), 15);
    assert_eq!(p2.agents.len(), 5);
    assert!(!p2.more);
    assert_eq!(p2.agents[0].id.as_str(), "agent-23");
    let healthy = reg.list(
        &Selector {
            filter: StateFilter::Healthy,
            ..Selector::default()
        },
        None,
        None,
        100,
    );
    assert_eq!(healthy.agents.len(), 10);
    // Forecast: in 6 hours the healthy ones (connected) miss their sends.
    let later = reg.list(&sel, Some(t(T0 + 21_600)), None, 100);
    assert_eq!(later.agents.len(), 30);
    assert_eq!(later.agents[0].why, Why::NoDataSent);
    assert_eq!(later.agents[0].since, t(T0 + 21_600));
    // Nothing was changed by the forecast.
    assert_eq!(reg.list(&sel, None, None, 100).agents.len(), 20);
    let _ = clock;
}

#[test]
fn stopped_agents_are_healthy_until_they_start_again() {
    let (reg, clock) = setup();
    let s = healthy_start(&reg, "a");
    reg.apply(
        &s,
        &[
            ev(4, EventKind::ShuttingDown, None),
            ev(5, EventKind::Stopped, None),
        ],
    )
    .expect("applies");
    reg.disconnect(&s);
    clock.advance(Duration::from_secs(8 * 86_400));
    let v = reg.get(&id("a"), None).expect("known");
    assert_eq!(v.why, Why::Stopped);
    assert_eq!(v.next_change, None);
}

#[test]
fn forgetting_removes_everything() {
    let (reg, _) = setup();
    healthy_start(&reg, "a");
    let last = reg.forget(&id("a")).expect("known");
    assert_eq!(last.why, Why::AllIsOk);
    assert!(reg.is_empty());
    assert_eq!(reg.counts().total(), 0);
    assert!(matches!(
        reg.get(&id("a"), None),
        Err(RegistryError::NotFound(_))
    ));
    assert!(matches!(
        reg.forget(&id("a")),
        Err(RegistryError::NotFound(_))
    ));
}

#[test]
fn the_agent_cap_is_enforced() {
    let clock = ManualClock::new(t(T0));
    let reg = Registry::new(
        FleetRules::default(),
        Limits {
            max_agents: 2,
            ..Limits::default()
        },
        Arc::new(clock),
        Arc::new(Metrics::default()),
    );
    reg.connect(&id("a"), 1, Labels::new()).expect("first");
    reg.connect(&id("b"), 1, Labels::new()).expect("second");
    assert_eq!(
        reg.connect(&id("c"), 1, Labels::new()).map(|_| ()),
        Err(RegistryError::TooManyAgents(2))
    );
    reg.connect(&id("a"), 2, Labels::new())
        .expect("a known agent reconnects");
    assert_eq!(reg.len(), 2);
}

#[test]
fn future_times_are_clamped() {
    let (reg, _) = setup();
    let Connected {
        session: s,
        last_applied_seq: _,
        ..
    } = reg.connect(&id("a"), 1, Labels::new()).expect("connects");
    let out = reg
        .apply(
            &s,
            &[
                ev(1, EventKind::Starting, Some(T0 + 3600)),
                ev(2, EventKind::ServerDataSent, Some(T0 + 60)),
            ],
        )
        .expect("applies");
    assert_eq!(out.clamped, 1);
    let v = reg.get(&id("a"), None).expect("known");
    assert_eq!(v.sensor.started_at(), t(T0));
    assert_eq!(v.sensor.last_sent(), t(T0 + 60));
}

/// Forty agents in every kind of state, half connected, with labels; then
/// twenty minutes pass without the timer task, so that several agents have
/// a change due that is not yet settled.
fn mixed_fleet() -> (Registry, ManualClock) {
    let (reg, clock) = setup();
    for i in 0..40 {
        let name = format!("agent-{i:02}");
        let site = if i % 2 == 0 { "eu" } else { "us" };
        let labels: Labels = [("site".to_string(), site.to_string())].into();
        let s = reg
            .connect(&id(&name), 1, labels)
            .expect("connects")
            .session;
        let started = [
            ev(1, EventKind::Starting, Some(T0 - 7 * 3600)),
            ev(2, EventKind::ServerDataReceived, None),
        ];
        match i % 5 {
            // Never started: no data received.
            0 => {}
            // Healthy, and stays connected.
            1 => {
                reg.apply(&s, &started).expect("applies");
                reg.apply(&s, &[ev(3, EventKind::ServerDataSent, None)])
                    .expect("applies");
            }
            // Stopped on purpose.
            2 => {
                reg.apply(&s, &started).expect("applies");
                reg.apply(&s, &[ev(3, EventKind::Stopped, None)])
                    .expect("applies");
            }
            // Healthy, then gone: not reporting after the silence window.
            3 => {
                reg.apply(&s, &started).expect("applies");
                reg.apply(&s, &[ev(3, EventKind::ServerDataSent, None)])
                    .expect("applies");
                reg.disconnect(&s);
            }
            // Sent last almost six hours ago: no data sent in ten minutes.
            _ => {
                reg.apply(&s, &started).expect("applies");
                reg.apply(
                    &s,
                    &[ev(3, EventKind::ServerDataSent, Some(T0 - 21_600 + 600))],
                )
                .expect("applies");
            }
        }
        if i >= 20 && i % 5 != 3 {
            reg.disconnect(&s);
        }
    }
    clock.advance(Duration::from_secs(20 * 60));
    (reg, clock)
}

fn selectors() -> Vec<Selector> {
    let mut out = Vec::new();
    for filter in [
        StateFilter::Active,
        StateFilter::Faulty,
        StateFilter::Healthy,
        StateFilter::Inactive,
        StateFilter::All,
    ] {
        for whys in [vec![], vec![Why::NotReporting, Why::AllIsOk]] {
            for labels in [Labels::new(), [("site".into(), "eu".into())].into()] {
                for maintenance in [MaintenanceFilter::Default, MaintenanceFilter::Exclude] {
                    for id_contains in [None, Some("1".to_string())] {
                        out.push(Selector {
                            filter,
                            whys: whys.clone(),
                            labels: labels.clone(),
                            maintenance,
                            id_contains,
                        });
                    }
                }
            }
        }
    }
    out
}

fn ids_and_status(page: &Page) -> Vec<(String, Why, Time, Option<Time>)> {
    page.agents
        .iter()
        .map(|v| (v.id.to_string(), v.why, v.since, v.next_change))
        .collect()
}

#[test]
fn the_index_answers_as_a_scan_of_the_fleet_would() {
    let (reg, clock) = mixed_fleet();
    // First with changes due and not settled, then with them settled (which
    // leaves connected agents settled as not reporting: a forecast takes
    // them as heard).
    for settle in [false, true] {
        if settle {
            reg.process_due();
        }
        compare_index_and_scan(&reg, clock.now());
    }
}

fn compare_index_and_scan(reg: &Registry, now: Time) {
    let times = [
        None,
        Some(now),
        Some(t(T0 + 3600)),
        Some(t(T0 + 8 * 86_400)),
        Some(t(T0 - 600)),
    ];
    for at in times {
        let when = at.unwrap_or(now);
        let forecast = when > now;
        for sel in selectors() {
            // Page through with a small limit: every page matches the scan's.
            let mut after: Option<String> = None;
            loop {
                let page = reg.list(&sel, at, after.as_deref(), 7);
                let scan = reg.list_by_scan(&sel, when, forecast, after.as_deref(), 7);
                assert_eq!(
                    ids_and_status(&page),
                    ids_and_status(&scan),
                    "{sel:?} at {when:?} after {after:?}"
                );
                assert_eq!(page.more, scan.more, "{sel:?} at {when:?}");
                assert_eq!(page.storm, scan.storm, "{sel:?} at {when:?}");
                if !page.more {
                    break;
                }
                after = page.agents.last().map(|v| v.id.to_string());
            }
        }
        let all = reg.list_by_scan(
            &Selector {
                filter: StateFilter::All,
                ..Selector::default()
            },
            when,
            forecast,
            None,
            usize::MAX,
        );
        let mut by_why = ByWhy::<u64>::default();
        for v in &all.agents {
            by_why[v.why] += 1;
        }
        assert_eq!(reg.summary(at).by_why, by_why, "at {when:?}");
    }
}

#[test]
fn reads_evaluate_their_time_and_settle_nothing() {
    let (reg, _clock) = mixed_fleet();
    let settled = reg.inner.tally.counts();
    let histories: Vec<usize> = (0..40)
        .map(|i| {
            let a = reg.inner.agents.get(format!("agent-{i:02}").as_str());
            a.expect("known").history().len()
        })
        .collect();
    // Read in every way: the due changes show, nothing is settled.
    let counts = reg.counts();
    assert_ne!(counts, settled, "some changes are due");
    assert_eq!(reg.summary(None).by_why, counts);
    let none = ByWhy::default();
    assert_eq!(reg.storm(), reg.inner.tally.storm_of(&counts, &none));
    let faulty = Selector {
        filter: StateFilter::Faulty,
        ..Selector::default()
    };
    let listed = reg.list(&faulty, None, None, 100);
    assert_eq!(listed.agents.len() as u64, counts.in_state(State::Faulty));
    assert_eq!(reg.snapshot(&faulty).len(), listed.agents.len());
    assert!(listed.agents.iter().any(|v| v.why == Why::NotReporting));
    for (i, settled_history) in histories.iter().enumerate() {
        let agent = id(&format!("agent-{i:02}"));
        reg.get(&agent, None).expect("known");
        reg.history(&agent).expect("known");
        let a = reg.inner.agents.get(agent.as_arc()).expect("known");
        assert_eq!(a.history().len(), *settled_history);
    }
    assert_eq!(reg.inner.tally.counts(), settled);
    // The timer task settles exactly what the reads showed.
    reg.process_due();
    assert_eq!(reg.inner.tally.counts(), counts);
    assert_eq!(
        ids_and_status(&reg.list(&faulty, None, None, 100)),
        ids_and_status(&listed)
    );
}

#[test]
fn healthy_and_all_lists_page_in_id_order() {
    let (reg, _) = setup();
    for i in (0..25).rev() {
        healthy_start(&reg, &format!("agent-{i:02}"));
    }
    let healthy = Selector {
        filter: StateFilter::Healthy,
        ..Selector::default()
    };
    let p1 = reg.list(&healthy, None, None, 10);
    assert!(p1.more);
    assert_eq!(p1.agents[0].id.as_str(), "agent-00");
    let p3 = reg.list(&healthy, None, Some("agent-19"), 10);
    assert!(!p3.more);
    let names: Vec<&str> = p3.agents.iter().map(|v| v.id.as_str()).collect();
    assert_eq!(
        names,
        ["agent-20", "agent-21", "agent-22", "agent-23", "agent-24"]
    );
}

#[test]
fn a_restored_registry_answers_as_the_one_that_wrote_it() {
    let (reg, clock) = mixed_fleet();
    let durable = Registry::durable(
        FleetRules::default(),
        Limits::default(),
        Arc::new(clock.clone()),
        Arc::new(Metrics::default()),
    );
    assert!(durable.commits().is_some());
    assert!(reg.commits().is_none(), "in memory: nothing to wait for");
    assert_eq!(
        reg.take_dirty().upserts.len(),
        0,
        "in memory: nothing journalled"
    );
    // Copy the fleet through its records.
    let records: Vec<(String, Vec<u8>)> = reg
        .inner
        .agents
        .iter()
        .map(|e| (e.key().to_string(), record::encode(e.value(), None)))
        .collect();
    assert_eq!(durable.restore(records.clone()).expect("restores"), 40);
    assert_eq!(durable.len(), 40);
    // Every agent is back as it was written (a restored server then grants
    // one silence window of grace, so its verdicts may differ for a while).
    for (key, bytes) in &records {
        let a = durable.inner.agents.get(&**key).expect("restored");
        assert_eq!(&record::encode(&a, None), bytes, "{key}");
        assert!(!a.connected());
    }
    assert_eq!(durable.inner.tally.counts(), reg.inner.tally.counts());
    let damaged = durable.restore(vec![("x".into(), vec![0xff; 3])]);
    assert!(matches!(damaged, Err(RecordError { ref agent, .. }) if agent == "x"));
}

/// `n` agents that said hello and nothing else: faulty ("no data received
/// from server") until they start.
fn faulty_fleet(reg: &Registry, n: usize) -> Vec<AgentId> {
    (0..n)
        .map(|i| {
            let name = id(&format!("agent-{i:02}"));
            let labels: Labels = [("rack".into(), format!("r{}", i % 2))].into();
            reg.connect(&name, 1, labels).expect("connects");
            name
        })
        .collect()
}

fn ids_of(page: &Page) -> Vec<String> {
    page.agents.iter().map(|a| a.id.to_string()).collect()
}

#[test]
fn agents_under_maintenance_leave_faulty_lists_and_the_storm_guard() {
    let (reg, clock) = setup();
    let fleet = faulty_fleet(&reg, 12);
    assert!(reg.storm().active, "12 of 12 faulty");
    let rack0 = Targets::Labels([("rack".into(), "r0".into())].into());
    let marked = reg
        .set_maintenance(&rack0, "kernel upgrade", Duration::from_secs(600), "ops")
        .expect("marks");
    assert_eq!(marked.agents.len(), 6);
    assert_eq!(marked.until, t(T0 + 600));
    let faulty = Selector {
        filter: StateFilter::Faulty,
        ..Selector::default()
    };
    let page = reg.list(&faulty, None, None, 100);
    assert_eq!(page.agents.len(), 6, "{:?}", ids_of(&page));
    assert!(page.agents.iter().all(|a| a.maintenance.is_none()));
    let storm = page.storm;
    assert_eq!(
        (storm.faulty, storm.active_agents, storm.maintenance),
        (6, 6, 6)
    );
    let with = Selector {
        maintenance: MaintenanceFilter::Include,
        ..faulty.clone()
    };
    assert_eq!(reg.list(&with, None, None, 100).agents.len(), 12);
    let only = Selector {
        filter: StateFilter::All,
        maintenance: MaintenanceFilter::Only,
        ..Selector::default()
    };
    let page = reg.list(&only, None, None, 4);
    assert_eq!(
        ids_of(&page),
        ["agent-00", "agent-02", "agent-04", "agent-06"]
    );
    assert!(page.more);
    let rest = reg.list(&only, None, Some("agent-06"), 4);
    assert_eq!(ids_of(&rest), ["agent-08", "agent-10"]);
    let m = reg
        .get(&fleet[0], None)
        .unwrap()
        .maintenance
        .expect("marked");
    assert_eq!(
        (m.reason.as_str(), m.by.as_str()),
        ("kernel upgrade", "ops")
    );
    let s = reg.summary(None);
    assert_eq!(s.maintained.total(), 6);
    assert_eq!(s.maintained.in_state(State::Faulty), 6);
    assert_eq!(s.by_why.in_state(State::Faulty), 12, "real status kept");
    // The agents keep their status; the healthy list takes them as they are.
    let s0 = reg.connect(&fleet[0], 2, Labels::new()).unwrap().session;
    reg.apply(&s0, &[ev(1, EventKind::Starting, None)]).unwrap();
    let healthy = Selector {
        filter: StateFilter::Healthy,
        ..Selector::default()
    };
    assert_eq!(ids_of(&reg.list(&healthy, None, None, 10)), ["agent-00"]);
    assert_eq!(reg.summary(None).maintained.in_state(State::Faulty), 5);
    // A read about the past, before the marks, sees no maintenance.
    clock.advance(Duration::from_secs(10));
    let before = reg.list(&faulty, Some(t(T0 - 1)), None, 100);
    assert_eq!(before.storm.maintenance, 0);
    // Cleared by label: the faulty list is whole again.
    let (cleared, _) = reg.clear_maintenance(&rack0, "ops").unwrap();
    assert_eq!(cleared, 6);
    assert_eq!(reg.list(&faulty, None, None, 100).agents.len(), 11);
    assert_eq!(reg.storm().maintenance, 0);
}

#[test]
fn a_maintenance_mark_ends_by_itself_on_time() {
    let (reg, clock) = setup();
    let fleet = faulty_fleet(&reg, 2);
    let mut feed = reg.subscribe();
    reg.set_maintenance(
        &Targets::Ids(vec![fleet[1].clone()]),
        "disk swap",
        Duration::from_secs(60),
        "",
    )
    .unwrap();
    match feed.try_recv().expect("watchers are told") {
        Change::Status {
            view,
            was_maintained,
            ..
        } => {
            assert!(!was_maintained);
            assert!(view.maintenance.is_some());
        }
        other => panic!("unexpected {other:?}"),
    }
    clock.set(t(T0 + 59));
    assert_eq!(reg.expire_maintenance(), Some(t(T0 + 60)));
    assert!(reg.get(&fleet[1], None).unwrap().maintenance.is_some());
    // A read at the end time already sees it ended.
    assert!(
        reg.get(&fleet[1], Some(t(T0 + 60)))
            .unwrap()
            .maintenance
            .is_none()
    );
    clock.set(t(T0 + 60));
    assert_eq!(reg.expire_maintenance(), None);
    assert!(reg.get(&fleet[1], None).unwrap().maintenance.is_none());
    assert_eq!(reg.storm().maintenance, 0);
    let kinds: Vec<(i32, i64)> = reg
        .activity(&fleet[1])
        .unwrap()
        .iter()
        .map(|a| (a.kind, a.at))
        .collect();
    use fleet_health_proto::v1::ActivityKind as K;
    assert_eq!(
        kinds,
        [
            (K::MaintenanceSet as i32, T0 * 1_000_000),
            (K::MaintenanceExpired as i32, (T0 + 60) * 1_000_000)
        ]
    );
    // Replaced before its end: the old end time ends nothing.
    let target = Targets::Ids(vec![fleet[0].clone()]);
    reg.set_maintenance(&target, "a", Duration::from_secs(10), "")
        .unwrap();
    reg.set_maintenance(&target, "b", Duration::from_secs(100), "")
        .unwrap();
    clock.set(t(T0 + 75));
    reg.expire_maintenance();
    assert_eq!(
        reg.get(&fleet[0], None)
            .unwrap()
            .maintenance
            .unwrap()
            .reason,
        "b"
    );
    // Unknown IDs mark nothing.
    let unknown = Targets::Ids(vec![fleet[1].clone(), id("nobody")]);
    assert!(matches!(
        reg.set_maintenance(&unknown, "x", Duration::from_secs(10), ""),
        Err(RegistryError::NotFound(_))
    ));
    assert!(reg.get(&fleet[1], None).unwrap().maintenance.is_none());
}

#[test]
fn one_holder_at_a_time_claims_an_agent() {
    let (reg, clock) = setup();
    let fleet = faulty_fleet(&reg, 3);
    let lease = Duration::from_secs(60);
    let a = &fleet[0];
    let c = reg.claim(a, "r1", lease, "orchestrator/r1").unwrap();
    assert_eq!(c.refusal, None);
    assert_eq!(c.claim.as_ref().unwrap().until, (T0 + 60) * 1_000_000);
    assert_eq!(reg.get(a, None).unwrap().claim.unwrap().holder, "r1");
    let other = reg.claim(a, "r2", lease, "").unwrap();
    assert_eq!(other.refusal, Some(Refusal::Held));
    assert_eq!(other.claim.unwrap().holder, "r1");
    // The same holder renews; the claim keeps its start.
    clock.set(t(T0 + 30));
    let renewed = reg.claim(a, "r1", lease, "").unwrap().claim.unwrap();
    assert_eq!(
        (renewed.since, renewed.until),
        (T0 * 1_000_000, (T0 + 90) * 1_000_000)
    );
    // A lease that ran out holds nothing.
    clock.set(t(T0 + 90));
    assert_eq!(reg.claim(a, "r2", lease, "").unwrap().refusal, None);
    assert!(!reg.release(a, "r1").unwrap().0, "r1 holds nothing");
    assert!(reg.release(a, "r2").unwrap().0);
    // Remediations are shared with every later claimant.
    let rem = RemediationRecord {
        started: (T0 + 91) * 1_000_000,
        finished: (T0 + 92) * 1_000_000,
        program: "restart".into(),
        result: 2,
        exit_code: Some(1),
        ..RemediationRecord::default()
    };
    reg.record_remediation(a, "r2", "", Some(rem.clone()), None)
        .unwrap();
    let c = reg.claim(a, "r3", lease, "").unwrap();
    assert_eq!(c.recent, [rem]);
    // Given up: every claim refused until cleared.
    reg.record_remediation(a, "r3", "", None, Some("3 restarts within 1h"))
        .unwrap();
    assert_eq!(
        reg.claim(a, "r3", lease, "").unwrap().refusal,
        Some(Refusal::GivenUp)
    );
    assert_eq!(reg.summary(None).given_up, 1);
    assert!(reg.clear_given_up(a, "admin/ana").unwrap().0);
    assert_eq!(reg.claim(a, "r1", lease, "").unwrap().refusal, None);
    assert_eq!(reg.summary(None).claimed, 1);
    // Under maintenance: refused.
    let b = &fleet[1];
    reg.set_maintenance(&Targets::Ids(vec![b.clone()]), "m", lease, "")
        .unwrap();
    assert_eq!(
        reg.claim(b, "r1", lease, "").unwrap().refusal,
        Some(Refusal::Maintenance)
    );
    // Turning healthy ends the claim; a healthy agent is not claimed.
    let s = reg.connect(a, 2, Labels::new()).unwrap().session;
    reg.apply(&s, &[ev(1, EventKind::Starting, None)]).unwrap();
    assert!(reg.get(a, None).unwrap().claim.is_none());
    assert_eq!(
        reg.claim(a, "r1", lease, "").unwrap().refusal,
        Some(Refusal::NotFaulty)
    );
    assert!(matches!(
        reg.claim(&id("nobody"), "r1", lease, ""),
        Err(RegistryError::NotFound(_))
    ));
}

#[test]
fn marks_claims_and_activity_survive_a_restart() {
    let clock = ManualClock::new(t(T0));
    let make = || {
        Registry::durable(
            FleetRules::default(),
            Limits::default(),
            Arc::new(clock.clone()),
            Arc::new(Metrics::default()),
        )
    };
    let reg = make();
    let fleet = faulty_fleet(&reg, 3);
    reg.set_maintenance(
        &Targets::Ids(vec![fleet[0].clone()]),
        "m",
        Duration::from_secs(60),
        "",
    )
    .unwrap();
    reg.claim(&fleet[1], "r1", Duration::from_secs(60), "")
        .unwrap();
    let batch = reg.take_dirty();
    assert_eq!(batch.upserts.len(), 3);
    let records = batch
        .upserts
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let back = make();
    back.restore(records).unwrap();
    assert!(back.get(&fleet[0], None).unwrap().maintenance.is_some());
    assert_eq!(back.storm().maintenance, 1);
    assert_eq!(
        back.claim(&fleet[1], "r2", Duration::from_secs(60), "")
            .unwrap()
            .refusal,
        Some(Refusal::Held)
    );
    // The restored mark still ends by itself.
    clock.set(t(T0 + 60));
    back.expire_maintenance();
    assert!(back.get(&fleet[0], None).unwrap().maintenance.is_none());
    assert_eq!(back.activity(&fleet[0]).unwrap().len(), 2);
    // Forgetting an agent takes all of it away.
    back.forget(&fleet[1]).unwrap();
    assert_eq!(back.summary(None).claimed, 0);
}

#[test]
fn watchers_see_claims_come_and_go() {
    let (reg, _) = setup();
    let fleet = faulty_fleet(&reg, 1);
    let mut feed = reg.subscribe();
    let lease = Duration::from_secs(60);
    reg.claim(&fleet[0], "r1", lease, "").unwrap();
    let claimed = |feed: &mut tokio::sync::broadcast::Receiver<Change>| match feed.try_recv() {
        Ok(Change::Status { view, .. }) => view.claim.as_ref().map(|c| c.holder.clone()),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(claimed(&mut feed).as_deref(), Some("r1"));
    assert!(reg.release(&fleet[0], "r1").unwrap().0);
    assert_eq!(claimed(&mut feed), None);
    // A refused claim changes nothing, and says nothing.
    reg.claim(&fleet[0], "r2", lease, "").unwrap();
    claimed(&mut feed);
    reg.claim(&fleet[0], "r3", lease, "").unwrap();
    assert!(feed.try_recv().is_err());
}

/// Pages through `sel` with `list`, at most `limit` a page, and checks that
/// each page but the last is full and says more follow.
fn walk_by_id(reg: &Registry, sel: &Selector, at: Option<Time>, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = reg.list(sel, at, after.as_deref(), limit);
        out.extend(ids_of(&page));
        if !page.more {
            return out;
        }
        assert_eq!(page.agents.len(), limit);
        after = page.agents.last().map(|v| v.id.to_string());
    }
}

#[test]
fn lists_take_only_the_ids_that_contain_the_text() {
    let (reg, clock) = mixed_fleet();
    let now = clock.now();
    let contains = |text: &str, filter: StateFilter| Selector {
        filter,
        id_contains: Some(text.to_string()),
        ..Selector::default()
    };
    let threes: Vec<String> = (0..40)
        .map(|i| format!("agent-{i:02}"))
        .filter(|n| n.contains('3'))
        .collect();
    assert_eq!(threes.len(), 13);
    let all_threes = contains("3", StateFilter::All);
    // Now (the index walk, over several chunks), and in the past (a scan).
    assert_eq!(walk_by_id(&reg, &all_threes, None, 4), threes);
    assert_eq!(walk_by_id(&reg, &all_threes, Some(t(T0 - 600)), 4), threes);
    // With a state filter: the faulty list, narrowed to the IDs.
    for at in [None, Some(t(T0 - 600)), Some(now)] {
        let everyone = Selector {
            filter: StateFilter::Faulty,
            ..Selector::default()
        };
        let expected: Vec<String> = walk_by_id(&reg, &everyone, at, 100)
            .into_iter()
            .filter(|n| n.contains("-1"))
            .collect();
        assert!(!expected.is_empty(), "at {at:?}");
        let faulty_ones = contains("-1", StateFilter::Faulty);
        assert_eq!(walk_by_id(&reg, &faulty_ones, at, 3), expected, "at {at:?}");
    }
    // Case-sensitive, and text no ID has: nothing.
    assert!(walk_by_id(&reg, &contains("AGENT", StateFilter::All), None, 10).is_empty());
    assert!(walk_by_id(&reg, &contains("-4", StateFilter::All), None, 10).is_empty());
    // The list of agents under maintenance walks the marks: narrowed too.
    let evens: Vec<AgentId> = (0..40)
        .step_by(2)
        .map(|i| id(&format!("agent-{i:02}")))
        .collect();
    reg.set_maintenance(&Targets::Ids(evens), "m", Duration::from_secs(600), "")
        .expect("marks");
    let only = Selector {
        maintenance: MaintenanceFilter::Only,
        ..contains("2", StateFilter::All)
    };
    assert_eq!(
        walk_by_id(&reg, &only, None, 2),
        [
            "agent-02", "agent-12", "agent-20", "agent-22", "agent-24", "agent-26", "agent-28",
            "agent-32"
        ]
    );
}

/// Three hundred agents that came at different times, three at a time, in
/// every kind of state: never started, healthy, gone silent (due to be "not
/// reporting", not yet settled), healthy and stopped.
fn staggered_fleet() -> (Registry, ManualClock) {
    let (reg, clock) = setup();
    for i in 0..300 {
        let name = format!("node-{i:03}");
        match i % 4 {
            0 => {
                reg.connect(&id(&name), 1, Labels::new()).expect("connects");
            }
            1 => {
                healthy_start(&reg, &name);
            }
            2 => {
                let s = healthy_start(&reg, &name);
                reg.disconnect(&s);
            }
            _ => {
                let s = healthy_start(&reg, &name);
                reg.apply(&s, &[ev(4, EventKind::Stopped, None)])
                    .expect("applies");
            }
        }
        if i % 3 == 2 {
            clock.advance(Duration::from_secs(37));
        }
    }
    clock.advance(Duration::from_secs(20 * 60));
    (reg, clock)
}

/// `views` in `order`: the reference a sorted list must match.
fn sorted(mut views: Vec<AgentView>, order: Order) -> Vec<AgentView> {
    views.sort_by(|a, b| match order {
        Order::Id => a.id.as_str().cmp(b.id.as_str()),
        Order::LongestFirst => (a.since, a.id.as_str()).cmp(&(b.since, b.id.as_str())),
        Order::NewestFirst => b
            .since
            .cmp(&a.since)
            .then_with(|| a.id.as_str().cmp(b.id.as_str())),
    });
    views
}

/// Every agent `sel` selects at `when`, in `order`: a scan of the whole
/// fleet, narrowed to the IDs here rather than by the selector, then sorted.
fn reference(reg: &Registry, sel: &Selector, when: Time, order: Order) -> Vec<AgentView> {
    let forecast = when > reg.clock().now();
    let wide = Selector {
        id_contains: None,
        ..sel.clone()
    };
    let all = reg.list_by_scan(&wide, when, forecast, None, usize::MAX);
    let text = sel.id_contains.clone().unwrap_or_default();
    let views = all
        .agents
        .into_iter()
        .filter(|v| v.id.as_str().contains(&text))
        .collect();
    sorted(views, order)
}

fn status_of(views: &[AgentView]) -> Vec<(String, Why, Time, Option<Time>)> {
    views
        .iter()
        .map(|v| (v.id.to_string(), v.why, v.since, v.next_change))
        .collect()
}

#[test]
fn sorted_lists_page_through_the_fleet_as_a_full_sort_would() {
    let (reg, clock) = staggered_fleet();
    let now = clock.now();
    let selectors = [
        Selector {
            filter: StateFilter::All,
            ..Selector::default()
        },
        Selector {
            filter: StateFilter::Faulty,
            ..Selector::default()
        },
        Selector {
            filter: StateFilter::All,
            id_contains: Some("7".into()),
            ..Selector::default()
        },
        Selector {
            filter: StateFilter::Faulty,
            id_contains: Some("1".into()),
            ..Selector::default()
        },
    ];
    let times = [None, Some(t(T0 + 1800)), Some(t(T0 + 8 * 86_400))];
    for order in [Order::LongestFirst, Order::NewestFirst] {
        for sel in &selectors {
            for at in times {
                let when = at.unwrap_or(now);
                let expected = reference(&reg, sel, when, order);
                assert!(expected.len() > 20, "{sel:?} at {when:?}: several pages");
                let scan = reg.list_by_scan(sel, when, when > now, None, 1);
                let mut walked = Vec::new();
                let mut cursor: Option<SortCursor> = None;
                loop {
                    let page = reg.list_sorted(sel, at, order, cursor.as_ref(), 17);
                    assert_eq!(page.evaluated_at, when);
                    assert_eq!(page.storm, scan.storm, "{sel:?} at {when:?}");
                    walked.extend(page.agents.iter().cloned());
                    if !page.more {
                        break;
                    }
                    assert_eq!(page.agents.len(), 17, "{order:?} {sel:?} at {when:?}");
                    cursor = page.agents.last().map(SortCursor::after);
                }
                assert_eq!(
                    status_of(&walked),
                    status_of(&expected),
                    "{order:?} {sel:?} at {when:?}"
                );
            }
        }
    }
    // The fleet's since times do vary, with ties, so the order is tested.
    let all = reference(&reg, &selectors[0], now, Order::LongestFirst);
    let distinct: std::collections::BTreeSet<Time> = all.iter().map(|v| v.since).collect();
    assert!(distinct.len() > 50 && distinct.len() < all.len());
    // In ID order, a sorted list is the plain list.
    let cursor = SortCursor {
        since: t(T0),
        id: "node-100".into(),
    };
    assert_eq!(
        ids_of(&reg.list_sorted(&selectors[1], None, Order::Id, Some(&cursor), 9)),
        ids_of(&reg.list(&selectors[1], None, Some("node-100"), 9))
    );
}

#[test]
fn a_sorted_list_pages_on_after_its_cursors_agent_is_forgotten() {
    let sel = Selector {
        filter: StateFilter::All,
        ..Selector::default()
    };
    for order in [Order::LongestFirst, Order::NewestFirst] {
        let (reg, _) = staggered_fleet();
        let first = reg.list_sorted(&sel, None, order, None, 17);
        assert!(first.more);
        let last = first.agents.last().expect("a full page");
        let cursor = SortCursor::after(last);
        reg.forget(&last.id).expect("known");
        let next = reg.list_sorted(&sel, None, order, Some(&cursor), 17);
        // What a full sort of the fleet now puts after the cursor's place.
        let expected: Vec<AgentView> = reference(&reg, &sel, reg.clock().now(), order)
            .into_iter()
            .filter(|v| {
                let place = (v.since, v.id.as_str());
                let mark = (cursor.since, cursor.id.as_str());
                match order {
                    Order::NewestFirst => {
                        place.0 < mark.0 || (place.0 == mark.0 && place.1 > mark.1)
                    }
                    _ => place > mark,
                }
            })
            .collect();
        assert_eq!(expected.len(), 300 - 17, "{order:?}");
        assert_eq!(
            status_of(&next.agents),
            status_of(&expected[..17]),
            "{order:?}"
        );
        assert!(next.more);
        // And the first page's other agents do not come again.
        let seen: Vec<String> = ids_of(&first);
        assert!(
            next.agents
                .iter()
                .all(|v| !seen.contains(&v.id.to_string()))
        );
    }
}

#[test]
fn agents_of_a_shard_taken_get_one_silence_window_of_grace() {
    // A node that has run for a while (its start's grace long over) takes
    // a shard whose agents were last heard before the takeover.
    let (old, clock) = setup();
    let session = healthy_start(&old, "web-1");
    old.disconnect(&session);
    let records: Vec<(String, Vec<u8>)> = old
        .inner
        .agents
        .iter()
        .map(|e| (e.key().to_string(), record::encode(e.value(), None)))
        .collect();
    let silence = FleetRules::default().silence;
    let node = Registry::durable(
        FleetRules::default(),
        Limits::default(),
        Arc::new(clock.clone()),
        Arc::new(Metrics::default()),
    );
    clock.advance(silence * 3);
    let taken_at = clock.now();
    assert_eq!(node.restore_taken(records, taken_at).expect("loads"), 1);
    // Heard a long time ago, but the takeover's grace holds.
    assert_ne!(
        node.get(&id("web-1"), None).expect("known").why,
        Why::NotReporting
    );
    // Until one silence window after the takeover.
    clock.advance(silence);
    node.process_due();
    assert_eq!(
        node.get(&id("web-1"), None).expect("known").why,
        Why::NotReporting
    );
}
