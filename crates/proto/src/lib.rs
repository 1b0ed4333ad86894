//! The fleet-health v1 API, generated from `proto/fleethealth/v1/*.proto`.
//!
//! - [`v1`]: the messages, the `AgentService` and `FleetService` clients and
//!   servers (package `fleethealth.v1`).
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for server reflection.
//!
//! The code is generated at build time by protox and tonic-prost-build, so
//! building needs no `protoc`.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// The `fleethealth.v1` package.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("fleethealth.v1");
}

/// The prost codec with small initial buffers, used by every generated client
/// and server.
///
/// tonic's default gives each stream an 8 KiB encode and an 8 KiB decode
/// buffer up front. The API's messages are mostly a few dozen bytes and a
/// server holds one stream per agent, so the buffers start small and grow
/// only when a message needs it (a large batch or a long list).
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
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::new(DECODE_BUFFER, YIELD_THRESHOLD))
    }
}

/// The encoded `FileDescriptorSet` of the API, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/fleethealth_descriptor.bin"));

#[cfg(test)]
mod tests {
    use prost::Message;

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
