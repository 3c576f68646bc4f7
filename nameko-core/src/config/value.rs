//! The merged configuration tree: [`ConfigValue`] nodes that remember where they came from.

use std::fmt;
use std::sync::Arc;

/// Where a configuration value came from.
///
/// Displays like `config.yaml:12:5` for a value read from a YAML file (line and column are
/// 1-based), or just the source for values without a position: `environment
/// NAMEKO_MAX_WORKERS`, `--define max_workers=3`, `--broker`, `default`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    source: Arc<str>,
    position: Option<(usize, usize)>,
}

impl Location {
    pub(crate) fn new(source: impl Into<Arc<str>>, position: Option<(usize, usize)>) -> Self {
        Self {
            source: source.into(),
            position,
        }
    }

    pub(crate) fn at(&self, line: usize, column: usize) -> Self {
        Self {
            source: Arc::clone(&self.source),
            position: Some((line, column)),
        }
    }

    pub(crate) fn default_value() -> Self {
        Self::new("default", None)
    }

    /// The source: a file path, `<string>`, `environment NAMEKO_X`, `--define KEY=VALUE`,
    /// `--broker` or `default`.
    #[must_use]
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The 1-based line, when the value was read from YAML text.
    #[must_use]
    pub fn line(&self) -> Option<usize> {
        self.position.map(|(line, _)| line)
    }

    /// The 1-based column, when the value was read from YAML text.
    #[must_use]
    pub fn column(&self) -> Option<usize> {
        self.position.map(|(_, column)| column)
    }

    /// Whether this is a built-in default rather than something the user configured.
    #[must_use]
    pub fn is_default(&self) -> bool {
        self.position.is_none() && &*self.source == "default"
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => write!(f, "{}:{line}:{column}", self.source),
            None => f.write_str(&self.source),
        }
    }
}

/// The data of one node of the tree.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Node {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<ConfigValue>),
    Map(Vec<Entry>),
}

/// One `key: value` pair of a mapping, with the location of the key.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) key_location: Location,
    pub(crate) value: ConfigValue,
}

/// A node of the merged configuration tree: null, boolean, integer, float, string, sequence
/// or mapping (mappings keep their key order), with the [`Location`] it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigValue {
    pub(crate) node: Node,
    pub(crate) location: Location,
    /// Set when this is null because `${VAR}` was unset and had no default.
    pub(crate) unset_var: Option<String>,
}

impl ConfigValue {
    pub(crate) fn new(node: Node, location: Location) -> Self {
        Self {
            node,
            location,
            unset_var: None,
        }
    }

    /// Where this value came from.
    #[must_use]
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Whether this is null (`~`, `null`, an empty value, or an unset `${VAR}`).
    #[must_use]
    pub fn is_null(&self) -> bool {
        matches!(self.node, Node::Null)
    }

    /// If this is null because a lone `${VAR}` was unset and had no default, the variable's name.
    #[must_use]
    pub fn unset_var(&self) -> Option<&str> {
        self.unset_var.as_deref()
    }

    /// The boolean, if this is one.
    #[must_use]
    pub fn as_bool(&self) -> Option<bool> {
        match self.node {
            Node::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The integer, if this is an integer that fits an `i64`.
    #[must_use]
    pub fn as_i64(&self) -> Option<i64> {
        match self.node {
            Node::Int(i) => i64::try_from(i).ok(),
            _ => None,
        }
    }

    /// The integer, if this is an integer that fits a `u64`.
    #[must_use]
    pub fn as_u64(&self) -> Option<u64> {
        match self.node {
            Node::Int(i) => u64::try_from(i).ok(),
            _ => None,
        }
    }

    /// The number as a float, if this is a float or an integer.
    #[must_use]
    #[expect(
        clippy::cast_precision_loss,
        reason = "an integer read as a float may round, as in YAML"
    )]
    pub fn as_f64(&self) -> Option<f64> {
        match self.node {
            Node::Float(f) => Some(f),
            Node::Int(i) => Some(i as f64),
            _ => None,
        }
    }

    /// The string, if this is a string.
    #[must_use]
    pub fn as_str(&self) -> Option<&str> {
        match &self.node {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The items, if this is a sequence.
    #[must_use]
    pub fn as_seq(&self) -> Option<&[ConfigValue]> {
        match &self.node {
            Node::Seq(items) => Some(items),
            _ => None,
        }
    }

    /// Whether this is a mapping.
    #[must_use]
    pub fn is_map(&self) -> bool {
        matches!(self.node, Node::Map(_))
    }

    /// The value of `key` (matched exactly), if this is a mapping that has it.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&ConfigValue> {
        match &self.node {
            Node::Map(entries) => entries.iter().find(|e| e.key == key).map(|e| &e.value),
            _ => None,
        }
    }

    /// The entries in order, if this is a mapping; empty otherwise.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &ConfigValue)> {
        let entries: &[Entry] = match &self.node {
            Node::Map(entries) => entries,
            _ => &[],
        };
        entries.iter().map(|e| (e.key.as_str(), &e.value))
    }

    /// A short name of this value's type: `null`, `a boolean`, `an integer`, `a float`,
    /// `a string`, `a sequence` or `a mapping`.
    #[must_use]
    pub fn type_name(&self) -> &'static str {
        match self.node {
            Node::Null => "null",
            Node::Bool(_) => "a boolean",
            Node::Int(_) => "an integer",
            Node::Float(_) => "a float",
            Node::Str(_) => "a string",
            Node::Seq(_) => "a sequence",
            Node::Map(_) => "a mapping",
        }
    }

    /// A short description for messages: the scalar itself (strings quoted), or the type of a
    /// collection.
    pub(crate) fn describe(&self) -> String {
        match &self.node {
            Node::Null => "null".to_owned(),
            Node::Bool(b) => b.to_string(),
            Node::Int(i) => i.to_string(),
            Node::Float(f) => format_float(*f),
            Node::Str(s) => format!("{s:?}"),
            Node::Seq(_) | Node::Map(_) => self.type_name().to_owned(),
        }
    }

    /// This value as JSON. Floats that JSON cannot represent (`.inf`, `.nan`) become the
    /// strings `".inf"`, `"-.inf"` and `".nan"`; integers beyond the range of JSON numbers
    /// become strings.
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match &self.node {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(*b),
            Node::Int(i) => {
                serde_json::Number::from_i128(*i).map_or_else(|| Value::String(i.to_string()), Value::Number)
            }
            Node::Float(f) => {
                serde_json::Number::from_f64(*f).map_or_else(|| Value::String(format_float(*f)), Value::Number)
            }
            Node::Str(s) => Value::String(s.clone()),
            Node::Seq(items) => Value::Array(items.iter().map(Self::to_json).collect()),
            Node::Map(entries) => Value::Object(entries.iter().map(|e| (e.key.clone(), e.value.to_json())).collect()),
        }
    }
}

fn format_float(f: f64) -> String {
    if f.is_nan() {
        ".nan".to_owned()
    } else if f.is_infinite() {
        if f > 0.0 { ".inf" } else { "-.inf" }.to_owned()
    } else {
        format!("{f:?}")
    }
}
