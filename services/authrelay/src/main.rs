//! `authrelay`: the all-in-one server and the operator's admin commands.
//! Everything lives in the library; this only hands over the arguments.

fn main() -> std::process::ExitCode {
    authrelay::main()
}
