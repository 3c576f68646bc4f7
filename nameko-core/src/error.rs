//! Errors: the wire error in Nameko's shape, what a handler's error becomes, and the
//! framework's own failures.

use std::{convert::Infallible, error::Error as StdError, fmt};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A boxed error that can cross threads: the pass-through error type of providers.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

// ===== RemoteError =====

/// An error as Nameko puts it on the wire: `{exc_type, exc_path, exc_args, value}`.
///
/// This is the `error` object of an RPC reply and the body a Python caller turns into
/// an exception. A caller that does not know `exc_path` raises
/// `RemoteError("<exc_type> <value>")`, which is also how this type displays.
///
/// # Examples
///
/// ```
/// use nameko_core::RemoteError;
///
/// let err = RemoteError::new("UserNotFound", "no user 7");
/// assert_eq!(err.to_string(), "UserNotFound no user 7");
/// let json = serde_json::to_string(&err).unwrap();
/// assert_eq!(
///     json,
///     r#"{"exc_type":"UserNotFound","exc_path":"UserNotFound","exc_args":["no user 7"],"value":"no user 7"}"#
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteError {
    exc_type: String,
    exc_path: String,
    exc_args: Vec<Value>,
    value: String,
}

impl RemoteError {
    /// An error of type `exc_type` with one argument, `message`, as a Python exception
    /// raised with one string argument would be sent. `exc_path` defaults to
    /// `exc_type`; change it with [`with_path`](Self::with_path).
    pub fn new(exc_type: impl Into<String>, message: impl Into<String>) -> Self {
        let exc_type = exc_type.into();
        let message = message.into();
        Self {
            exc_path: exc_type.clone(),
            exc_type,
            exc_args: vec![Value::String(message.clone())],
            value: message,
        }
    }

    /// Builds an error from all four wire fields. `exc_args` are made "safe" the way
    /// Nameko does it: strings stay, maps and lists are converted item by item, and
    /// every other value becomes its Python `str()` (`42` → `"42"`, `null` → `"None"`).
    pub fn from_parts(
        exc_type: impl Into<String>,
        exc_path: impl Into<String>,
        exc_args: impl IntoIterator<Item = Value>,
        value: impl Into<String>,
    ) -> Self {
        Self {
            exc_type: exc_type.into(),
            exc_path: exc_path.into(),
            exc_args: exc_args.into_iter().map(make_safe).collect(),
            value: value.into(),
        }
    }

    /// Sets `exc_path`, the dotted path a Python caller looks up to rebuild the
    /// exception class.
    #[must_use]
    pub fn with_path(mut self, exc_path: impl Into<String>) -> Self {
        self.exc_path = exc_path.into();
        self
    }

    /// Nameko's `MethodNotFound`: the service has no entrypoint of that name.
    pub fn method_not_found(method: &str) -> Self {
        Self::nameko_exception("MethodNotFound", method)
    }

    /// Nameko's `MalformedRequest`: the message could not be read as a request.
    pub fn malformed_request(message: &str) -> Self {
        Self::nameko_exception("MalformedRequest", message)
    }

    /// Nameko's `IncorrectSignature`: the arguments do not fit the method. The message
    /// uses Python's `TypeError` wording, since Python callers read it.
    pub fn incorrect_signature(message: &str) -> Self {
        Self::nameko_exception("IncorrectSignature", message)
    }

    /// Nameko's `UnserializableValueError`: the result could not be serialized.
    pub fn unserializable_value(repr: &str) -> Self {
        Self {
            exc_type: "UnserializableValueError".into(),
            exc_path: "nameko.exceptions.UnserializableValueError".into(),
            exc_args: Vec::new(),
            value: format!("Unserializable value: `{repr}`"),
        }
    }

    fn nameko_exception(name: &str, message: &str) -> Self {
        Self::new(name, message).with_path(format!("nameko.exceptions.{name}"))
    }

    /// The exception's class name, e.g. `ValueError`.
    pub fn exc_type(&self) -> &str {
        &self.exc_type
    }

    /// The exception's module path and class name, e.g. `builtins.ValueError`.
    pub fn exc_path(&self) -> &str {
        &self.exc_path
    }

    /// The exception's arguments, made safe.
    pub fn exc_args(&self) -> &[Value] {
        &self.exc_args
    }

    /// The exception's `str()`.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.exc_type, self.value)
    }
}

impl StdError for RemoteError {}

/// Nameko's `safe_for_serialization`: strings unchanged, containers converted item by
/// item, everything else rendered as Python would `str()` it.
fn make_safe(value: Value) -> Value {
    match value {
        Value::String(_) => value,
        Value::Array(items) => Value::Array(items.into_iter().map(make_safe).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, make_safe(v))).collect()),
        Value::Null => Value::String("None".into()),
        Value::Bool(true) => Value::String("True".into()),
        Value::Bool(false) => Value::String("False".into()),
        Value::Number(n) => Value::String(match n.as_f64() {
            Some(f) if n.is_f64() && f.is_finite() && f.fract() == 0.0 => format!("{f:.1}"),
            _ => n.to_string(),
        }),
    }
}

// ===== HandlerError =====

/// What a handler's error becomes inside the container: the wire form, the HTTP status
/// it maps to, whether it is *expected* (logged at WARN instead of ERROR, like Nameko's
/// `expected_exceptions`), and the original error for logs and providers.
#[derive(Debug)]
pub struct HandlerError {
    remote: RemoteError,
    status: u16,
    expected: bool,
    source: Option<BoxError>,
}

impl HandlerError {
    /// An unexpected error with status 500.
    pub fn new(remote: RemoteError) -> Self {
        Self {
            remote,
            status: 500,
            expected: false,
            source: None,
        }
    }

    /// Sets the HTTP status this error maps to.
    #[must_use]
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Marks the error as expected: part of the method's contract, logged at WARN.
    #[must_use]
    pub fn expected(mut self) -> Self {
        self.expected = true;
        self
    }

    /// Keeps the original error, for logs and for providers' `worker_result`.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The error as it goes on the wire.
    pub fn remote(&self) -> &RemoteError {
        &self.remote
    }

    /// Consumes the error, keeping only its wire form.
    pub fn into_remote(self) -> RemoteError {
        self.remote
    }

    /// The HTTP status this error maps to (default 500).
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Whether the error is part of the method's contract.
    pub fn is_expected(&self) -> bool {
        self.expected
    }

    /// The original error, when one was kept.
    pub fn original(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        self.source.as_deref()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.remote.fmt(f)
    }
}

impl StdError for HandlerError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn StdError + 'static))
    }
}

/// Turns a handler's error type into a [`HandlerError`].
///
/// Implemented for [`RemoteError`], [`HandlerError`], [`BoxError`] and
/// [`Infallible`]; `#[derive(nameko::RemoteError)]` implements it for your own error
/// enums. By hand:
///
/// ```
/// use nameko_core::{HandlerError, IntoHandlerError, RemoteError};
///
/// #[derive(Debug)]
/// struct OutOfStock(String);
///
/// impl IntoHandlerError for OutOfStock {
///     fn into_handler_error(self) -> HandlerError {
///         HandlerError::new(RemoteError::new("OutOfStock", format!("no {} left", self.0)))
///             .with_status(409)
///             .expected()
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be returned as a nameko handler error",
    note = "derive `nameko::RemoteError` for it, or implement `nameko::core::IntoHandlerError`"
)]
pub trait IntoHandlerError {
    /// Converts the error.
    fn into_handler_error(self) -> HandlerError;
}

impl IntoHandlerError for HandlerError {
    fn into_handler_error(self) -> HandlerError {
        self
    }
}

impl IntoHandlerError for RemoteError {
    fn into_handler_error(self) -> HandlerError {
        HandlerError::new(self)
    }
}

impl IntoHandlerError for Infallible {
    fn into_handler_error(self) -> HandlerError {
        match self {}
    }
}

impl IntoHandlerError for BoxError {
    /// A [`RemoteError`] or [`HandlerError`] inside the box is unwrapped; any other
    /// error is sent with `exc_type` `Error` and its `Display` as the message.
    fn into_handler_error(self) -> HandlerError {
        let this = match self.downcast::<HandlerError>() {
            Ok(err) => return *err,
            Err(this) => this,
        };
        match this.downcast::<RemoteError>() {
            Ok(remote) => HandlerError::new(*remote),
            Err(other) => HandlerError::new(RemoteError::new("Error", other.to_string())).with_source(other),
        }
    }
}

// ===== framework errors =====

/// An extension (entrypoint or dependency provider) could not set up or start.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SetupError {
    message: String,
    #[source]
    source: Option<BoxError>,
}

impl SetupError {
    /// A setup error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// A setup error caused by another error.
    pub fn with_source(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

/// A dependency provider's `get_dependency` failed for one worker; the call fails with
/// this error, the container keeps serving.
#[derive(Debug, thiserror::Error)]
#[error("service `{service}`: dependency `{field}` ({type_name}) failed: {source}")]
pub struct DependencyError {
    pub(crate) service: &'static str,
    pub(crate) field: &'static str,
    pub(crate) type_name: &'static str,
    #[source]
    pub(crate) source: BoxError,
}

impl DependencyError {
    /// The service whose worker could not be built.
    pub fn service(&self) -> &str {
        self.service
    }

    /// The field whose provider failed.
    pub fn field(&self) -> &str {
        self.field
    }

    /// The field's type.
    pub fn type_name(&self) -> &str {
        self.type_name
    }
}

impl IntoHandlerError for DependencyError {
    fn into_handler_error(self) -> HandlerError {
        HandlerError::new(RemoteError::new("DependencyError", self.to_string())).with_source(self)
    }
}

/// The container did not start a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The container is stopping and takes no new work.
    #[error("the service container is stopping and takes no new work")]
    Stopping,
    /// The container was killed.
    #[error("the service container was killed")]
    Killed,
}

/// A worker did not produce a result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The handler returned an error, or a dependency could not be provided.
    #[error(transparent)]
    Failed(HandlerError),
    /// The handler or one of the worker's hooks panicked.
    #[error("the worker panicked: {0}")]
    Panicked(String),
    /// The container was killed while the worker ran.
    #[error("the worker was cancelled because the container was killed")]
    Killed,
    /// The worker was never started.
    #[error(transparent)]
    NotStarted(SpawnError),
}

impl WorkerError {
    /// The error as it goes back to a caller on the wire.
    pub fn to_remote_error(&self) -> RemoteError {
        match self {
            Self::Failed(err) => err.remote().clone(),
            Self::Panicked(message) => RemoteError::new("WorkerPanicked", message.clone()),
            Self::Killed | Self::NotStarted(SpawnError::Killed) => {
                RemoteError::new("ContainerBeingKilled", self.to_string())
                    .with_path("nameko.exceptions.ContainerBeingKilled")
            }
            Self::NotStarted(_) => RemoteError::new("ContainerStopping", self.to_string()),
        }
    }
}

// ===== HandlerResult =====

/// What an entrypoint method returns: `Result<T, E>` with an error the framework can
/// send (`E: IntoHandlerError`). Names `T` for generated code.
#[diagnostic::on_unimplemented(
    message = "an entrypoint method must return `Result<T, E>`, not `{Self}`",
    note = "E must implement `IntoHandlerError` (derive `nameko::RemoteError`, or use `nameko::core::RemoteError`)"
)]
pub trait HandlerResult: Send + 'static {
    /// The success type.
    type Ok: Send + 'static;
    /// The error type.
    type Err: IntoHandlerError + Send + 'static;

    /// The result itself.
    fn into_result(self) -> Result<Self::Ok, Self::Err>;
}

impl<T: Send + 'static, E: IntoHandlerError + Send + 'static> HandlerResult for Result<T, E> {
    type Ok = T;
    type Err = E;

    fn into_result(self) -> Result<T, E> {
        self
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn make_safe_matches_nameko() {
        let err = RemoteError::from_parts(
            "MyError",
            "svc.MyError",
            [
                json!("boom"),
                json!(42),
                json!({"k": [1, 2]}),
                json!(null),
                json!(true),
                json!(3.0),
            ],
            "x",
        );
        assert_eq!(
            err.exc_args(),
            &[
                json!("boom"),
                json!("42"),
                json!({"k": ["1", "2"]}),
                json!("None"),
                json!("True"),
                json!("3.0")
            ]
        );
    }

    #[test]
    fn wire_key_order() {
        let text = serde_json::to_string(&RemoteError::method_not_found("nope")).unwrap();
        assert_eq!(
            text,
            r#"{"exc_type":"MethodNotFound","exc_path":"nameko.exceptions.MethodNotFound","exc_args":["nope"],"value":"nope"}"#
        );
    }

    #[test]
    fn boxed_errors_unwrap_known_types() {
        let boxed: BoxError = Box::new(RemoteError::new("A", "b"));
        assert_eq!(boxed.into_handler_error().remote().exc_type(), "A");
        let boxed: BoxError = "plain".into();
        let err = boxed.into_handler_error();
        assert_eq!(err.remote().to_string(), "Error plain");
        assert!(err.original().is_some());
    }
}
