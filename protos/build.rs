//! Generates the Rust of l7mp's protos (prost messages, tonic client and server) with `protoc`
//! (Debian: `protobuf-compiler`; `.ci/run` installs it).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/l7mp/config/v1/config.proto",
        "proto/l7mp/management/v1/management.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
