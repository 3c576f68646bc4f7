//! A call's arguments as logs and monitoring see them, with sensitive ones redacted:
//! Nameko's `sensitive_arguments` and `get_redacted_args`.
//!
//! An entrypoint declares the paths of its sensitive arguments
//! ([`Entrypoint::sensitive_arguments`](crate::Entrypoint::sensitive_arguments),
//! `#[rpc(sensitive = ["password"])]`); it hands each worker its [`CallArgs`]; and
//! [`WorkerContext::redacted_arguments`](crate::WorkerContext::redacted_arguments)
//! gives them by parameter name with every value a path names replaced by
//! [`REDACTED`]. The framework's worker log lines carry them so.
//!
//! A path is a parameter's name, then any number of `.key` (a key of an object) and
//! `[index]` (an item of an array): `password`, `payload.card_number`, `items[0]`,
//! `order.lines[2].card`. A path that matches nothing is ignored, as in Nameko.
//!
//! ```
//! use nameko_core::redact::{REDACTED, bind_arguments, redact};
//! use serde_json::json;
//!
//! let mut args = bind_arguments(&["user", "password"], vec![json!("ada")], json!({"password": "s3cret"}));
//! redact(&mut args, &["password"]);
//! assert_eq!(serde_json::Value::Object(args), json!({"user": "ada", "password": REDACTED}));
//! ```

use std::fmt;

use serde_json::{Map, Value};

/// What a redacted value is replaced by (Nameko's).
pub const REDACTED: &str = "********";

/// The arguments of one call, as the entrypoint received them: handed to the worker
/// with [`WorkerSlot::call_args`](crate::WorkerSlot::call_args) and decoded only when
/// something reads them (a failure logged, a DEBUG line, a monitoring hook).
pub trait CallArgs: Send + Sync + 'static {
    /// The arguments by parameter name (see [`bind_arguments`]), or `None` when they
    /// cannot be told.
    fn arguments(&self) -> Option<Map<String, Value>>;
}

impl CallArgs for Map<String, Value> {
    fn arguments(&self) -> Option<Map<String, Value>> {
        Some(self.clone())
    }
}

/// Binds positional and keyword arguments to parameter names, as Python's
/// `inspect.getcallargs` does for monitoring: the `i`-th positional argument goes to
/// `params[i]`, keyword arguments by their names. Positional arguments beyond `params`
/// are kept under `"args"` (an array) and a `kwargs` that is not an object under
/// `"kwargs"`, so nothing is hidden; with no `params` at all (a handler taking the raw
/// arguments) the result is `{"args": [...], "kwargs": {...}}`.
pub fn bind_arguments(params: &[&str], args: Vec<Value>, kwargs: Value) -> Map<String, Value> {
    let mut bound = Map::new();
    if params.is_empty() {
        bound.insert("args".to_owned(), Value::Array(args));
        bound.insert("kwargs".to_owned(), kwargs);
        return bound;
    }
    let mut extra = Vec::new();
    for (i, value) in args.into_iter().enumerate() {
        match params.get(i) {
            Some(name) => {
                bound.insert((*name).to_owned(), value);
            }
            None => extra.push(value),
        }
    }
    match kwargs {
        Value::Object(kwargs) => bound.extend(kwargs),
        Value::Null => {}
        other => {
            bound.insert("kwargs".to_owned(), other);
        }
    }
    if !extra.is_empty() {
        bound.insert("args".to_owned(), Value::Array(extra));
    }
    bound
}

/// One step of a path.
#[derive(Debug, PartialEq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// Why a path cannot be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathError {
    path: String,
    why: &'static str,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sensitive argument path `{}`: {}; write a parameter's name, then `.key` or `[index]` steps \
             (`password`, `payload.card_number`, `items[0]`)",
            self.path, self.why
        )
    }
}

impl std::error::Error for PathError {}

/// Reads a path into its steps, the parameter's name first.
fn steps(path: &str) -> Result<Vec<Step<'_>>, PathError> {
    let error = |why| PathError {
        path: path.to_owned(),
        why,
    };
    let mut steps = Vec::new();
    let mut rest = path;
    let root_end = rest.find(['.', '[']).unwrap_or(rest.len());
    if root_end == 0 {
        return Err(error("it does not start with a parameter's name"));
    }
    steps.push(Step::Key(&rest[..root_end]));
    rest = &rest[root_end..];
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            if end == 0 {
                return Err(error("a `.` is not followed by a key"));
            }
            steps.push(Step::Key(&after[..end]));
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']').ok_or_else(|| error("a `[` is not closed"))?;
            let index = after[..end]
                .parse()
                .map_err(|_| error("an index is not a whole number"))?;
            steps.push(Step::Index(index));
            rest = &after[end + 1..];
        } else {
            return Err(error("a `]` is not followed by `.` or `[`"));
        }
    }
    Ok(steps)
}

/// Checks that `path` reads as a sensitive argument path.
///
/// # Errors
///
/// When it does not start with a name, has an empty key or an index that is not a
/// whole number, or a `[` without its `]`.
pub fn check_path(path: &str) -> Result<(), PathError> {
    steps(path).map(drop)
}

/// Replaces every value a path names by [`REDACTED`]. Paths that match nothing, or do
/// not read as paths, are ignored.
pub fn redact(arguments: &mut Map<String, Value>, paths: &[&str]) {
    for path in paths {
        let Ok(steps) = steps(path) else { continue };
        let [Step::Key(root), rest @ ..] = steps.as_slice() else {
            continue;
        };
        if let Some(value) = arguments.get_mut(*root).and_then(|value| walk(value, rest)) {
            *value = Value::String(REDACTED.to_owned());
        }
    }
}

/// The value `steps` lead to from `value`, if any.
fn walk<'v>(value: &'v mut Value, steps: &[Step<'_>]) -> Option<&'v mut Value> {
    let Some((step, rest)) = steps.split_first() else {
        return Some(value);
    };
    let next = match (step, value) {
        (Step::Key(key), Value::Object(map)) => map.get_mut(*key),
        (Step::Index(i), Value::Array(items)) => items.get_mut(*i),
        _ => None,
    }?;
    walk(next, rest)
}

/// The most of the redacted arguments a log line shows, in bytes.
pub(crate) const LOGGED_ARGUMENTS_MAX: usize = 1024;

/// Redacted arguments as a log line shows them: compact JSON, cut at
/// [`LOGGED_ARGUMENTS_MAX`] bytes with `…` and the full length.
pub(crate) fn for_log(arguments: &Value) -> String {
    let text = arguments.to_string();
    if text.len() <= LOGGED_ARGUMENTS_MAX {
        return text;
    }
    let mut end = LOGGED_ARGUMENTS_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn redacted(arguments: Value, paths: &[&str]) -> Value {
        let Value::Object(mut map) = arguments else {
            panic!("an object")
        };
        redact(&mut map, paths);
        Value::Object(map)
    }

    #[test]
    fn paths_reach_into_objects_and_arrays() {
        let args = json!({
            "password": "p",
            "payload": {"card_number": "4111", "name": "ada"},
            "items": ["a", {"token": "t"}],
            "n": 1,
        });
        assert_eq!(
            redacted(
                args,
                &["password", "payload.card_number", "items[0]", "items[1].token", "n"]
            ),
            json!({
                "password": REDACTED,
                "payload": {"card_number": REDACTED, "name": "ada"},
                "items": [REDACTED, {"token": REDACTED}],
                "n": REDACTED,
            })
        );
    }

    #[test]
    fn a_whole_object_can_be_redacted_and_unmatched_paths_are_ignored() {
        let args = json!({"payload": {"a": 1}, "list": [1]});
        assert_eq!(
            redacted(
                args,
                &["payload", "missing", "list[3]", "list.key", "payload.a.b", "bad[x]"]
            ),
            json!({"payload": REDACTED, "list": [1]})
        );
    }

    #[test]
    fn bad_paths_are_told() {
        for (path, why) in [
            ("", "does not start with a parameter's name"),
            (".a", "does not start with a parameter's name"),
            ("a..b", "not followed by a key"),
            ("a[1", "not closed"),
            ("a[x]", "not a whole number"),
            ("a[1]b", "not followed by `.` or `[`"),
        ] {
            let err = check_path(path).unwrap_err().to_string();
            assert!(err.contains(why), "{path}: {err}");
        }
        check_path("order.lines[2].card").unwrap();
    }

    #[test]
    fn arguments_bind_by_position_then_name() {
        let bound = bind_arguments(&["a", "b"], vec![json!(1), json!(2), json!(3)], json!({"c": 4}));
        assert_eq!(Value::Object(bound), json!({"a": 1, "b": 2, "c": 4, "args": [3]}));
        let raw = bind_arguments(&[], vec![json!(1)], json!({"k": "v"}));
        assert_eq!(Value::Object(raw), json!({"args": [1], "kwargs": {"k": "v"}}));
    }

    #[test]
    fn debug_never_shows_the_auth_token() {
        let data = crate::ContextData::new()
            .with("auth_token", "tok-secret")
            .with("user_id", 7);
        let cx = crate::WorkerContext::new(
            "svc",
            crate::EntrypointInfo::new("m", "rpc").with_sensitive_arguments(&["password"]),
            data.clone(),
            crate::Config::default(),
            crate::Extensions::new(),
        );
        for shown in [format!("{data:?}"), format!("{cx:?}")] {
            assert!(!shown.contains("tok-secret") && shown.contains(REDACTED), "{shown}");
            assert!(shown.contains("\"user_id\": Number(7)"), "{shown}");
        }
        assert_eq!(cx.redacted_arguments(), None, "no arguments were handed");
    }

    #[test]
    fn a_context_redacts_the_arguments_it_was_handed() {
        let args = bind_arguments(&["user", "password"], vec![json!("ada"), json!("p")], Value::Null);
        let cx = crate::WorkerContext::with_call_args(
            "svc",
            crate::EntrypointInfo::new("m", "rpc").with_sensitive_arguments(&["password"]),
            crate::ContextData::new(),
            crate::Config::default(),
            crate::Extensions::new(),
            Some(Box::new(args)),
        );
        assert_eq!(
            cx.redacted_arguments(),
            Some(json!({"user": "ada", "password": REDACTED}))
        );
    }

    #[test]
    fn long_arguments_are_cut_for_logs() {
        let long = json!({"text": "é".repeat(2000)});
        let shown = for_log(&long);
        assert!(shown.len() < LOGGED_ARGUMENTS_MAX + 40, "{}", shown.len());
        assert!(
            shown.ends_with(&format!("… ({} bytes)", long.to_string().len())),
            "{shown}"
        );
        assert_eq!(for_log(&json!({"a": 1})), r#"{"a":1}"#);
    }
}
