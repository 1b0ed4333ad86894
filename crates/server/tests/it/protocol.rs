//! The protocol's edges against a real server: bytes that are not the
//! messages they claim to be, streams ended from outside (a takeover, a
//! forget) while idle, a half-close with acks still to come, silence, and the
//! per-stream rate limit.

use std::time::Duration;

use crate::common::*;
use fleet_health_proto::v1 as pb;
use fleet_health_server::Config;
use fleet_health_server::agent_service::StreamLimits;
use fleet_health_server::clock::ManualClock;
use pb::EventKind as K;
use pb::report_request::Body as In;
use pb::report_response::Body as Out;
use prost::Message;
use prost::bytes::{Buf, BufMut};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Code, Request, Status};

/// A codec that sends and receives message bytes as they are, so a test can
/// send what no generated client would.
#[derive(Clone, Copy, Debug, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// A Report message whose hello's agent ID is the bytes `id` (which need not
/// be UTF-8).
fn hello_with_raw_id(id: &[u8]) -> Vec<u8> {
    let mut hello = vec![0x0a, id.len() as u8];
    hello.extend_from_slice(id);
    // incarnation = 1
    hello.extend_from_slice(&[0x10, 0x01]);
    let mut msg = vec![0x0a, hello.len() as u8];
    msg.extend_from_slice(&hello);
    msg
}

/// Bytes that are no protobuf message: a field whose length runs past the end.
const GARBAGE: &[u8] = &[0x0a, 0x7f, 0x61, 0x62];

/// Sends `messages` on a Report stream, keeping the stream open (no
/// half-close), and reads until the server ends it: the replies, then the
/// final status (OK if it ended without one).
async fn raw_report(s: &TestServer, messages: Vec<Vec<u8>>) -> (Vec<pb::ReportResponse>, Status) {
    let mut grpc = tonic::client::Grpc::new(s.channel.clone());
    grpc.ready().await.expect("channel ready");
    let (tx, rx) = mpsc::channel(messages.len().max(1));
    for m in messages {
        tx.send(m).await.expect("queued");
    }
    let response = grpc
        .streaming(
            Request::new(ReceiverStream::new(rx)),
            PathAndQuery::from_static("/fleethealth.v1.AgentService/Report"),
            Raw,
        )
        .await
        .expect("stream opens");
    let mut inbound = response.into_inner();
    let mut replies = Vec::new();
    let end = loop {
        match soon(inbound.message()).await {
            Ok(Some(bytes)) => {
                replies.push(pb::ReportResponse::decode(&bytes[..]).expect("a reply"))
            }
            Ok(None) => break Status::ok(""),
            Err(status) => break status,
        }
    };
    drop(tx);
    (replies, end)
}

#[tokio::test]
async fn an_undecodable_report_message_ends_the_stream_with_invalid_argument() {
    let s = TestServer::start().await;
    let hello = pb::ReportRequest {
        body: Some(In::Hello(pb::Hello {
            agent_id: "a".into(),
            incarnation: 1,
            labels: Default::default(),
        })),
    }
    .encode_to_vec();
    let cases = [
        ("garbage first", vec![GARBAGE.to_vec()], 0),
        (
            "an agent ID that is not UTF-8",
            vec![hello_with_raw_id(&[0x61, 0xff, 0xfe])],
            0,
        ),
        ("garbage after the hello", vec![hello, GARBAGE.to_vec()], 1),
    ];
    for (case, messages, welcomed) in cases {
        let (replies, end) = raw_report(&s, messages).await;
        assert_eq!(end.code(), Code::InvalidArgument, "{case}: {end:?}");
        assert!(
            end.message()
                .starts_with("the message is not a valid ReportRequest"),
            "{case}: {end:?}"
        );
        assert_eq!(replies.len(), welcomed, "{case}: {replies:?}");
    }
    // The well-formed hello of the last case applied; nothing else did.
    let list = s.list(pb::StateFilter::All).await;
    let ids: Vec<&str> = list.agents.iter().map(|a| a.agent_id.as_str()).collect();
    assert_eq!(ids, ["a"]);
    s.stop().await;
}

#[tokio::test]
async fn messages_sent_together_are_acknowledged_before_a_bad_one_ends_the_stream() {
    // Messages that arrived together are read in one go, and may share one
    // (cumulative) ack: the events before the bad message are still
    // acknowledged (once committed, where there is a store), then the stream
    // ends with its status.
    let dir = scratch();
    together_then_refused(TestServer::start().await).await;
    together_then_refused(TestServer::durable(dir.path(), ManualClock::new(t(T0))).await).await;
}

async fn together_then_refused(s: TestServer) {
    let mut messages = vec![
        pb::ReportRequest {
            body: Some(In::Hello(pb::Hello {
                agent_id: "a".into(),
                incarnation: 1,
                labels: Default::default(),
            })),
        }
        .encode_to_vec(),
    ];
    for seq in 1..=5 {
        let kind = if seq == 1 { K::Starting } else { K::Heartbeat };
        messages.push(
            pb::ReportRequest {
                body: Some(In::Events(pb::EventBatch {
                    events: vec![event(seq, kind, None)],
                })),
            }
            .encode_to_vec(),
        );
    }
    messages.push(GARBAGE.to_vec());
    let (replies, end) = raw_report(&s, messages).await;
    assert_eq!(end.code(), Code::InvalidArgument, "{end:?}");
    assert!(
        matches!(
            replies.first(),
            Some(pb::ReportResponse {
                body: Some(Out::Welcome(_))
            })
        ),
        "{replies:?}"
    );
    let acked: Vec<u64> = replies[1..]
        .iter()
        .map(|r| match &r.body {
            Some(Out::Ack(a)) => a.applied_through,
            other => panic!("not an ack: {other:?}"),
        })
        .collect();
    assert!(acked.windows(2).all(|w| w[0] < w[1]), "{acked:?}");
    assert_eq!(
        acked.last(),
        Some(&5),
        "every event acknowledged: {acked:?}"
    );
    assert_eq!(s.get("a").await.last_seq, 5);
    s.stop().await;
}

#[tokio::test]
async fn an_undecodable_unary_request_is_invalid_argument() {
    let s = TestServer::start().await;
    let mut grpc = tonic::client::Grpc::new(s.channel.clone());
    let calls = [
        ("/fleethealth.v1.FleetService/GetAgent", GARBAGE.to_vec()),
        (
            "/fleethealth.v1.FleetService/GetAgent",
            // agent_id = "a\xff"
            vec![0x0a, 0x02, 0x61, 0xff],
        ),
        ("/fleethealth.v1.FleetService/ListAgents", GARBAGE.to_vec()),
        ("/fleethealth.v1.FleetService/ForgetAgent", GARBAGE.to_vec()),
    ];
    for (path, bytes) in calls {
        grpc.ready().await.expect("channel ready");
        let status = grpc
            .unary(Request::new(bytes), PathAndQuery::from_static(path), Raw)
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
        assert!(
            status.message().starts_with("the message is not a valid "),
            "{path}: {status:?}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn events_sent_with_a_half_close_are_acknowledged_before_the_end() {
    let dir = scratch();
    let durable = TestServer::durable(dir.path(), ManualClock::new(t(T0))).await;
    half_close_acknowledged(durable).await;
    half_close_acknowledged(TestServer::start().await).await;
}

async fn half_close_acknowledged(s: TestServer) {
    // Everything at once, then the agent's side closes: the server must
    // still say which events it committed.
    let Agent { tx, mut rx, .. } = s.open().await;
    let hello = pb::Hello {
        agent_id: "a".into(),
        incarnation: 1,
        labels: Default::default(),
    };
    for body in [
        In::Hello(hello),
        In::Events(pb::EventBatch {
            events: vec![event(1, K::Starting, None)],
        }),
        In::Events(pb::EventBatch {
            events: vec![event(2, K::Registered, None)],
        }),
    ] {
        tx.send(pb::ReportRequest { body: Some(body) })
            .await
            .expect("stream open");
    }
    drop(tx);
    let mut acked = 0;
    let mut welcomed = false;
    loop {
        match soon(rx.message()).await {
            Ok(Some(pb::ReportResponse {
                body: Some(Out::Welcome(_)),
            })) => welcomed = true,
            Ok(Some(pb::ReportResponse {
                body: Some(Out::Ack(a)),
            })) => acked = a.applied_through,
            Ok(other) => {
                assert!(other.is_none(), "unexpected {other:?}");
                break;
            }
            Err(status) => panic!("the stream ended with {status:?}"),
        }
    }
    assert!(welcomed);
    assert_eq!(acked, 2, "both events acknowledged before the end");
    assert_eq!(s.get("a").await.last_seq, 2);
    s.stop().await;
}

/// Reads the end of a stream nobody writes to: it must come from the server
/// on its own, promptly.
async fn ended_at_once(a: &mut Agent) -> Status {
    tokio::time::timeout(Duration::from_secs(5), a.end())
        .await
        .expect("the idle stream was ended at once")
}

#[tokio::test]
async fn a_takeover_ends_the_idle_older_stream_at_once() {
    let s = TestServer::start().await;
    let mut old = s.agent("a", 1).await;
    let mut new = s.agent("a", 1).await;
    let status = ended_at_once(&mut old).await;
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(status.message().contains("newer stream"), "{status:?}");
    // The newer stream carries on.
    let ack = new.start_healthy(1).await;
    assert_eq!(ack.applied_through, 3);
    assert!(s.get("a").await.connected);
    s.stop().await;
}

#[tokio::test]
async fn a_durable_takeover_ends_the_older_stream_at_once_too() {
    let dir = scratch();
    let s = TestServer::durable(dir.path(), ManualClock::new(t(T0))).await;
    let mut old = s.agent("a", 1).await;
    old.start_healthy(1).await;
    let _new = s.agent("a", 2).await;
    let status = ended_at_once(&mut old).await;
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    s.stop().await;
}

#[tokio::test]
async fn forgetting_an_agent_ends_its_idle_stream_at_once() {
    let s = TestServer::start().await;
    let mut a = s.agent("a", 1).await;
    let _other = s.agent("b", 1).await;
    s.fleet()
        .forget_agent(pb::ForgetAgentRequest {
            agent_id: "a".into(),
        })
        .await
        .expect("forgotten");
    let status = ended_at_once(&mut a).await;
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(status.message().contains("forgotten"), "{status:?}");
    // The agent may come back on a new stream; the other one is untouched.
    let mut again = s.agent("a", 1).await;
    assert_eq!(again.welcome.last_applied_seq, 0);
    again.start_healthy(1).await;
    assert!(s.get("b").await.connected);
    s.stop().await;
}

#[tokio::test]
async fn a_silent_stream_is_closed_after_the_hello_and_the_idle_timeouts() {
    let config = Config {
        streams: StreamLimits {
            hello_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_millis(1500),
            ..StreamLimits::default()
        },
        ..Config::default()
    };
    let s = TestServer::with_config(config).await;

    let mut mute = s.open().await;
    let status = mute.end().await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");

    // A message within the idle timeout keeps the stream open: the timeout
    // counts from the last message, not from the hello.
    let mut a = s.agent("a", 1).await;
    // Spaced out on purpose: the message comes after most of the idle
    // timeout has passed since the hello.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let last = std::time::Instant::now();
    a.events(vec![event(1, K::Heartbeat, None)])
        .await
        .expect("still open");
    let status = a.end().await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        last.elapsed() >= Duration::from_millis(1400),
        "closed {:?} after the last message",
        last.elapsed()
    );
    assert!(status.message().contains("send heartbeats"), "{status:?}");
    s.stop().await;
}

#[tokio::test]
async fn the_default_rate_limit_lets_a_backlog_replay_through() {
    let s = TestServer::start().await;
    let mut a = s.agent("a", 1).await;
    // 100,000 events as fast as they can go, 500 a message (the reporter's
    // batch size): a large backlog, replayed after an outage.
    let mut seq = 0;
    for _ in 0..200 {
        let events = (0..500)
            .map(|_| {
                seq += 1;
                event(seq, K::Heartbeat, None)
            })
            .collect();
        let ack = a.events(events).await.expect("not refused");
        assert_eq!(ack.applied_through, seq);
    }
    s.stop().await;
}

#[tokio::test]
async fn a_stream_over_its_rate_is_told_the_limit_and_how_to_raise_it() {
    let mut config = Config::default();
    config.streams.max_events_per_sec = 50;
    let s = TestServer::with_config(config).await;
    let mut a = s.agent("a", 1).await;
    let events = (1..=101).map(|i| event(i, K::Heartbeat, None)).collect();
    a.send(In::Events(pb::EventBatch { events })).await;
    let status = a.end().await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    for needle in [
        "50 events/s",
        "bursts up to 100",
        "--max-stream-events-per-sec",
        "FLEET_HEALTH_MAX_STREAM_EVENTS_PER_SEC",
    ] {
        assert!(status.message().contains(needle), "{needle}: {status:?}");
    }
    s.stop().await;
}
