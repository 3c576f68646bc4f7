//! Test helpers for nameko-rs services.
