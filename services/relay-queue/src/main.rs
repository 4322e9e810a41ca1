//! authrelay relay-queue: durable spool and delivery. Everything lives in the library.

fn main() -> std::process::ExitCode {
    authrelay_telemetry::service_main(
        "relay-queue",
        "authrelay relay-queue: durable spool and delivery",
        relay_queue::main_with,
    )
}
