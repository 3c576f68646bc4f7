//! The websocket chat example's binary: `nameko run` for the `chat` service.
//!
//! Run with: `cargo run -p example-websocket-chat -- run --transport memory`, then
//! connect a websocket client to `ws://127.0.0.1:8000/ws` (served once the runner's
//! web server mounts the websocket router).

use std::process::ExitCode;

use example_websocket_chat as _;

fn main() -> ExitCode {
    nameko::cli::Cli::new().name("example-websocket-chat").main()
}
