//! The `Report` call with small codec buffers.
//!
//! tonic's default codec gives every stream an 8 KiB encode and an 8 KiB
//! decode buffer up front. An agent's messages are a few dozen bytes, and a
//! simulator may hold 100 000 streams in one process, so the reporter opens
//! its stream with buffers that start small and grow only when a message
//! needs it (a large backlog batch).

use tonic::codec::{BufferSettings, Codec};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{GrpcMethod, IntoStreamingRequest, Response, Status, Streaming};
use tonic_prost::{ProstDecoder, ProstEncoder};

use crate::proto::{ReportRequest, ReportResponse};

/// Initial buffer sizes: enough for a Hello or a handful of events.
const ENCODE_BUFFER: usize = 512;
const DECODE_BUFFER: usize = 256;
/// Flush the encode buffer once it holds this much (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

#[derive(Clone, Copy, Debug, Default)]
struct LeanCodec;

impl Codec for LeanCodec {
    type Encode = ReportRequest;
    type Decode = ReportResponse;
    type Encoder = ProstEncoder<ReportRequest>;
    type Decoder = ProstDecoder<ReportResponse>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::new(DECODE_BUFFER, YIELD_THRESHOLD))
    }
}

/// `fleethealth.v1.AgentService/Report` on `channel`: the same call as the
/// generated client's, with [`LeanCodec`].
pub(crate) async fn report(
    channel: &mut tonic::client::Grpc<Channel>,
    requests: impl IntoStreamingRequest<Message = ReportRequest>,
) -> Result<Response<Streaming<ReportResponse>>, Status> {
    channel
        .ready()
        .await
        .map_err(|e| Status::unavailable(format!("connection not ready: {e}")))?;
    let mut request = requests.into_streaming_request();
    request
        .extensions_mut()
        .insert(GrpcMethod::new("fleethealth.v1.AgentService", "Report"));
    let path = PathAndQuery::from_static("/fleethealth.v1.AgentService/Report");
    channel.streaming(request, path, LeanCodec).await
}
