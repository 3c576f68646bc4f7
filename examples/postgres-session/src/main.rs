//! The postgres-session example's binary: `nameko run` for `ledger`.
//!
//! Run with: `cargo run -p example-postgres-session -- run --transport memory --define
//! POSTGRES_URL=postgres://user:password@127.0.0.1/db`

use std::process::ExitCode;

use example_postgres_session as _;

fn main() -> ExitCode {
    nameko::cli::Cli::new().name("example-postgres-session").main()
}
