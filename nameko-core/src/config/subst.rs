//! `${NAME}` / `${NAME:default}` substitution in scalar values.

/// The result of substituting the references in one scalar.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Expansion {
    /// The text with every reference replaced.
    pub(crate) text: String,
    /// How many top-level references there were.
    pub(crate) refs: usize,
    /// Whether the whole scalar was exactly one reference.
    pub(crate) lone: bool,
    /// When the whole scalar was one reference that resolved to an unset variable without a
    /// default (possibly through nested defaults), that variable.
    pub(crate) lone_unset: Option<String>,
    /// Every variable that was unset and had no default, in order.
    pub(crate) unset: Vec<String>,
}

/// Replaces every `${NAME}` and `${NAME:default}` in `input`, looking variables up with
/// `lookup`. Defaults may contain balanced braces and further references (`${A:${B:x}}`),
/// which are only expanded when the default is used. An unset variable without a default
/// becomes the empty string. A `$` not followed by `{` is kept as it is.
///
/// Errors (a message without location) for an unterminated reference or an empty name.
pub(crate) fn substitute(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Expansion, String> {
    let mut out = Expansion::default();
    let mut rest = input;
    let mut lone_candidate = None;
    while let Some(start) = rest.find("${") {
        out.text.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let (name, default, consumed) = parse_reference(after)?;
        let whole = start == 0 && consumed == after.len() && out.text.is_empty();
        out.refs += 1;
        let mut this_unset = None;
        if let Some(value) = lookup(name) {
            out.text.push_str(&value);
        } else if let Some(default) = default {
            let inner = substitute(default, lookup)?;
            out.text.push_str(&inner.text);
            out.unset.extend(inner.unset);
            if inner.lone {
                this_unset = inner.lone_unset;
            }
        } else {
            out.unset.push(name.to_owned());
            this_unset = Some(name.to_owned());
        }
        if whole && rest.len() == input.len() {
            lone_candidate = Some(this_unset);
        }
        rest = &after[consumed..];
    }
    out.text.push_str(rest);
    if let Some(unset) = lone_candidate {
        out.lone = true;
        out.lone_unset = unset;
    }
    Ok(out)
}

/// Parses `NAME}` or `NAME:default}` (the text after `${`). Returns the name, the default and
/// how many bytes were consumed including the closing brace.
fn parse_reference(after: &str) -> Result<(&str, Option<&str>, usize), String> {
    let name_end = after
        .find([':', '}', '{'])
        .ok_or_else(|| format!("unterminated `${{` in `${{{after}`"))?;
    let name = &after[..name_end];
    if after[name_end..].starts_with('{') {
        return Err(format!("unexpected `{{` in the variable name of `${{{after}`"));
    }
    if name.trim().is_empty() {
        return Err(format!("empty variable name in `${{{after}`"));
    }
    if after[name_end..].starts_with('}') {
        return Ok((name, None, name_end + 1));
    }
    let default_start = name_end + 1;
    let mut depth = 0usize;
    for (i, c) in after[default_start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                let end = default_start + i;
                return Ok((name, Some(&after[default_start..end]), end + 1));
            }
            '}' => depth -= 1,
            _ => {}
        }
    }
    Err(format!("unterminated `${{` in `${{{after}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    fn sub(input: &str, vars: &[(&str, &str)]) -> Expansion {
        substitute(input, &env(vars)).expect("valid reference")
    }

    #[test]
    fn plain_text_is_untouched() {
        let e = sub("no refs $HOME here", &[]);
        assert_eq!(e.text, "no refs $HOME here");
        assert_eq!(e.refs, 0);
        assert!(!e.lone);
    }

    #[test]
    fn set_default_and_unset() {
        assert_eq!(sub("${A}", &[("A", "1")]).text, "1");
        assert_eq!(sub("${A:5}", &[]).text, "5");
        assert_eq!(sub("${A:5}", &[("A", "20")]).text, "20");
        let e = sub("${A}", &[]);
        assert_eq!(e.text, "");
        assert!(e.lone);
        assert_eq!(e.lone_unset.as_deref(), Some("A"));
        assert_eq!(e.unset, ["A"]);
    }

    #[test]
    fn set_but_empty_is_not_unset() {
        let e = sub("${A}", &[("A", "")]);
        assert_eq!(e.text, "");
        assert!(e.lone);
        assert_eq!(e.lone_unset, None);
        assert!(e.unset.is_empty());
    }

    #[test]
    fn default_keeps_colons() {
        assert_eq!(
            sub("${AMQP_URI:pyamqp://guest:guest@127.0.0.1:5672/vh}", &[]).text,
            "pyamqp://guest:guest@127.0.0.1:5672/vh"
        );
    }

    #[test]
    fn several_references_in_one_scalar() {
        let e = sub("amqp://${USER:guest}:${PASS}@${HOST}/", &[("HOST", "rabbit")]);
        assert_eq!(e.text, "amqp://guest:@rabbit/");
        assert_eq!(e.refs, 3);
        assert!(!e.lone);
        assert_eq!(e.lone_unset, None);
        assert_eq!(e.unset, ["PASS"]);
    }

    #[test]
    fn nested_defaults() {
        assert_eq!(sub("${A:${B:fallback}}", &[]).text, "fallback");
        assert_eq!(sub("${A:${B:fallback}}", &[("B", "b")]).text, "b");
        assert_eq!(sub("${A:${B:fallback}}", &[("A", "a")]).text, "a");
        let e = sub("${A:${B}}", &[]);
        assert_eq!(e.lone_unset.as_deref(), Some("B"));
        let e = sub("${A:x${B}}", &[]);
        assert_eq!(e.text, "x");
        assert_eq!(e.lone_unset, None);
        assert_eq!(e.unset, ["B"]);
    }

    #[test]
    fn defaults_with_balanced_braces() {
        assert_eq!(sub("${X:{a: 1}}", &[]).text, "{a: 1}");
        assert_eq!(sub("${X:{a: {b: 2}}} tail", &[]).text, "{a: {b: 2}} tail");
        assert_eq!(sub("${LISTY:[1, 2, 3]}", &[]).text, "[1, 2, 3]");
    }

    #[test]
    fn text_around_a_reference_is_not_lone() {
        let e = sub("x${A}", &[]);
        assert!(!e.lone);
        assert_eq!(e.lone_unset, None);
        let e = sub("${A}x", &[]);
        assert!(!e.lone);
        let e = sub("${A}${B}", &[]);
        assert!(!e.lone);
    }

    #[test]
    fn malformed_references() {
        let lookup = env(&[]);
        assert!(substitute("${A", &lookup).is_err());
        assert!(substitute("${A:{b}", &lookup).is_err());
        assert!(substitute("${}", &lookup).is_err());
        assert!(substitute("${A{", &lookup).is_err());
    }
}
