//! The timer example's binary: `nameko run` for `reporter`.
//!
//! Run with: `cargo run -p example-timer -- run --transport memory`

use std::{process::ExitCode, sync::Arc};

use example_timer::Stats;
use nameko::prelude::*;

fn main() -> ExitCode {
    nameko::cli::Cli::new()
        .name("example-timer")
        .resources(|_config| async move {
            Ok::<_, std::convert::Infallible>(Resources::new().with(Arc::new(Stats::default())))
        })
        .main()
}
