#![doc = include_str!(concat!(env!("OUT_DIR"), "/SUMMARY.md"))]
//!
//! This crate is the guide compiled: each chapter, a Markdown file under `docs/guide/`,
//! is a module here, so that every code block in it compiles and runs as a doctest, and
//! its build script fails on a link to a chapter or heading that does not exist. The
//! same files are the book: `mdbook build docs` (after `cargo doc --workspace
//! --no-deps`, which the book's API links point into).

#![allow(
    clippy::test_attr_in_doctest,
    reason = "chapters include whole example files; their unit tests run in their own crates"
)]

/// A chapter: its rustdoc form, which the build script wrote to `OUT_DIR`.
macro_rules! chapter {
    ($module:ident, $file:literal) => {
        #[doc = include_str!(concat!(env!("OUT_DIR"), "/", $file))]
        pub mod $module {}
    };
}

chapter!(introduction, "introduction.md");
chapter!(quick_start, "quick-start.md");
chapter!(anatomy, "anatomy.md");
chapter!(dependencies, "dependencies.md");
chapter!(rpc, "rpc.md");
chapter!(events, "events.md");
chapter!(http, "http.md");
chapter!(websockets, "websockets.md");
chapter!(timers, "timers.md");
chapter!(messaging, "messaging.md");
chapter!(configuration, "configuration.md");
chapter!(cli, "cli.md");
chapter!(testing, "testing.md");
chapter!(operations, "operations.md");
chapter!(python_cluster, "python-cluster.md");
chapter!(extensions, "extensions.md");
chapter!(performance, "performance.md");
