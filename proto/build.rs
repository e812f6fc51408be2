//! Compiles the agent API with `protox`, a pure-Rust protobuf compiler, so
//! that building Hull needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "hull/agent/v1/agent.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["."])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
