//! What a worker knows about its call: [`WorkerContext`], [`ContextData`] and
//! [`Extensions`].

use std::{
    any::{Any, TypeId},
    collections::HashMap,
    fmt,
    sync::Arc,
};

use serde_json::{Map, Value};

use crate::{config::Config, redact::CallArgs};

/// The context-data key under which parents' call ids travel.
pub const CALL_ID_STACK_KEY: &str = "call_id_stack";
/// The context-data key of the trace id (`nameko.trace_id` on the wire).
pub const TRACE_ID_KEY: &str = "trace_id";

// ===== EntrypointInfo =====

/// Describes one entrypoint: the method it calls and its kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntrypointInfo {
    method: &'static str,
    kind: &'static str,
    max_workers: Option<usize>,
    sensitive_arguments: &'static [&'static str],
}

impl EntrypointInfo {
    /// An entrypoint of `kind` (`"rpc"`, `"event_handler"`, `"once"`…) on `method`.
    pub const fn new(method: &'static str, kind: &'static str) -> Self {
        Self {
            method,
            kind,
            max_workers: None,
            sensitive_arguments: &[],
        }
    }

    /// Names the arguments whose values logs and monitoring must not show (see
    /// [`redact`](crate::redact)).
    #[must_use]
    pub const fn with_sensitive_arguments(mut self, paths: &'static [&'static str]) -> Self {
        self.sensitive_arguments = paths;
        self
    }

    /// The paths of the arguments whose values are redacted (see [`redact`](crate::redact)).
    pub const fn sensitive_arguments(&self) -> &'static [&'static str] {
        self.sensitive_arguments
    }

    /// Limits how many workers of this entrypoint run at once, within the container's
    /// `max_workers` (see [`Entrypoint::max_workers`](crate::Entrypoint::max_workers)).
    #[must_use]
    pub const fn with_max_workers(mut self, max_workers: usize) -> Self {
        self.max_workers = Some(max_workers);
        self
    }

    /// The method's name, as callers address it.
    pub const fn method(&self) -> &'static str {
        self.method
    }

    /// The entrypoint's kind.
    pub const fn kind(&self) -> &'static str {
        self.kind
    }

    /// The entrypoint's own worker limit, if it has one.
    pub const fn max_workers(&self) -> Option<usize> {
        self.max_workers
    }
}

// ===== ContextData =====

/// Context data: the `nameko.*` headers of a call, without the prefix.
///
/// Well-known keys have accessors (`user_id`, `language`, `auth_token`,
/// `user_agent`, `trace_id`); any other key is reached with [`get`](Self::get). The
/// parents' call ids travel under [`CALL_ID_STACK_KEY`] as an array of strings.
///
/// Its `Debug` shows `auth_token` as `********`, so that logging a context (or a
/// [`WorkerContext`]) with `{:?}` never prints the token.
#[derive(Clone, Default, PartialEq)]
pub struct ContextData {
    values: Map<String, Value>,
}

impl ContextData {
    /// Empty context data: the call starts a new stack.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a key, returning `self` for chaining.
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.insert(key, value);
        self
    }

    /// Sets a key.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        self.values.insert(key.into(), value.into());
    }

    /// Removes a key, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.values.remove(key)
    }

    /// The value of a key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.values.get(key)
    }

    /// The value of a key, when it is a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.values.get(key).and_then(Value::as_str)
    }

    /// `user_id`: a string or a number, as the caller set it.
    pub fn user_id(&self) -> Option<&Value> {
        self.get("user_id")
    }

    /// `language`.
    pub fn language(&self) -> Option<&str> {
        self.get_str("language")
    }

    /// `auth_token`.
    pub fn auth_token(&self) -> Option<&str> {
        self.get_str("auth_token")
    }

    /// `user_agent`.
    pub fn user_agent(&self) -> Option<&str> {
        self.get_str("user_agent")
    }

    /// `trace_id`.
    pub fn trace_id(&self) -> Option<&str> {
        self.get_str(TRACE_ID_KEY)
    }

    /// Iterates over every key and value.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The data as a JSON object.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.values
    }
}

impl From<Map<String, Value>> for ContextData {
    fn from(values: Map<String, Value>) -> Self {
        Self { values }
    }
}

impl FromIterator<(String, Value)> for ContextData {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(iter: I) -> Self {
        Self {
            values: iter.into_iter().collect(),
        }
    }
}

// ===== Extensions =====

/// A type map an entrypoint fills for its workers (the delivery, the HTTP request
/// parts…), read by providers through [`WorkerContext::extensions`].
#[derive(Default)]
pub struct Extensions {
    map: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
}

impl Extensions {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts a value, returning the one of the same type it replaced.
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) -> Option<T> {
        self.map
            .insert(TypeId::of::<T>(), Box::new(value))
            .and_then(|old| old.downcast().ok().map(|b| *b))
    }

    /// The value of type `T`.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.map.get(&TypeId::of::<T>()).and_then(|b| b.downcast_ref())
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl fmt::Debug for Extensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extensions").field("len", &self.map.len()).finish()
    }
}

// ===== WorkerContext =====

/// Everything a worker's hooks and handler know about the call: service, entrypoint,
/// call ids, context data, config and extensions. Cheap to clone.
///
/// # Call ids
///
/// The worker's own id is `<service>.<method>.<uuid4>`. [`call_id_stack`] holds the
/// parents' ids followed by the worker's own, keeping at most `parent_calls_tracked`
/// (config, default 10) parents: the oldest are dropped first. [`origin_call_id`] and
/// [`immediate_parent_call_id`] are the first and last parent as received.
///
/// [`call_id_stack`]: Self::call_id_stack
/// [`origin_call_id`]: Self::origin_call_id
/// [`immediate_parent_call_id`]: Self::immediate_parent_call_id
#[derive(Clone)]
pub struct WorkerContext {
    inner: Arc<Inner>,
}

struct Inner {
    service_name: &'static str,
    entrypoint: EntrypointInfo,
    /// Every parent call id as received, then this worker's own: the tracked stack is
    /// its tail from `tracked` on, the origin its first.
    stack: Vec<String>,
    /// Where the tracked stack starts in `stack`.
    tracked: usize,
    data: ContextData,
    config: Config,
    extensions: Extensions,
    args: Option<Box<dyn CallArgs>>,
}

impl WorkerContext {
    /// Builds the context of a new worker from the call's incoming context data.
    ///
    /// The parents' call ids are taken from `data[CALL_ID_STACK_KEY]` (an array of
    /// strings; anything else there is ignored). A `trace_id` that is missing or does
    /// not match `[A-Za-z0-9._-]{1,128}` is replaced by a new one: this worker is the
    /// edge of the trace.
    pub fn new(
        service_name: &'static str,
        entrypoint: EntrypointInfo,
        data: ContextData,
        config: Config,
        extensions: Extensions,
    ) -> Self {
        Self::with_call_args(service_name, entrypoint, data, config, extensions, None)
    }

    /// Like [`new`](Self::new), with the call's arguments (see
    /// [`redacted_arguments`](Self::redacted_arguments)).
    pub fn with_call_args(
        service_name: &'static str,
        entrypoint: EntrypointInfo,
        mut data: ContextData,
        config: Config,
        extensions: Extensions,
        args: Option<Box<dyn CallArgs>>,
    ) -> Self {
        let mut stack: Vec<String> = match data.remove(CALL_ID_STACK_KEY) {
            Some(Value::Array(items)) => {
                let mut stack = Vec::with_capacity(items.len() + 1);
                stack.extend(items.into_iter().filter_map(|v| match v {
                    Value::String(s) => Some(s),
                    _ => None,
                }));
                stack
            }
            Some(other) => {
                tracing::warn!(value = %other, "ignoring `call_id_stack` that is not a list of strings");
                Vec::with_capacity(1)
            }
            None => Vec::with_capacity(1),
        };
        let tracked = stack.len().saturating_sub(config.parent_calls_tracked());
        stack.push(crate::ids::call_id(service_name, entrypoint.method()));
        if !data.trace_id().is_some_and(is_valid_trace_id) {
            if let Some(bad) = data.get(TRACE_ID_KEY) {
                tracing::debug!(trace_id = %bad, "replacing an invalid incoming trace id");
            }
            data.insert(TRACE_ID_KEY, crate::ids::uuid4_simple());
        }
        Self {
            inner: Arc::new(Inner {
                service_name,
                entrypoint,
                stack,
                tracked,
                data,
                config,
                extensions,
                args,
            }),
        }
    }

    /// The call's arguments by parameter name with the entrypoint's
    /// [sensitive arguments](EntrypointInfo::sensitive_arguments) replaced by
    /// [`REDACTED`](crate::redact::REDACTED) — Nameko's `get_redacted_args`. `None` when
    /// the entrypoint handed none (HTTP, timers, hooks). Decoded on each call: for logs
    /// and monitoring, not for the handler.
    pub fn redacted_arguments(&self) -> Option<Value> {
        let mut arguments = self.inner.args.as_ref()?.arguments()?;
        crate::redact::redact(&mut arguments, self.inner.entrypoint.sensitive_arguments());
        Some(Value::Object(arguments))
    }

    /// The service's name.
    pub fn service_name(&self) -> &'static str {
        self.inner.service_name
    }

    /// The entrypoint that fired.
    pub fn entrypoint(&self) -> &EntrypointInfo {
        &self.inner.entrypoint
    }

    /// This worker's call id, `<service>.<method>.<uuid4>`.
    pub fn call_id(&self) -> &str {
        self.inner.stack.last().map_or("", String::as_str)
    }

    /// Parents' call ids (at most `parent_calls_tracked`) followed by this worker's.
    pub fn call_id_stack(&self) -> &[String] {
        &self.inner.stack[self.inner.tracked..]
    }

    /// The first call id of the chain, if this call has parents.
    pub fn origin_call_id(&self) -> Option<&str> {
        self.parents().first().map(String::as_str)
    }

    /// The call id of the worker that made this call, if any.
    pub fn immediate_parent_call_id(&self) -> Option<&str> {
        self.parents().last().map(String::as_str)
    }

    /// Every parent's call id as received, oldest first.
    fn parents(&self) -> &[String] {
        let stack = &self.inner.stack;
        &stack[..stack.len().saturating_sub(1)]
    }

    /// The incoming context data, without `call_id_stack`, with a valid `trace_id`.
    pub fn data(&self) -> &ContextData {
        &self.inner.data
    }

    /// The trace id this worker carries.
    pub fn trace_id(&self) -> &str {
        self.inner.data.trace_id().unwrap_or_default()
    }

    /// The context data this worker sends with every message it publishes: its data
    /// plus its `call_id_stack`.
    pub fn outgoing_data(&self) -> ContextData {
        let mut data = self.inner.data.clone();
        data.insert(CALL_ID_STACK_KEY, self.call_id_stack().to_vec());
        // With spans, each outgoing message carries its own span's trace context
        // (`otel::OutgoingSpan`), never the one this worker received.
        #[cfg(feature = "otel")]
        data.remove(crate::otel::TRACEPARENT_KEY);
        data
    }

    /// The container's config.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Values the entrypoint attached to this call.
    pub fn extensions(&self) -> &Extensions {
        &self.inner.extensions
    }
}

impl fmt::Debug for ContextData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (key, value) in &self.values {
            if key == "auth_token" {
                map.entry(key, &crate::redact::REDACTED);
            } else {
                map.entry(key, value);
            }
        }
        map.finish()
    }
}

impl fmt::Debug for WorkerContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerContext")
            .field("service_name", &self.inner.service_name)
            .field("entrypoint", &self.inner.entrypoint)
            .field("call_id", &self.call_id())
            .field("call_id_stack", &self.call_id_stack())
            .field("data", &self.inner.data)
            .finish_non_exhaustive()
    }
}

/// Whether `id` may be carried as a trace id: `[A-Za-z0-9._-]{1,128}`.
pub fn is_valid_trace_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
