//! Masking passwords in URIs and rendering the config for `show-config`.

use nameko_core::config::{Config, ConfigValue};

/// What a masked password or secret value shows as.
pub const MASK: &str = "***";

/// Replaces the password of every URI in `text` with `***`:
/// `amqp://user:secret@host/` becomes `amqp://user:***@host/`.
///
/// URIs are found anywhere in the text (a log line, an error message), so the
/// function can be applied to anything printed. A URI without a password is left as it
/// is. When in doubt (a password holding a raw `/` or `@`), it masks more rather than
/// less.
///
/// ```
/// use nameko_cli::mask_secrets;
///
/// assert_eq!(mask_secrets("amqp://guest:guest@localhost:5672/"), "amqp://guest:***@localhost:5672/");
/// assert_eq!(
///     mask_secrets("cannot connect to amqps://app:s3cr3t@rabbit/prod: refused"),
///     "cannot connect to amqps://app:***@rabbit/prod: refused",
/// );
/// assert_eq!(mask_secrets("amqp://localhost:5672/"), "amqp://localhost:5672/");
/// ```
#[must_use]
pub fn mask_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        if !ends_with_scheme(&head[..pos]) {
            rest = tail;
            continue;
        }
        // The URI runs until whitespace or a quote; its authority until `/`, `?` or `#`.
        let uri_end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
            .unwrap_or(tail.len());
        let uri = &tail[..uri_end];
        let authority_end = uri.find(['/', '?', '#']).unwrap_or(uri.len());
        let userinfo = match uri[..authority_end].rfind('@') {
            Some(at) => Some(&uri[..at]),
            // A raw `/` (or `?`, `#`) in the password ends the authority early: look for
            // the `@` further on, if what comes before it looks like `user:password`.
            None => uri.find('@').map(|at| &uri[..at]).filter(|userinfo| {
                userinfo.split_once(':').is_some_and(|(user, password)| {
                    !user.contains(['/', '?', '#']) && !looks_like_port_and_path(password)
                })
            }),
        };
        match userinfo.and_then(|u| u.split_once(':').map(|(user, password)| (u, user, password))) {
            Some((userinfo, user, password)) if !password.is_empty() => {
                out.push_str(user);
                out.push(':');
                out.push_str(MASK);
                rest = &tail[userinfo.len()..];
            }
            _ => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// Whether `head` ends with a URI scheme (`[A-Za-z][A-Za-z0-9+.-]*`).
fn ends_with_scheme(head: &str) -> bool {
    let start = head
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-')))
        .map_or(0, |i| i + 1);
    head[start..].starts_with(|c: char| c.is_ascii_alphabetic())
}

/// `5672/vhost?x=a` (a port then a path), which is not a password.
fn looks_like_port_and_path(text: &str) -> bool {
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    digits > 0 && text[digits..].starts_with(['/', '?', '#'])
}

/// Whether a key names a secret: it contains `PASSWORD`, `SECRET` or `TOKEN`, ignoring
/// case.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_uppercase();
    ["PASSWORD", "SECRET", "TOKEN"].iter().any(|word| key.contains(word))
}

/// The merged config as YAML, as `show-config` prints it: top-level keys in
/// [`Config::keys`] order, nested keys in their file order, every URI password and the
/// value of every key naming a secret (`PASSWORD`, `SECRET`, `TOKEN`, any case) shown
/// as `***`.
///
/// ```
/// use nameko_core::Config;
///
/// let config = Config::from_yaml_str("AMQP_URI: amqp://app:hunter2@rabbit/\nDB:\n  password: hunter2\n")?;
/// let yaml = nameko_cli::render_config(&config);
/// assert!(yaml.starts_with("AMQP_URI: amqp://app:***@rabbit/\nDB:\n  password: \"***\"\n"), "{yaml}");
/// assert!(!yaml.contains("hunter2"));
/// # Ok::<(), nameko_core::ConfigError>(())
/// ```
#[must_use]
pub fn render_config(config: &Config) -> String {
    let mut out = String::new();
    for key in config.keys() {
        if let Some(value) = config.get(key) {
            write_entry(&mut out, 0, key, value);
        }
    }
    out
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

fn write_entry(out: &mut String, indent: usize, key: &str, value: &ConfigValue) {
    pad(out, indent);
    out.push_str(&yaml_key(key));
    out.push(':');
    if is_secret_key(key) {
        out.push(' ');
        out.push_str(&yaml_string(MASK));
        out.push('\n');
        return;
    }
    write_value(out, indent, value);
}

/// Writes `value` after a `key:` or `-` already written at `indent`.
fn write_value(out: &mut String, indent: usize, value: &ConfigValue) {
    if value.is_map() && value.entries().next().is_some() {
        out.push('\n');
        for (key, value) in value.entries() {
            write_entry(out, indent + 2, key, value);
        }
    } else if let Some(items) = value.as_seq().filter(|items| !items.is_empty()) {
        out.push('\n');
        for item in items {
            pad(out, indent + 2);
            out.push('-');
            if (item.is_map() && item.entries().next().is_some()) || item.as_seq().is_some_and(|s| !s.is_empty()) {
                // The nested block starts on the dash's line.
                let mut block = String::new();
                write_value(&mut block, indent + 2, item);
                out.push(' ');
                out.push_str(block.trim_start_matches('\n').trim_start_matches(' '));
            } else {
                write_value(out, indent + 2, item);
            }
        }
    } else {
        out.push(' ');
        out.push_str(&scalar(value));
        out.push('\n');
    }
}

fn scalar(value: &ConfigValue) -> String {
    match value.to_json() {
        serde_json::Value::String(s) => yaml_string(&mask_secrets(&s)),
        serde_json::Value::Object(map) if map.is_empty() => "{}".to_owned(),
        serde_json::Value::Array(items) if items.is_empty() => "[]".to_owned(),
        other => mask_secrets(&other.to_string()),
    }
}

/// A string as a plain YAML scalar when that reads back as the same string (in YAML 1.1
/// and 1.2), otherwise double-quoted.
fn yaml_string(s: &str) -> String {
    let plain_chars = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || " _./:@%+-~=*,()$".contains(c));
    let plain = !s.is_empty()
        && plain_chars
        && s.starts_with(|c: char| c.is_ascii_alphanumeric() || "_./".contains(c))
        && !s.ends_with([' ', ':'])
        && !s.contains(": ")
        && !s.contains(" #")
        && !resolves_to_non_string(s);
    if plain {
        s.to_owned()
    } else {
        serde_json::Value::String(s.to_owned()).to_string()
    }
}

fn yaml_key(key: &str) -> String {
    if !key.is_empty()
        && key.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && !resolves_to_non_string(key)
    {
        key.to_owned()
    } else {
        serde_json::Value::String(key.to_owned()).to_string()
    }
}

fn resolves_to_non_string(s: &str) -> bool {
    const WORDS: &[&str] = &["true", "false", "null", "yes", "no", "on", "off", "y", "n", "~"];
    let lower = s.to_ascii_lowercase();
    WORDS.contains(&lower.as_str())
        || s.parse::<f64>().is_ok()
        || lower.starts_with("0x")
        || lower.starts_with("0o")
        || lower.starts_with(".inf")
        || lower.starts_with("-.inf")
        || lower == ".nan"
        || is_sexagesimal(s)
}

/// YAML 1.1's base-60 numbers (`190:20:30`, `1:30.5`), which PyYAML reads as numbers.
fn is_sexagesimal(s: &str) -> bool {
    let mut parts = s.split(':');
    let first = parts.next().unwrap_or_default();
    let rest: Vec<&str> = parts.collect();
    let digits = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '_');
    !rest.is_empty()
        && digits(first.trim_start_matches(['-', '+']))
        && rest.iter().enumerate().all(|(i, part)| {
            let whole = if i + 1 == rest.len() {
                part.split('.').next().unwrap_or_default()
            } else {
                part
            };
            whole.len() <= 2 && digits(whole) && (i + 1 == rest.len() || !part.contains('.'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_userinfo_passwords() {
        let cases = [
            ("amqp://guest:guest@localhost:5672/", "amqp://guest:***@localhost:5672/"),
            ("pyamqp://u:p@h", "pyamqp://u:***@h"),
            (
                "amqps://app:s3cr%2Ft@rabbit:5671/%2f",
                "amqps://app:***@rabbit:5671/%2f",
            ),
            ("amqp://:only-password@h/", "amqp://:***@h/"),
            ("redis://user:pa@ss@cache:6379/0", "redis://user:***@cache:6379/0"),
            ("amqp://user:pa/ss@host/vhost", "amqp://user:***@host/vhost"),
            (
                "a amqp://x:y@h/ and postgres://p:q@db/app.",
                "a amqp://x:***@h/ and postgres://p:***@db/app.",
            ),
            ("\"amqp://x:y@h\"", "\"amqp://x:***@h\""),
        ];
        for (input, expected) in cases {
            assert_eq!(mask_secrets(input), expected, "{input}");
        }
    }

    #[test]
    fn leaves_uris_without_password_alone() {
        for input in [
            "amqp://localhost:5672/",
            "amqp://user@host/",
            "amqp://user:@host/",
            "http://host:8080/path?mail=a@b.c",
            "http://host/x?email=a@b",
            "not a uri: a://",
            "://x:y@z",
            "plain text",
            "",
        ] {
            assert_eq!(mask_secrets(input), input, "{input}");
        }
    }

    #[test]
    fn secret_keys() {
        for key in ["password", "DB_PASSWORD", "client_secret", "AuthToken"] {
            assert!(is_secret_key(key), "{key}");
        }
        for key in ["AMQP_URI", "user", "max_workers"] {
            assert!(!is_secret_key(key), "{key}");
        }
    }

    #[test]
    fn strings_quoted_only_when_needed() {
        assert_eq!(yaml_string("amqp://u:***@h:5672/"), "amqp://u:***@h:5672/");
        assert_eq!(yaml_string("0.0.0.0:8000"), "0.0.0.0:8000");
        assert_eq!(yaml_string("nameko-rpc"), "nameko-rpc");
        assert_eq!(yaml_string("***"), "\"***\"");
        assert_eq!(yaml_string("yes"), "\"yes\"");
        assert_eq!(yaml_string("12"), "\"12\"");
        assert_eq!(yaml_string("190:20:30"), "\"190:20:30\"");
        assert_eq!(yaml_string("a: b"), "\"a: b\"");
        assert_eq!(yaml_string(""), "\"\"");
        assert_eq!(yaml_string("line\nbreak"), "\"line\\nbreak\"");
    }

    #[test]
    fn renders_nested_blocks_in_file_order() {
        let config = Config::from_yaml_str(
            "ZETA:\n  b: 1\n  a: [x, {k: v, token: t}, []]\n  empty: {}\nALPHA: ~\nLIST:\n  - [1, 2]\n",
        )
        .unwrap();
        let yaml = render_config(&config);
        let expected = "ZETA:\n  b: 1\n  a:\n    - x\n    - k: v\n      token: \"***\"\n    - []\n  empty: {}\nALPHA: null\nLIST:\n  - - 1\n    - 2\n";
        assert!(yaml.starts_with(expected), "{yaml}");
    }
}
