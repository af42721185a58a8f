//! Generates the SW4RM gRPC services and messages from `proto/sw4rm/*.proto` with protox, a
//! pure-Rust protobuf compiler, so building corral needs no `protoc` installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/sw4rm/common.proto", "proto/sw4rm/router.proto", "proto/sw4rm/registry.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto/sw4rm"])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    Ok(())
}
