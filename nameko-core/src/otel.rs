//! OpenTelemetry spans (feature `otel`): one per worker, and one per call, dispatch or
//! publish a worker makes, linked across services by W3C trace context.
//!
//! Spans go to the global tracer provider (`opentelemetry::global::set_tracer_provider`;
//! none installed, nothing is recorded). A worker's span is named `<service>.<method>`,
//! is a child of the caller's span when the call carried a valid `traceparent` (context
//! data key [`TRACEPARENT_KEY`]: `nameko.traceparent` on AMQP, the `traceparent` header
//! on HTTP and websockets), and carries the attributes `nameko.service`,
//! `nameko.entrypoint`, `nameko.kind`, `nameko.call_id`, `nameko.trace_id` and, when the
//! entrypoint handed them, `nameko.args` — the call's arguments with the
//! [sensitive](crate::redact) ones redacted. A failed worker's span has an error status.
//!
//! While a worker runs, its span is the current OpenTelemetry context, so
//! [`OutgoingSpan::start`] (used by the RPC client, the event dispatcher and the
//! publisher) makes children of it, whose `traceparent` goes out with the message.
//! A `traceparent` that is not valid W3C trace context is ignored: the worker starts a
//! new trace.

use std::{borrow::Cow, future::Future};

use opentelemetry::{
    Context, KeyValue,
    context::FutureExt as _,
    global::{self, BoxedTracer},
    trace::{SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _},
};

use crate::{WorkerContext, error::WorkerError};

/// The context-data key of the W3C trace context (`nameko.traceparent` on the wire).
pub const TRACEPARENT_KEY: &str = "traceparent";

/// The instrumentation scope spans are recorded under.
const SCOPE: &str = "nameko-rs";

fn tracer() -> BoxedTracer {
    global::tracer(SCOPE)
}

/// Reads a W3C `traceparent` (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`):
/// `None` unless it is well formed, of version `00` (or a later one with the same
/// fields), with ids that are not all zeros.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, span_id, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !hex(version, 2) || version == "ff" || !hex(trace_id, 32) || !hex(span_id, 16) || !hex(flags, 2) {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()? & TraceFlags::SAMPLED.to_u8());
    Some(SpanContext::new(trace_id, span_id, flags, true, TraceState::NONE))
}

/// A span context as a W3C `traceparent`.
pub fn format_traceparent(span: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        span.trace_id(),
        span.span_id(),
        span.trace_flags().to_u8()
    )
}

/// The span kind of a worker of `kind`.
fn worker_kind(kind: &str) -> SpanKind {
    match kind {
        "rpc" | "http" | "ws_rpc" => SpanKind::Server,
        "event_handler" | "consume" => SpanKind::Consumer,
        _ => SpanKind::Internal,
    }
}

/// Starts the span of the worker `cx`: the context its task runs in.
pub(crate) fn worker_context(cx: &WorkerContext) -> Context {
    let parent = cx
        .data()
        .get_str(TRACEPARENT_KEY)
        .and_then(parse_traceparent)
        .map_or_else(Context::new, |remote| Context::new().with_remote_span_context(remote));
    let entrypoint = cx.entrypoint();
    let tracer = tracer();
    let span = tracer
        .span_builder(format!("{}.{}", cx.service_name(), entrypoint.method()))
        .with_kind(worker_kind(entrypoint.kind()))
        .with_attributes([
            KeyValue::new("nameko.service", cx.service_name()),
            KeyValue::new("nameko.entrypoint", entrypoint.method()),
            KeyValue::new("nameko.kind", entrypoint.kind()),
            KeyValue::new("nameko.call_id", cx.call_id().to_owned()),
            KeyValue::new("nameko.trace_id", cx.trace_id().to_owned()),
        ])
        .start_with_context(&tracer, &parent);
    let context = parent.with_span(span);
    let span = context.span();
    if span.is_recording()
        && let Some(arguments) = cx.redacted_arguments()
    {
        span.set_attribute(KeyValue::new("nameko.args", crate::redact::for_log(&arguments)));
    }
    context
}

/// Runs `future` with `context` current (so outgoing spans are its children).
pub(crate) fn in_context<F: Future>(future: F, context: Context) -> impl Future<Output = F::Output> {
    future.with_context(context)
}

/// Ends a worker's span, with an error status when the worker failed.
pub(crate) fn finish<T>(context: &Context, result: &Result<T, WorkerError>) {
    let span = context.span();
    if let Err(err) = result {
        span.set_status(Status::error(Cow::Owned(err.to_string())));
    }
    span.end();
}

/// What an outgoing span stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outgoing {
    /// An RPC call, until its reply (or failure).
    Call,
    /// An event dispatch, until the broker confirms it.
    Dispatch,
    /// A message published with `Publisher`, until the broker confirms it.
    Publish,
}

/// A span for one message a worker (or a standalone client) sends: a child of the
/// current span (the worker's), whose [`traceparent`](Self::traceparent) goes out with
/// the message. It ends when dropped ([`set_error`](Self::set_error) marks it failed).
#[derive(Debug)]
pub struct OutgoingSpan {
    context: Context,
}

impl OutgoingSpan {
    /// Starts a span named `name` (e.g. `greeting.greet`, `orders.placed`).
    pub fn start(kind: Outgoing, name: String) -> Self {
        let tracer = tracer();
        let parent = Context::current();
        let span = tracer
            .span_builder(name)
            .with_kind(match kind {
                Outgoing::Call => SpanKind::Client,
                Outgoing::Dispatch | Outgoing::Publish => SpanKind::Producer,
            })
            .start_with_context(&tracer, &parent);
        Self {
            context: parent.with_span(span),
        }
    }

    /// The W3C `traceparent` of this span, for the outgoing message; `None` when no
    /// tracer provider records it (nothing to link to).
    pub fn traceparent(&self) -> Option<String> {
        let span = self.context.span();
        let span_context = span.span_context();
        span_context.is_valid().then(|| format_traceparent(span_context))
    }

    /// Marks the span failed, saying why.
    pub fn set_error(&self, why: &str) {
        self.context.span().set_status(Status::error(why.to_owned()));
    }
}

impl Drop for OutgoingSpan {
    fn drop(&mut self) {
        self.context.span().end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_validated() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = parse_traceparent(good).expect("a valid traceparent");
        assert!(parsed.is_remote() && parsed.is_sampled());
        assert_eq!(format_traceparent(&parsed), good);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-xyz-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }
}
