//! `kwm`: the provider's command line tool. Everything it does lives in the `kwm_sdk` library.

fn main() -> std::process::ExitCode {
    kwm_sdk::cli::main()
}
