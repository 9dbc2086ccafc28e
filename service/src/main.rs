//! `kwm-service`: parse the command line and hand over to the library.

fn main() -> std::process::ExitCode {
    kwm_service::cli::main()
}
