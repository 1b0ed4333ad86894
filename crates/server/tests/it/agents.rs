//! The agent side end to end: a real server, a real tonic client, a manual
//! clock. Streams, acknowledgements, exactly-once, and every bad input.

use crate::common::*;
use fleet_health_proto::v1 as pb;
use fleet_health_server::Config;
use pb::EventKind as K;
use pb::report_request::Body as In;
use tonic::Code;

#[tokio::test]
async fn hello_then_events_then_status() {
    let s = TestServer::start().await;
    let mut a = s.agent("web-1", 42).await;
    assert_eq!(a.welcome.heartbeat_interval.expect("interval").seconds, 30);
    assert_eq!(a.welcome.last_applied_seq, 0);
    assert_eq!(
        s.get("web-1").await.why_text,
        "no data received from server"
    );
    let ack = a.start_healthy(1).await;
    assert_eq!(ack.applied_through, 3);
    let st = s.get("web-1").await;
    assert!(st.healthy);
    assert_eq!(
        (st.why_text.as_str(), st.why),
        ("all is ok", pb::Why::AllIsOk as i32)
    );
    assert_eq!(st.incarnation, 42);
    assert!(st.connected);
    assert_eq!(st.last_seq, 3);
    assert_eq!(st.next_change, Some(ts(T0 + 300)));
    assert_eq!(st.sensor.expect("times").started_at, Some(ts(T0)));
    s.stop().await;
}

#[tokio::test]
async fn resent_events_are_acknowledged_not_applied_again() {
    let s = TestServer::start().await;
    let mut a = s.agent("a", 7).await;
    a.events(vec![
        event(1, K::Starting, None),
        event(2, K::Unregistered, None),
        event(3, K::Registered, None),
    ])
    .await
    .expect("applied");
    drop(a);
    // The reporter reconnects and sends 2..4 again: 2 and 3 were applied.
    let mut again = s.agent("a", 7).await;
    assert_eq!(again.welcome.last_applied_seq, 3);
    let ack = again
        .events(vec![
            event(2, K::Unregistered, None),
            event(3, K::Registered, None),
        ])
        .await
        .expect("acked");
    assert_eq!(ack.applied_through, 3);
    assert_eq!(s.get("a").await.why_text, "all is ok");
    let m = s.metrics().await;
    assert!(m.contains("fleet_health_events_duplicate_total 2\n"), "{m}");
    assert!(m.contains("fleet_health_events_total{kind=\"unregistered\"} 1\n"));
    s.stop().await;
}

#[tokio::test]
async fn one_shot_reporters_are_never_taken_for_resends() {
    let s = TestServer::start().await;
    // Each run of a script is a new incarnation starting at sequence 1.
    let mut first = s.agent("job", 1001).await;
    first
        .events(vec![event(1, K::Starting, None)])
        .await
        .expect("applied");
    drop(first);
    let mut second = s.agent("job", 1002).await;
    assert_eq!(second.welcome.last_applied_seq, 0);
    second
        .events(vec![event(1, K::Unregistered, None)])
        .await
        .expect("applied");
    assert_eq!(s.get("job").await.why_text, "not registered");
    s.stop().await;
}

#[tokio::test]
async fn a_newer_stream_takes_over_and_the_older_is_aborted() {
    let s = TestServer::start().await;
    let mut old = s.agent("a", 1).await;
    let _new = s.agent("a", 1).await;
    // Ended at once: the older stream need not send anything to learn it.
    let status = old.end().await;
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(s.get("a").await.connected);
    s.stop().await;
}

#[tokio::test]
async fn event_times_in_the_future_are_clamped_and_counted() {
    let s = TestServer::start().await;
    let mut a = s.agent("a", 1).await;
    let ack = a
        .events(vec![
            event(1, K::Starting, Some(T0 + 3600)),
            event(2, K::ServerDataSent, Some(T0 + 200)),
        ])
        .await
        .expect("applied");
    assert_eq!(ack.clamped, 1);
    let times = s.get("a").await.sensor.expect("times");
    assert_eq!(times.started_at, Some(ts(T0)));
    assert_eq!(times.last_sent, Some(ts(T0 + 200)));
    assert!(
        s.metrics()
            .await
            .contains("fleet_health_event_times_clamped_total 1\n")
    );
    s.stop().await;
}

async fn refused(s: &TestServer, first: In, then: Option<In>) -> tonic::Status {
    let mut a = s.open().await;
    a.send(first).await;
    if let Some(m) = then {
        // The hello's welcome comes first.
        let _ = a.rx.message().await;
        a.send(m).await;
    }
    a.end().await
}

fn hello(id: &str) -> In {
    In::Hello(pb::Hello {
        agent_id: id.into(),
        incarnation: 9,
        labels: Default::default(),
    })
}

fn batch(events: Vec<pb::Event>) -> In {
    In::Events(pb::EventBatch { events })
}

#[tokio::test]
async fn bad_input_gets_a_clear_status_and_changes_nothing() {
    let s = TestServer::start().await;
    let mut good = s.agent("good", 1).await;
    good.start_healthy(1).await;

    let cases: Vec<(In, Option<In>, &str)> = vec![
        (
            batch(vec![event(1, K::Starting, None)]),
            None,
            "first message",
        ),
        (hello("bad id!"), None, "[A-Za-z0-9._:@/-]"),
        (hello(""), None, "empty"),
        (hello(&"x".repeat(254)), None, "254 characters"),
        (
            In::Hello(pb::Hello {
                agent_id: "x".into(),
                incarnation: 0,
                labels: Default::default(),
            }),
            None,
            "incarnation",
        ),
        (
            In::Hello(pb::Hello {
                agent_id: "x".into(),
                incarnation: 1,
                labels: [("bad key".to_string(), "v".to_string())].into(),
            }),
            None,
            "label key",
        ),
        (
            hello("good2"),
            Some(batch(vec![pb::Event {
                seq: 1,
                kind: 99,
                time: None,
            }])),
            "unknown event kind 99",
        ),
        (
            hello("good2"),
            Some(batch(vec![event(1, K::Unspecified, None)])),
            "unspecified",
        ),
        (
            hello("good2"),
            Some(batch(vec![event(0, K::Starting, None)])),
            "sequence number 0",
        ),
        (
            hello("good2"),
            Some(batch(vec![pb::Event {
                seq: 1,
                kind: K::Starting as i32,
                time: Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: -5,
                }),
            }])),
            "nanos",
        ),
        (
            hello("good2"),
            Some(batch(vec![event(1, K::Starting, Some(400_000_000_000))])),
            "out of range",
        ),
        (
            hello("good2"),
            Some(batch(vec![event(1, K::Starting, Some(-10))])),
            "before the Unix epoch",
        ),
        (hello("good2"), Some(batch(vec![])), "at least one event"),
        (hello("good2"), Some(hello("good2")), "only be the first"),
    ];
    for (first, then, needle) in cases {
        let status = refused(&s, first, then).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{needle}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{needle}: {}",
            status.message()
        );
    }
    // Nothing of a refused batch was applied; the good agent is untouched.
    let st = s
        .fleet()
        .get_agent(pb::GetAgentRequest {
            agent_id: "good2".into(),
            at: None,
        })
        .await;
    assert_eq!(
        st.expect("hello created it")
            .into_inner()
            .agent
            .expect("agent")
            .last_seq,
        0
    );
    let good_now = s.get("good").await;
    assert_eq!(
        (good_now.why_text.as_str(), good_now.last_seq),
        ("all is ok", 3)
    );
    good.events(vec![event(4, K::Heartbeat, None)])
        .await
        .expect("still served");
    s.stop().await;
}

#[tokio::test]
async fn oversized_messages_are_refused() {
    let mut config = Config::default();
    config.transport.max_message_bytes = 1024;
    let s = TestServer::with_config(config).await;
    let mut a = s.agent("a", 1).await;
    let events = (1..=200)
        .map(|i| event(i, K::Heartbeat, Some(T0)))
        .collect();
    a.send(batch(events)).await;
    let status = a.end().await;
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(s.get("a").await.last_seq, 0);
    s.stop().await;
}

#[tokio::test]
async fn caps_on_agents_streams_batches_and_rate() {
    let mut config = Config::default();
    config.limits.max_agents = 2;
    config.streams.max_streams = 3;
    config.streams.max_batch = 10;
    config.streams.max_events_per_sec = 50;
    let s = TestServer::with_config(config).await;
    let mut a = s.agent("a", 1).await;
    let _b = s.agent("b", 1).await;
    let status = refused(&s, hello("c"), None).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("--max-agents"));

    let _third = s.open().await;
    let (_tx, rx) = tokio::sync::mpsc::channel(1);
    let status = s
        .agents()
        .report(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect_err("a fourth stream is refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("--max-streams"));

    let status = {
        a.send(batch(
            (1..=11).map(|i| event(i, K::Heartbeat, None)).collect(),
        ))
        .await;
        a.end().await
    };
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("at most 10"));

    // A flood: the burst allowance (2 s worth) is 100 events.
    let mut b = s.agent("b", 2).await;
    let mut seq = 0;
    let mut last = None;
    for _ in 0..20 {
        let events: Vec<_> = (0..10)
            .map(|_| {
                seq += 1;
                event(seq, K::Heartbeat, None)
            })
            .collect();
        b.send(batch(events)).await;
        match b.rx.message().await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(status) => {
                last = Some(status);
                break;
            }
        }
    }
    let status = last.expect("the flood was stopped");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("events/s"));
    s.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_streams_with_unavailable() {
    let s = TestServer::start().await;
    let mut a = s.agent("a", 1).await;
    a.start_healthy(1).await;
    let mut rx = std::mem::replace(&mut a.rx, s.open().await.rx);
    s.stop().await;
    let status = loop {
        match soon(rx.message()).await {
            Err(status) => break status,
            Ok(None) => panic!("ended without a status"),
            Ok(Some(_)) => {}
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}
