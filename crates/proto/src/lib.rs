//! The fleet-health v1 API, generated from `proto/fleethealth/v1/*.proto`.
//!
//! - [`v1`]: the messages, the `AgentService` and `FleetService` clients and
//!   servers (package `fleethealth.v1`).
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for server reflection.
//!
//! The code is generated at build time by protox and tonic-prost-build, so
//! building needs no `protoc`.

/// The `fleethealth.v1` package.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("fleethealth.v1");
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
