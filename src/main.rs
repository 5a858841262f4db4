//! The `pitcrew` binary: parse arguments, set up logging, hand over to `cli`.

fn main() -> std::process::ExitCode {
    pitcrew::cli::main()
}
