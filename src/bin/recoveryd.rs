//! `recoveryd`: see `recoveryd::daemon`.

fn main() -> std::process::ExitCode {
    recoveryd::daemon::main()
}
