//! What every message consumer checks before it decodes a delivery.
//!
//! The RPC entrypoint, event handlers and any consuming entrypoint call [`check`] first:
//! a delivery it refuses is never decoded. What the entrypoint does with a refusal is its
//! own: the RPC entrypoint answers a request that has a `reply_to` with
//! [`Refusal::to_remote_error`] and acknowledges it (without `reply_to` it rejects it
//! without requeue), an event handler rejects the event without requeue; each logs the
//! refusal once.
//!
//! Two things are refused:
//!
//! - **A body larger than `MAX_MESSAGE_SIZE`** (config, bytes, default 8 MiB:
//!   [`Config::max_message_size`](nameko_core::Config::max_message_size)). The broker has
//!   already handed the body over, so the limit bounds what decoding costs (a JSON
//!   document takes several times its size once decoded), not what receiving it costs;
//!   RabbitMQ's own `max_message_size` bounds that.
//! - **Headers nested too deeply to read safely.** The RabbitMQ transport reads each
//!   message's header table before lapin does, and replaces a table with values nested
//!   more than [`MAX_HEADER_DEPTH`] levels deep by one holding only
//!   [`DROPPED_HEADERS`] — lapin's parser is recursive, and a few kilobytes of nested
//!   arrays would overflow its thread's stack and abort the process. Such a message
//!   arrives with that one header, and [`check`] refuses it.
//!
//! ```
//! use bytes::Bytes;
//! use nameko_extensions::{broker::Properties, inbound::{self, Refusal}};
//!
//! let properties = Properties::default();
//! assert_eq!(inbound::check_parts(&properties, &Bytes::from_static(b"{}"), 1024), Ok(()));
//! let refused = inbound::check_parts(&properties, &Bytes::from(vec![b' '; 2000]), 1024).unwrap_err();
//! assert_eq!(refused, Refusal::TooLarge { size: 2000, limit: 1024 });
//! assert_eq!(refused.to_remote_error().exc_type(), "MessageTooLarge");
//! ```

use bytes::Bytes;
use nameko_core::RemoteError;

use crate::broker::{Delivery, FieldValue, Properties};

/// The header that replaces a header table nested too deeply (see the [module](self)):
/// its value says why.
pub const DROPPED_HEADERS: &str = "x-nameko-dropped-headers";

/// How deeply header values may nest (a list in a table in a list...). Nameko's own
/// headers nest one level (`nameko.call_id_stack` is a list), RabbitMQ's `x-death`
/// three.
pub const MAX_HEADER_DEPTH: usize = 64;

/// Why a consumer refused a delivery before decoding it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The body is larger than `MAX_MESSAGE_SIZE`.
    #[error(
        "the message body is {size} bytes, above this service's limit of {limit} bytes (config `MAX_MESSAGE_SIZE`)"
    )]
    TooLarge {
        /// The body's size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The message arrived with its headers dropped (see [`DROPPED_HEADERS`]).
    #[error("the message's headers were dropped on arrival: {reason}")]
    HeadersDropped {
        /// What the transport said.
        reason: String,
    },
}

impl Refusal {
    /// The error an RPC caller reads: `MessageTooLarge` for a body over the limit (a
    /// Python caller raises `RemoteError("MessageTooLarge ...")`), Nameko's
    /// `MalformedRequest` for dropped headers.
    pub fn to_remote_error(&self) -> RemoteError {
        match self {
            Self::TooLarge { .. } => RemoteError::new("MessageTooLarge", self.to_string()),
            Self::HeadersDropped { .. } => RemoteError::malformed_request(&self.to_string()),
        }
    }
}

/// Checks a delivery before it is decoded: its body is at most `max_size` bytes and its
/// headers were not dropped on arrival.
///
/// # Errors
///
/// The [`Refusal`], which the caller logs and answers or rejects.
pub fn check(delivery: &Delivery, max_size: usize) -> Result<(), Refusal> {
    check_parts(&delivery.properties, &delivery.body, max_size)
}

/// [`check`] on a delivery's parts.
///
/// # Errors
///
/// As [`check`].
pub fn check_parts(properties: &Properties, body: &Bytes, max_size: usize) -> Result<(), Refusal> {
    if body.len() > max_size {
        return Err(Refusal::TooLarge {
            size: body.len(),
            limit: max_size,
        });
    }
    if let Some(dropped) = properties.headers.as_ref().and_then(|h| h.get(DROPPED_HEADERS)) {
        let reason = match dropped {
            FieldValue::String(reason) => reason.clone(),
            other => format!("(a `{}` value)", other.type_letter()),
        };
        return Err(Refusal::HeadersDropped { reason });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Headers;

    #[test]
    fn the_limit_is_inclusive() {
        let properties = Properties::default();
        assert_eq!(check_parts(&properties, &Bytes::from(vec![0; 10]), 10), Ok(()));
        assert_eq!(
            check_parts(&properties, &Bytes::from(vec![0; 11]), 10),
            Err(Refusal::TooLarge { size: 11, limit: 10 })
        );
    }

    #[test]
    fn dropped_headers_are_refused_with_their_reason() {
        let mut headers = Headers::new();
        headers.insert(DROPPED_HEADERS, FieldValue::String("nested too deeply".into()));
        let properties = Properties::json(headers);
        let refused = check_parts(&properties, &Bytes::new(), 10).unwrap_err();
        assert_eq!(
            refused,
            Refusal::HeadersDropped {
                reason: "nested too deeply".into()
            }
        );
        let remote = refused.to_remote_error();
        assert_eq!(remote.exc_path(), "nameko.exceptions.MalformedRequest");
        assert!(remote.value().contains("nested too deeply"), "{remote}");
    }

    #[test]
    fn too_large_reads_as_message_too_large() {
        let remote = Refusal::TooLarge { size: 11, limit: 10 }.to_remote_error();
        assert_eq!(remote.exc_type(), "MessageTooLarge");
        assert_eq!(
            remote.value(),
            "the message body is 11 bytes, above this service's limit of 10 bytes (config `MAX_MESSAGE_SIZE`)"
        );
    }
}
