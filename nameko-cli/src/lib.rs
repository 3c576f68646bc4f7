//! The nameko-rs command line, as a library a service binary calls.
