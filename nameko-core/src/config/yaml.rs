//! YAML text to [`ConfigValue`] trees: parsing saphyr events into located raw nodes, then
//! resolving scalars (YAML 1.2 core schema, tags, `${VAR}` substitution).

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};

use super::error::{ConfigError, ConfigErrorKind, ConfigWarning};
use super::subst::substitute;
use super::value::{ConfigValue, Entry, Location, Node};

/// A parsed but unresolved YAML node.
#[derive(Clone, Debug)]
pub(crate) enum Raw {
    Scalar {
        value: String,
        style: ScalarStyle,
        tag: Option<Tag>,
        location: Location,
    },
    Seq {
        items: Vec<Raw>,
        tag: Option<Tag>,
        location: Location,
    },
    Map {
        entries: Vec<(Raw, Raw)>,
        tag: Option<Tag>,
        location: Location,
    },
}

impl Raw {
    fn location(&self) -> &Location {
        match self {
            Self::Scalar { location, .. } | Self::Seq { location, .. } | Self::Map { location, .. } => location,
        }
    }
}

/// How parsed nodes are located.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Locator<'a> {
    /// YAML text from a file or string: `base` with the event's line and column.
    Text(&'a Location),
    /// A value given somewhere else (an override, a substituted value): every node gets this.
    Fixed(&'a Location),
}

impl Locator<'_> {
    fn locate(self, span: &Span) -> Location {
        match self {
            Self::Text(base) => base.at(span.start.line(), span.start.col() + 1),
            Self::Fixed(location) => location.clone(),
        }
    }
}

/// A YAML syntax error: a message and, when known, a 1-based line and column.
#[derive(Debug)]
pub(crate) struct SyntaxError {
    pub(crate) position: Option<(usize, usize)>,
    pub(crate) message: String,
}

impl SyntaxError {
    fn at(span: &Span, message: impl Into<String>) -> Self {
        Self {
            position: Some((span.start.line(), span.start.col() + 1)),
            message: message.into(),
        }
    }

    /// The error located in the text (for [`Locator::Text`]) or at the fixed location, where
    /// positions inside the short value mean little and are left out.
    pub(crate) fn into_config_error(self, locator: Locator<'_>, key_path: &str) -> ConfigError {
        let (location, message) = match (locator, self.position) {
            (Locator::Text(base), Some((line, col))) => (base.at(line, col), self.message),
            (Locator::Text(base), None) => (base.clone(), self.message),
            (Locator::Fixed(location), _) => (location.clone(), format!("invalid YAML: {}", self.message)),
        };
        ConfigError::new(ConfigErrorKind::Syntax, Some(location), key_path, message)
    }
}

enum Frame {
    Seq {
        items: Vec<Raw>,
        tag: Option<Tag>,
        location: Location,
        anchor: usize,
    },
    Map {
        entries: Vec<(Raw, Raw)>,
        key: Option<Raw>,
        tag: Option<Tag>,
        location: Location,
        anchor: usize,
    },
}

/// Parses one YAML document. `Ok(None)` for an empty stream; more than one document is an
/// error.
pub(crate) fn parse(text: &str, locator: Locator<'_>) -> Result<Option<Raw>, SyntaxError> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Raw> = HashMap::new();
    let mut root: Option<Raw> = None;
    let mut documents = 0usize;
    while let Some(event) = parser.next_event() {
        let (event, span) = event.map_err(|e| SyntaxError {
            position: Some((e.marker().line(), e.marker().col() + 1)),
            message: e.info().to_owned(),
        })?;
        let (node, anchor) = match event {
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => continue,
            Event::StreamEnd => break,
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(SyntaxError::at(
                        &span,
                        "more than one YAML document; a config file holds exactly one",
                    ));
                }
                continue;
            }
            Event::Alias(id) => {
                let node = anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| SyntaxError::at(&span, "alias to an unknown anchor"))?;
                (node, 0)
            }
            Event::Scalar(value, style, anchor, tag) => (
                Raw::Scalar {
                    value: value.into_owned(),
                    style,
                    tag: tag.map(std::borrow::Cow::into_owned),
                    location: locator.locate(&span),
                },
                anchor,
            ),
            Event::SequenceStart(anchor, tag) => {
                stack.push(Frame::Seq {
                    items: Vec::new(),
                    tag: tag.map(std::borrow::Cow::into_owned),
                    location: locator.locate(&span),
                    anchor,
                });
                continue;
            }
            Event::MappingStart(anchor, tag) => {
                stack.push(Frame::Map {
                    entries: Vec::new(),
                    key: None,
                    tag: tag.map(std::borrow::Cow::into_owned),
                    location: locator.locate(&span),
                    anchor,
                });
                continue;
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq {
                    items,
                    tag,
                    location,
                    anchor,
                }) => (Raw::Seq { items, tag, location }, anchor),
                _ => return Err(SyntaxError::at(&span, "unbalanced sequence end")),
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map {
                    entries,
                    tag,
                    location,
                    anchor,
                    ..
                }) => (Raw::Map { entries, tag, location }, anchor),
                _ => return Err(SyntaxError::at(&span, "unbalanced mapping end")),
            },
        };
        if anchor != 0 {
            anchors.insert(anchor, node.clone());
        }
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }
    Ok(root)
}

/// Resolves raw nodes into values, substituting `${VAR}` when a lookup is given.
pub(crate) struct Resolver<'a> {
    pub(crate) lookup: Option<&'a dyn Fn(&str) -> Option<String>>,
    pub(crate) warnings: &'a mut Vec<ConfigWarning>,
}

fn is_core(tag: &Tag, suffix: &str) -> bool {
    (tag.is_yaml_core_schema() && tag.suffix == suffix)
        || (tag.handle.is_empty() && tag.suffix.strip_prefix("tag:yaml.org,2002:") == Some(suffix))
}

/// A tag as it would be written: `!!int`, `!env_var`, `!<tag:example.com:x>`.
fn show_tag(tag: &Tag) -> String {
    if tag.is_yaml_core_schema() {
        format!("!!{}", tag.suffix)
    } else if tag.handle == "!" {
        format!("!{}", tag.suffix)
    } else if tag.handle.is_empty() {
        format!("!<{}>", tag.suffix)
    } else {
        format!("{}{}", tag.handle, tag.suffix)
    }
}

fn is_local(tag: &Tag, name: &str) -> bool {
    tag.handle == "!" && tag.suffix == name
}

fn syntax(location: &Location, path: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::new(ConfigErrorKind::Syntax, Some(location.clone()), path, message)
}

fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl Resolver<'_> {
    pub(crate) fn resolve(&mut self, raw: &Raw, path: &str) -> Result<ConfigValue, ConfigError> {
        match raw {
            Raw::Scalar {
                value,
                style,
                tag,
                location,
            } => self.scalar(value, *style, tag.as_ref(), location, path),
            Raw::Seq { items, tag, location } => {
                if let Some(tag) = tag.as_ref().filter(|t| !is_core(t, "seq")) {
                    return Err(syntax(
                        location,
                        path,
                        format!("unsupported tag `{}` on a sequence", show_tag(tag)),
                    ));
                }
                let items = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.resolve(item, &format!("{path}[{i}]")))
                    .collect::<Result<_, _>>()?;
                Ok(ConfigValue::new(Node::Seq(items), location.clone()))
            }
            Raw::Map { entries, tag, location } => {
                if let Some(tag) = tag.as_ref().filter(|t| !is_core(t, "map")) {
                    return Err(syntax(
                        location,
                        path,
                        format!("unsupported tag `{}` on a mapping", show_tag(tag)),
                    ));
                }
                self.map(entries, location, path)
            }
        }
    }

    fn map(&mut self, raw_entries: &[(Raw, Raw)], location: &Location, path: &str) -> Result<ConfigValue, ConfigError> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut merged: Vec<ConfigValue> = Vec::new();
        for (key, value) in raw_entries {
            let Raw::Scalar {
                value: key_text,
                style,
                location: key_location,
                ..
            } = key
            else {
                return Err(syntax(
                    key.location(),
                    path,
                    "a mapping key must be a scalar, not a sequence or mapping",
                ));
            };
            if *style == ScalarStyle::Plain && key_text == "<<" {
                // YAML 1.1 merge key, as PyYAML supports it.
                let value = self.resolve(value, path)?;
                match &value.node {
                    Node::Map(_) => merged.push(value),
                    Node::Seq(items) if items.iter().all(ConfigValue::is_map) => {
                        merged.extend(items.iter().cloned());
                    }
                    _ => {
                        return Err(syntax(
                            value.location(),
                            path,
                            "the merge key `<<` needs a mapping or a list of mappings",
                        ));
                    }
                }
                continue;
            }
            let key_path = join_key(path, key_text);
            if entries.iter().any(|e| &e.key == key_text) {
                return Err(syntax(key_location, &key_path, format!("duplicate key `{key_text}`")));
            }
            let value = self.resolve(value, &key_path)?;
            entries.push(Entry {
                key: key_text.clone(),
                key_location: key_location.clone(),
                value,
            });
        }
        for map in merged {
            if let Node::Map(more) = map.node {
                for entry in more {
                    if !entries.iter().any(|e| e.key == entry.key) {
                        entries.push(entry);
                    }
                }
            }
        }
        Ok(ConfigValue::new(Node::Map(entries), location.clone()))
    }

    fn scalar(
        &mut self,
        value: &str,
        style: ScalarStyle,
        tag: Option<&Tag>,
        location: &Location,
        path: &str,
    ) -> Result<ConfigValue, ConfigError> {
        let node = |node| Ok(ConfigValue::new(node, location.clone()));
        let Some(tag) = tag else {
            return if style == ScalarStyle::Plain {
                self.substituted(value, true, location, path)
            } else {
                self.substituted(value, false, location, path)
            };
        };
        if is_local(tag, "env_var") {
            // As in Nameko, a value without references is kept as it is, a string.
            let reparse = value.contains("${");
            return self.substituted(value, reparse, location, path);
        }
        if is_local(tag, "raw_env_var") {
            return self.substituted(value, false, location, path);
        }
        let bad = |what: &str| {
            Err(syntax(
                location,
                path,
                format!("`{} {value}` is not {what}", show_tag(tag)),
            ))
        };
        if is_core(tag, "str") {
            return node(Node::Str(value.to_owned()));
        }
        if is_core(tag, "int") {
            return match core_schema(value) {
                Node::Int(i) => node(Node::Int(i)),
                _ => bad("an integer"),
            };
        }
        if is_core(tag, "float") {
            return match core_schema(value) {
                Node::Float(f) => node(Node::Float(f)),
                #[expect(clippy::cast_precision_loss, reason = "`!!float` on an integer rounds, as in YAML")]
                Node::Int(i) => node(Node::Float(i as f64)),
                _ => bad("a float"),
            };
        }
        if is_core(tag, "bool") {
            return match core_schema(value) {
                Node::Bool(b) => node(Node::Bool(b)),
                _ => bad("a boolean"),
            };
        }
        if is_core(tag, "null") {
            return match core_schema(value) {
                Node::Null => node(Node::Null),
                _ => bad("null"),
            };
        }
        Err(syntax(
            location,
            path,
            format!("unsupported tag `{}` on a scalar", show_tag(tag)),
        ))
    }

    /// Substitutes `${VAR}` references (when a lookup is set); with `reparse`, the result is
    /// parsed as YAML (a plain scalar or `!env_var`), otherwise it stays a string.
    fn substituted(
        &mut self,
        value: &str,
        reparse: bool,
        location: &Location,
        path: &str,
    ) -> Result<ConfigValue, ConfigError> {
        let plain = |text: &str| {
            let node = if reparse {
                core_schema(text)
            } else {
                Node::Str(text.to_owned())
            };
            Ok(ConfigValue::new(node, location.clone()))
        };
        let Some(lookup) = self.lookup else {
            return plain(value);
        };
        if !value.contains("${") {
            return plain(value);
        }
        let expansion = substitute(value, lookup).map_err(|message| {
            ConfigError::new(ConfigErrorKind::Substitution, Some(location.clone()), path, message)
        })?;
        for var in &expansion.unset {
            let consequence = if expansion.lone_unset.is_some() && reparse {
                "so the value is null"
            } else {
                "substituted an empty string"
            };
            let message = if path.is_empty() {
                format!("`${{{var}}}` is unset and has no default; {consequence}")
            } else {
                format!("{path}: `${{{var}}}` is unset and has no default; {consequence}")
            };
            self.warnings.push(ConfigWarning::new(location.clone(), message));
        }
        if expansion.refs == 0 {
            return plain(value);
        }
        if !reparse {
            return Ok(ConfigValue::new(Node::Str(expansion.text), location.clone()));
        }
        if let Some(var) = expansion.lone_unset {
            let mut value = ConfigValue::new(Node::Null, location.clone());
            value.unset_var = Some(var);
            return Ok(value);
        }
        if expansion.text.is_empty() {
            return Ok(ConfigValue::new(Node::Str(String::new()), location.clone()));
        }
        let locator = Locator::Fixed(location);
        let raw = parse(&expansion.text, locator).map_err(|e| {
            let mut error = e.into_config_error(locator, path);
            error.prefix_message(&format!("after substituting `{value}` into `{}`", expansion.text));
            error
        })?;
        let Some(raw) = raw else {
            return Ok(ConfigValue::new(Node::Null, location.clone()));
        };
        let mut literal = Resolver {
            lookup: None,
            warnings: self.warnings,
        };
        literal.resolve(&raw, path)
    }
}

/// Resolves a plain scalar with the YAML 1.2 core schema.
pub(crate) fn core_schema(text: &str) -> Node {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Node::Null,
        "true" | "True" | "TRUE" => return Node::Bool(true),
        "false" | "False" | "FALSE" => return Node::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Node::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Node::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Node::Float(f64::NAN),
        _ => {}
    }
    if let Some(i) = parse_int(text) {
        return Node::Int(i);
    }
    if is_float(text)
        && let Ok(f) = text.parse::<f64>()
    {
        return Node::Float(f);
    }
    Node::Str(text.to_owned())
}

fn parse_int(text: &str) -> Option<i128> {
    if let Some(octal) = text.strip_prefix("0o") {
        return digits(octal, 8);
    }
    if let Some(hex) = text.strip_prefix("0x") {
        return digits(hex, 16);
    }
    let (negative, decimal) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let magnitude = digits(decimal, 10)?;
    Some(if negative { -magnitude } else { magnitude })
}

fn digits(text: &str, radix: u32) -> Option<i128> {
    if text.is_empty() || !text.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    i128::from_str_radix(text, radix).ok()
}

/// `[-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?`
fn is_float(text: &str) -> bool {
    let s = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => {
            let int_ok = int.chars().all(|c| c.is_ascii_digit());
            let frac_ok = frac.chars().all(|c| c.is_ascii_digit());
            int_ok && frac_ok && !(int.is_empty() && frac.is_empty())
        }
        None => !mantissa.is_empty() && mantissa.chars().all(|c| c.is_ascii_digit()),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
    });
    mantissa_ok && exponent_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_schema_scalars() {
        assert_eq!(core_schema(""), Node::Null);
        assert_eq!(core_schema("~"), Node::Null);
        assert_eq!(core_schema("True"), Node::Bool(true));
        assert_eq!(core_schema("yes"), Node::Str("yes".into()));
        assert_eq!(core_schema("0123"), Node::Int(123));
        assert_eq!(core_schema("-12"), Node::Int(-12));
        assert_eq!(core_schema("0o17"), Node::Int(15));
        assert_eq!(core_schema("0x1f"), Node::Int(31));
        assert_eq!(core_schema("1.5"), Node::Float(1.5));
        assert_eq!(core_schema("1e3"), Node::Float(1000.0));
        assert_eq!(core_schema("-.inf"), Node::Float(f64::NEG_INFINITY));
        assert!(matches!(core_schema(".nan"), Node::Float(f) if f.is_nan()));
        assert_eq!(core_schema("1.2.3"), Node::Str("1.2.3".into()));
        assert_eq!(core_schema("0x"), Node::Str("0x".into()));
        assert_eq!(core_schema("."), Node::Str(".".into()));
        assert_eq!(core_schema("1_000"), Node::Str("1_000".into()));
    }
}
