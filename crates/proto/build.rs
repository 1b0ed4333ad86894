//! Compiles `proto/` with protox (a protobuf compiler in Rust, so no `protoc`
//! is needed) and generates the messages and services with tonic-prost-build.

use std::path::PathBuf;

use protox::prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        root.join("fleethealth/v1/agent.proto"),
        root.join("fleethealth/v1/fleet.proto"),
        root.join("fleethealth/v1/admin.proto"),
    ];
    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("fleethealth_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .codec_path("crate::LeanCodec")
        .emit_rerun_if_changed(false)
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
