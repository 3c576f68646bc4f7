//! The transport-agnostic runtime of nameko-rs.
