//! RPC arguments: the `{"args": [...], "kwargs": {...}}` body, and binding it to a
//! method's parameters with Python's rules and wording.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use nameko_core::{
    RemoteError,
    redact::{CallArgs, bind_arguments},
};

/// The arguments of an RPC request, as Nameko sends them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RpcArgs {
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
}

impl RpcArgs {
    /// Positional arguments only (what typed clients send).
    pub fn positional(args: impl IntoIterator<Item = Value>) -> Self {
        Self {
            args: args.into_iter().collect(),
            kwargs: Map::new(),
        }
    }

    /// Keyword arguments only.
    pub fn keywords(kwargs: Map<String, Value>) -> Self {
        Self {
            args: Vec::new(),
            kwargs,
        }
    }

    /// Reads a request body.
    ///
    /// # Errors
    ///
    /// Nameko's `MalformedRequest` when the body is not a JSON object with a list
    /// `args` and an object `kwargs`.
    pub fn from_body(body: &[u8]) -> Result<Self, RemoteError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|err| RemoteError::malformed_request(&format!("the body is not valid JSON: {err}")))?;
        let Value::Object(mut map) = value else {
            return Err(RemoteError::malformed_request(
                "the body must be a JSON object with `args` and `kwargs`",
            ));
        };
        let (Some(args), Some(kwargs)) = (map.remove("args"), map.remove("kwargs")) else {
            return Err(RemoteError::malformed_request("Message missing `args` or `kwargs`"));
        };
        let Value::Array(args) = args else {
            return Err(RemoteError::malformed_request("`args` must be a list"));
        };
        let Value::Object(kwargs) = kwargs else {
            return Err(RemoteError::malformed_request("`kwargs` must be an object"));
        };
        Ok(Self { args, kwargs })
    }

    /// The request body, `{"args": [...], "kwargs": {...}}` in that key order.
    pub fn to_body(&self) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            args: &'a [Value],
            kwargs: &'a Map<String, Value>,
        }
        serde_json::to_vec(&Body {
            args: &self.args,
            kwargs: &self.kwargs,
        })
        .expect("JSON values always serialize")
    }

    /// Binds the arguments to `params` as Python binds a call: positional arguments
    /// first, then keyword arguments by name. Returns one value per parameter, in
    /// order; an omitted optional parameter is `null`.
    ///
    /// # Errors
    ///
    /// Nameko's `IncorrectSignature`, worded as Python's `TypeError`: too many
    /// positional arguments, an unexpected or repeated keyword, a missing argument.
    pub fn bind(self, method: &str, params: &[Param]) -> Result<Vec<Value>, RemoteError> {
        let Self { args, mut kwargs } = self;
        if args.len() > params.len() {
            let takes = match params.len() {
                1 => "1 positional argument".to_owned(),
                n => format!("{n} positional arguments"),
            };
            let given = match args.len() {
                1 => "1 was given".to_owned(),
                n => format!("{n} were given"),
            };
            return Err(RemoteError::incorrect_signature(&format!(
                "{method}() takes {takes} but {given}"
            )));
        }
        let positional = args.len();
        let mut bound: Vec<Option<Value>> = args.into_iter().map(Some).collect();
        bound.resize(params.len(), None);
        for (index, param) in params.iter().enumerate() {
            if let Some(value) = kwargs.remove(param.name) {
                if index < positional {
                    return Err(RemoteError::incorrect_signature(&format!(
                        "{method}() got multiple values for argument '{}'",
                        param.name
                    )));
                }
                bound[index] = Some(value);
            }
        }
        if let Some(unexpected) = kwargs.keys().next() {
            return Err(RemoteError::incorrect_signature(&format!(
                "{method}() got an unexpected keyword argument '{unexpected}'"
            )));
        }
        let missing: Vec<&str> = params
            .iter()
            .zip(&bound)
            .filter(|(param, value)| value.is_none() && !param.optional)
            .map(|(param, _)| param.name)
            .collect();
        if !missing.is_empty() {
            let names: Vec<String> = missing.iter().map(|n| format!("'{n}'")).collect();
            let list = match names.as_slice() {
                [one] => one.clone(),
                [a, b] => format!("{a} and {b}"),
                [init @ .., last] => format!("{}, and {last}", init.join(", ")),
                [] => String::new(),
            };
            let noun = if missing.len() == 1 { "argument" } else { "arguments" };
            return Err(RemoteError::incorrect_signature(&format!(
                "{method}() missing {} required positional {noun}: {list}",
                missing.len()
            )));
        }
        Ok(bound.into_iter().map(|v| v.unwrap_or(Value::Null)).collect())
    }
}

/// One parameter of an RPC method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Param {
    name: &'static str,
    optional: bool,
}

impl Param {
    /// A parameter that must be given.
    pub const fn required(name: &'static str) -> Self {
        Self { name, optional: false }
    }

    /// A parameter that may be omitted (an `Option<T>`).
    pub const fn optional(name: &'static str) -> Self {
        Self { name, optional: true }
    }

    /// The parameter's name, as keyword arguments address it.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

/// Decodes one bound argument into its parameter's type.
///
/// # Errors
///
/// `IncorrectSignature` naming the method, the parameter and the path inside it where
/// the value did not fit.
pub fn decode_arg<T: DeserializeOwned>(method: &str, param: &str, value: Value) -> Result<T, RemoteError> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|err| {
        let path = err.path().to_string();
        let at = if path == "." {
            String::new()
        } else {
            format!(" at `{path}`")
        };
        RemoteError::incorrect_signature(&format!("{method}() argument '{param}'{at}: {}", err.into_inner()))
    })
}

/// A request type an RPC entrypoint decodes from [`RpcArgs`] before it starts a
/// worker: decoding errors never take a worker slot.
///
/// Implemented for [`RpcArgs`] (no decoding) and `()` (no parameters);
/// `#[nameko::service]` implements it for each method's parameters. By hand:
///
/// ```
/// use nameko_core::RemoteError;
/// use nameko_extensions::rpc::{FromRpcArgs, Param, RpcArgs, decode_arg};
///
/// struct Add { a: i64, b: i64 }
///
/// impl FromRpcArgs for Add {
///     fn from_rpc_args(args: RpcArgs, method: &str) -> Result<Self, RemoteError> {
///         const PARAMS: &[Param] = &[Param::required("a"), Param::required("b")];
///         let mut values = args.bind(method, PARAMS)?.into_iter();
///         let mut next = |name| decode_arg(method, name, values.next().unwrap_or_default());
///         Ok(Add { a: next("a")?, b: next("b")? })
///     }
/// }
///
/// let err = Add::from_rpc_args(RpcArgs::positional([1.into()]), "add").err().unwrap();
/// assert_eq!(err.value(), "add() missing 1 required positional argument: 'b'");
/// ```
pub trait FromRpcArgs: Sized + Send + 'static {
    /// The method's parameter names, in order, as callers name them: positional
    /// arguments are shown under these names in logs and monitoring, and
    /// [sensitive argument](nameko_core::redact) paths start with one. `#[rpc]` fills
    /// it in; without names, arguments are shown as `{"args": [...], "kwargs": {...}}`.
    const PARAMETERS: &'static [&'static str] = &[];

    /// Decodes the arguments of a call to `method`.
    ///
    /// # Errors
    ///
    /// `IncorrectSignature` when they do not fit.
    fn from_rpc_args(args: RpcArgs, method: &str) -> Result<Self, RemoteError>;
}

/// The arguments of one RPC request, kept as its body and decoded only when logs or
/// monitoring read them ([`CallArgs`]).
pub(crate) struct RequestArgs {
    pub(crate) body: bytes::Bytes,
    pub(crate) params: &'static [&'static str],
}

impl CallArgs for RequestArgs {
    fn arguments(&self) -> Option<Map<String, Value>> {
        let RpcArgs { args, kwargs } = RpcArgs::from_body(&self.body).ok()?;
        Some(bind_arguments(self.params, args, Value::Object(kwargs)))
    }
}

impl FromRpcArgs for RpcArgs {
    fn from_rpc_args(args: RpcArgs, _method: &str) -> Result<Self, RemoteError> {
        Ok(args)
    }
}

impl FromRpcArgs for () {
    fn from_rpc_args(args: RpcArgs, method: &str) -> Result<Self, RemoteError> {
        args.bind(method, &[]).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const ADD: &[Param] = &[Param::required("a"), Param::required("b")];

    fn kw(pairs: &[(&str, Value)]) -> Map<String, Value> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
    }

    #[test]
    fn positional_then_keywords() {
        let args = RpcArgs {
            args: vec![json!(1)],
            kwargs: kw(&[("b", json!(2))]),
        };
        assert_eq!(args.bind("add", ADD).unwrap(), [json!(1), json!(2)]);
    }

    #[test]
    fn python_wording() {
        let cases = [
            (
                RpcArgs::positional([json!(1)]),
                "add() missing 1 required positional argument: 'b'",
            ),
            (
                RpcArgs::default(),
                "add() missing 2 required positional arguments: 'a' and 'b'",
            ),
            (
                RpcArgs::positional([json!(1), json!(2), json!(3)]),
                "add() takes 2 positional arguments but 3 were given",
            ),
            (
                RpcArgs {
                    args: vec![json!(1)],
                    kwargs: kw(&[("a", json!(2))]),
                },
                "add() got multiple values for argument 'a'",
            ),
            (
                RpcArgs {
                    args: vec![json!(1), json!(2)],
                    kwargs: kw(&[("c", json!(3))]),
                },
                "add() got an unexpected keyword argument 'c'",
            ),
        ];
        for (args, message) in cases {
            let err = args.bind("add", ADD).unwrap_err();
            assert_eq!(err.exc_type(), "IncorrectSignature");
            assert_eq!(err.value(), message);
        }
        let three = [Param::required("a"), Param::required("b"), Param::required("c")];
        let err = RpcArgs::default().bind("f", &three).unwrap_err();
        assert_eq!(
            err.value(),
            "f() missing 3 required positional arguments: 'a', 'b', and 'c'"
        );
        let err = RpcArgs::positional([json!(1)]).bind("f", &[]).unwrap_err();
        assert_eq!(err.value(), "f() takes 0 positional arguments but 1 was given");
    }

    #[test]
    fn optional_parameters_may_be_omitted() {
        let params = [Param::required("a"), Param::optional("b")];
        assert_eq!(
            RpcArgs::positional([json!(1)]).bind("f", &params).unwrap(),
            [json!(1), Value::Null]
        );
    }

    #[test]
    fn type_mismatch_names_the_path() {
        #[derive(serde::Deserialize, Debug)]
        struct Order {
            #[expect(dead_code, reason = "decoded only")]
            items: Vec<u32>,
        }
        let err = decode_arg::<Order>("place", "order", json!({"items": [1, "x"]})).unwrap_err();
        assert!(
            err.value()
                .starts_with("place() argument 'order' at `items[1]`: invalid type: string"),
            "{}",
            err.value()
        );
        let err = decode_arg::<i64>("add", "a", json!(1e30)).unwrap_err();
        assert!(
            err.value()
                .starts_with("add() argument 'a': invalid type: floating point"),
            "{}",
            err.value()
        );
    }

    #[test]
    fn malformed_bodies() {
        for (body, message) in [
            (&br#"{"args": []}"#[..], "Message missing `args` or `kwargs`"),
            (b"[1, 2]", "the body must be a JSON object with `args` and `kwargs`"),
            (br#"{"args": {}, "kwargs": {}}"#, "`args` must be a list"),
        ] {
            let err = RpcArgs::from_body(body).unwrap_err();
            assert_eq!(err.exc_type(), "MalformedRequest");
            assert_eq!(err.value(), message);
        }
        assert!(
            RpcArgs::from_body(b"{nope")
                .unwrap_err()
                .value()
                .starts_with("the body is not valid JSON")
        );
        let args = RpcArgs::from_body(br#"{"args": [1, 2], "kwargs": {}}"#).unwrap();
        assert_eq!(
            String::from_utf8(args.to_body()).unwrap(),
            r#"{"args":[1,2],"kwargs":{}}"#
        );
    }
}
