//! Compiles `proto/` with protox, a protobuf compiler written in Rust, so that a
//! new machine builds spansink without `protoc` installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/opentelemetry/proto/collector/trace/v1/trace_service.proto",
        "proto/opentelemetry/proto/collector/logs/v1/logs_service.proto",
        "proto/spansink/v1/dead_letter.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    // The build-info metric names the commit; a build outside a git checkout
    // (a container build, whose context has no .git) is told it through
    // SPANSINK_GIT_SHA, and says "unknown" without it.
    println!("cargo:rerun-if-env-changed=SPANSINK_GIT_SHA");
    let sha = std::env::var("SPANSINK_GIT_SHA")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| {
            std::process::Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
        })
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=SPANSINK_GIT_SHA={sha}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    let descriptors = protox::compile(files, ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
