//! The fleet-health v1 API, generated from `proto/fleethealth/v1/*.proto`.
//!
//! - [`v1`]: the messages, the `AgentService` and `FleetService` clients and
//!   servers (package `fleethealth.v1`).
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for server reflection.
//!
//! The code is generated at build time by protox and tonic-prost-build, so
//! building needs no `protoc`.

use std::marker::PhantomData;

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

/// The `fleethealth.v1` package.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("fleethealth.v1");
}

/// The prost codec with small initial buffers and the API's status for a
/// message that cannot be decoded; used by every generated client and server.
///
/// tonic's default gives each stream an 8 KiB encode and an 8 KiB decode
/// buffer up front. The API's messages are mostly a few dozen bytes and a
/// server holds one stream per agent, so the buffers start small and grow
/// only when a message needs it (a large batch or a long list).
///
/// A message that is not valid protobuf for its type (garbage bytes, a string
/// that is not UTF-8) is refused with the code its [`Undecodable`] names:
/// INVALID_ARGUMENT for a request (the caller sent it), INTERNAL for a
/// response (the server did).
#[derive(Debug)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

/// Initial encode buffer: an ack fits (larger messages grow it).
const ENCODE_BUFFER: usize = 64;
/// Initial decode buffer: a hello or a few events fit (larger ones grow it).
const DECODE_BUFFER: usize = 128;
/// Flush the encode buffer once it holds this much (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        LeanCodec(PhantomData)
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Undecodable + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = LeanDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        LeanDecoder(PhantomData)
    }
}

/// Who is at fault when a message of this type cannot be decoded: the status
/// code the receiver answers with.
pub trait Undecodable {
    /// INVALID_ARGUMENT for requests, INTERNAL for responses.
    const CODE: tonic::Code;
}

macro_rules! undecodable {
    ($code:ident: $($t:ident),+ $(,)?) => {
        $(impl Undecodable for v1::$t {
            const CODE: tonic::Code = tonic::Code::$code;
        })+
    };
}

undecodable!(InvalidArgument:
    ReportRequest,
    GetAgentRequest,
    ListAgentsRequest,
    WatchAgentsRequest,
    GetSummaryRequest,
    GetHistoryRequest,
    ForgetAgentRequest,
    SetMaintenanceRequest,
    ClearMaintenanceRequest,
    ClaimAgentRequest,
    ReleaseAgentRequest,
    RecordRemediationRequest,
    ClearGivenUpRequest,
    BackupRequest,
    GetServerInfoRequest,
    GetClusterStatusRequest,
);
undecodable!(Internal:
    ReportResponse,
    GetAgentResponse,
    ListAgentsResponse,
    WatchAgentsResponse,
    GetSummaryResponse,
    GetHistoryResponse,
    ForgetAgentResponse,
    SetMaintenanceResponse,
    ClearMaintenanceResponse,
    ClaimAgentResponse,
    ReleaseAgentResponse,
    RecordRemediationResponse,
    ClearGivenUpResponse,
    BackupChunk,
    GetServerInfoResponse,
    GetClusterStatusResponse,
);

/// Decodes one message of [`LeanCodec`]; a decode error becomes the status
/// [`Undecodable::CODE`] of the message type.
#[derive(Debug)]
pub struct LeanDecoder<U>(PhantomData<U>);

impl<U: prost::Message + Default + Undecodable> Decoder for LeanDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(refusal::<U>)
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(DECODE_BUFFER, YIELD_THRESHOLD)
    }
}

/// The status for a message of type `U` that cannot be decoded.
fn refusal<U: Undecodable>(e: prost::DecodeError) -> Status {
    Status::new(
        U::CODE,
        format!("the message is not a valid {}: {e}", short_name::<U>()),
    )
}

/// The message's type name without its module path, as the API names it.
fn short_name<U>() -> &'static str {
    let full = std::any::type_name::<U>();
    full.rsplit("::").next().unwrap_or(full)
}

/// The encoded `FileDescriptorSet` of the API, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/fleethealth_descriptor.bin"));

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::{Undecodable, refusal, v1};

    /// Decodes `bytes` as the codec's decoder does.
    fn decode<U: Message + Default + Undecodable>(bytes: &[u8]) -> Result<U, tonic::Status> {
        U::decode(bytes).map_err(refusal::<U>)
    }

    #[test]
    fn an_undecodable_request_is_invalid_argument_and_a_response_internal() {
        // A hello whose agent ID is not UTF-8.
        let bad_utf8 = [0x0a, 0x04, 0x0a, 0x02, 0xff, 0xfe];
        let status = decode::<v1::ReportRequest>(&bad_utf8).expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status
                .message()
                .starts_with("the message is not a valid ReportRequest: "),
            "{status:?}"
        );
        // A field whose length runs past the end.
        let truncated = [0x0a, 0x05, 0x61];
        let status = decode::<v1::GetAgentRequest>(&truncated).expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        let status = decode::<v1::GetAgentResponse>(&truncated).expect_err("refused");
        assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
        let good = v1::GetAgentRequest {
            agent_id: "web-1".into(),
            at: None,
        }
        .encode_to_vec();
        let decoded = decode::<v1::GetAgentRequest>(&good).expect("decodes");
        assert_eq!(decoded.agent_id, "web-1");
    }

    #[test]
    fn descriptor_set_holds_both_services_and_their_imports() {
        let fds = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET)
            .expect("descriptor set decodes");
        let files: Vec<&str> = fds.file.iter().map(|f| f.name()).collect();
        assert!(
            files.contains(&"google/protobuf/timestamp.proto"),
            "{files:?}"
        );
        let services: Vec<String> = fds
            .file
            .iter()
            .flat_map(|f| {
                f.service
                    .iter()
                    .map(move |s| format!("{}.{}", f.package(), s.name()))
            })
            .collect();
        assert!(services.contains(&"fleethealth.v1.AgentService".to_string()));
        assert!(services.contains(&"fleethealth.v1.FleetService".to_string()));
    }
}
