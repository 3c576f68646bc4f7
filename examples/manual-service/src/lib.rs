//! A nameko-rs service written without macros.
