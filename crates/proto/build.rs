// Generates the gRPC code for every service from ../../proto. protoc comes from
// protoc-bin-vendored so that no system protoc is needed on a fresh machine.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY of intent: build scripts are single-threaded; set_var is how prost-build finds protoc.
    unsafe_set_protoc(&protoc);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "sasl.proto",
        "credentials.proto",
        "queue.proto",
        "frontend.proto",
    ]
    .map(|f| root.join(f));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    // The descriptors too: tests walk every RPC of every service from them
    // (so a new RPC cannot be left out of the access checks).
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("descriptors.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptors)
        .compile_protos(&files, &[root])?;
    Ok(())
}

#[allow(unsafe_code)]
fn unsafe_set_protoc(path: &std::path::Path) {
    // Edition 2024 makes set_var unsafe; nothing else runs in this process.
    unsafe { std::env::set_var("PROTOC", path) };
}
