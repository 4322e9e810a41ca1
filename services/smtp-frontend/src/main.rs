//! authrelay smtp-frontend: ESMTP for mail clients. Everything lives in the library.

fn main() -> std::process::ExitCode {
    authrelay_telemetry::service_main(
        "smtp-frontend",
        "authrelay smtp-frontend: ESMTP for mail clients",
        smtp_frontend::main_with,
    )
}
