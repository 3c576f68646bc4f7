//! RPC with Nameko's wire format: the [`RpcEntrypoint`], the [`RpcClient`] with its
//! reply listener, and the [`ClusterRpc`] and [`ServiceRpc`] dependencies.
//!
//! Requests go to the topic exchange `nameko-rpc` (config `rpc_exchange`) with routing
//! key `<service>.<method>`, `mandatory` and a confirm, so an unknown service is
//! reported as [`RpcError::UnknownService`]. A service consumes `rpc-<service>`,
//! bound with `<service>.*`, replies to `reply_to` with the request's
//! `correlation_id`, and acknowledges the request only after the reply is confirmed.

mod args;
mod client;
mod entrypoint;
mod proxy;
mod typed;

use std::time::Duration;

use nameko_core::{HandlerError, IntoHandlerError, RemoteError};

pub use self::{
    args::{FromRpcArgs, Param, RpcArgs, decode_arg},
    client::{REPLY_QUEUE_EXPIRES, RpcClient, RpcReply},
    entrypoint::RpcEntrypoint,
    proxy::{ClusterRpc, ClusterRpcProvider, DEFAULT_RPC_TIMEOUT, ServiceRpc, ServiceRpcProvider},
    typed::{Rpc, RpcInterface, RpcInterfaceProvider, TypedReply, decode_result},
};

/// The queue a service's RPC entrypoints consume.
pub fn rpc_queue(service: &str) -> String {
    format!("rpc-{service}")
}

/// An RPC call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// The service replied with an error (`MethodNotFound`, `IncorrectSignature`,
    /// `MalformedRequest` or the method's own).
    #[error("{0}")]
    Remote(Box<RemoteError>),
    /// No queue is bound for the service: nobody serves it.
    #[error("Unknown service `{0}`")]
    UnknownService(String),
    /// No reply arrived in time.
    #[error("no reply from `{target}` within {after:?}")]
    Timeout {
        /// `<service>.<method>`.
        target: String,
        /// The timeout.
        after: Duration,
    },
    /// The service or method name cannot be routed.
    #[error("{0}")]
    InvalidTarget(String),
    /// The broker failed: the request may not have been sent, or the reply cannot come.
    #[error("RPC transport failure: {0}")]
    Transport(String),
    /// The broker connection was lost while the call waited for its reply: the reply
    /// cannot arrive. The request may or may not have run; the call fails at once
    /// instead of timing out.
    #[error(
        "the connection to the broker was lost while `{target}` was called: its reply cannot arrive \
         (the call may or may not have run): {reason}"
    )]
    ConnectionLost {
        /// `<service>.<method>`.
        target: String,
        /// Why the connection was lost.
        reason: String,
    },
    /// The reply could not be read, or its result did not fit the expected type.
    #[error("could not decode the RPC reply: {0}")]
    Decode(String),
    /// An argument of a typed call could not be encoded as JSON; nothing was sent.
    #[error("could not encode the RPC arguments: {0}")]
    Encode(String),
}

impl RpcError {
    /// The remote error, when the service replied with one.
    pub fn remote(&self) -> Option<&RemoteError> {
        match self {
            Self::Remote(err) => Some(err),
            _ => None,
        }
    }
}

impl IntoHandlerError for RpcError {
    /// A remote error passes through unchanged; the others become `UnknownService`,
    /// `RpcTimeout` or `RpcError`.
    fn into_handler_error(self) -> HandlerError {
        let remote = match &self {
            Self::Remote(err) => return HandlerError::new((**err).clone()).with_source(self),
            Self::UnknownService(service) => RemoteError::new("UnknownService", format!("Unknown service `{service}`"))
                .with_path("nameko.exceptions.UnknownService"),
            Self::Timeout { .. } => {
                RemoteError::new("RpcTimeout", self.to_string()).with_path("nameko.exceptions.RpcTimeout")
            }
            _ => RemoteError::new("RpcError", self.to_string()),
        };
        HandlerError::new(remote).with_source(self)
    }
}
