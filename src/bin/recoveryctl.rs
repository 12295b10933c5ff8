//! `recoveryctl`: see `recoveryd::cli`.

fn main() -> std::process::ExitCode {
    recoveryd::cli::main()
}
