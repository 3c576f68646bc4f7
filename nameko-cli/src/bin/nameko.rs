//! The standalone `nameko` binary: `request`, `emit`, `subscribe`, `discover`,
//! `inspect`, `tail`, `shell`, `show-config` and `completions` work against any cluster;
//! `run` and `list` explain that they are commands of the user's own service binary.

fn main() -> std::process::ExitCode {
    nameko_cli::Cli::standalone()
        .name("nameko")
        .version(env!("CARGO_PKG_VERSION"))
        .main()
}
