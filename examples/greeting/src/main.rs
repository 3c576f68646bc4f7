//! The greeting example's binary: `nameko run` for its services.
//!
//! Run with: `cargo run -p example-greeting -- run --transport memory`

use std::{process::ExitCode, sync::Arc};

use example_greeting::{CountingVisitors, Visitors};
use nameko::prelude::*;

fn main() -> ExitCode {
    nameko::cli::Cli::new()
        .name("example-greeting")
        .resources(|_config| async move {
            Ok::<_, std::convert::Infallible>(
                Resources::new().with::<dyn Visitors>(Arc::new(CountingVisitors::default())),
            )
        })
        .main()
}
