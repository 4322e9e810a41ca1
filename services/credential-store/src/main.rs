//! authrelay credential-store: per-mechanism secrets over gRPC. Everything lives in the library.

fn main() -> std::process::ExitCode {
    authrelay_telemetry::service_main(
        "credential-store",
        "authrelay credential-store: per-mechanism secrets over gRPC",
        credential_store::main_with,
    )
}
