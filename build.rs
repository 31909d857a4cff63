//! Generates the KServe v2 gRPC service (`proto/grpc_service.proto`) with a vendored `protoc`,
//! so a build needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/grpc_service.proto");
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        std::env::set_var("PROTOC", protoc);
    }
    tonic_prost_build::configure()
        .build_client(false)
        // Undecodable messages are the client's fault: INVALID_ARGUMENT, not INTERNAL.
        .codec_path("crate::grpc::codec::Codec")
        .compile_protos(&["proto/grpc_service.proto"], &["proto"])?;
    Ok(())
}
