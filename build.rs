//! Compiles `proto/` with protox, a protobuf compiler written in Rust, so that a
//! new machine builds spansink without `protoc` installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/opentelemetry/proto/collector/trace/v1/trace_service.proto",
        "proto/opentelemetry/proto/collector/logs/v1/logs_service.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(files, ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
