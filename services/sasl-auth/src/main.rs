//! authrelay sasl-auth: the SASL server, over gRPC. Everything lives in the library.

fn main() -> std::process::ExitCode {
    authrelay_telemetry::service_main(
        "sasl-auth",
        "authrelay sasl-auth: the SASL server, over gRPC",
        sasl_auth::main_with,
    )
}
