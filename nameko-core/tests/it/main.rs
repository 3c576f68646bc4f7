//! Integration tests of nameko-core (one binary; each module tests one area).

mod config;
