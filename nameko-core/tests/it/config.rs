//! Integration tests for `nameko_core::config`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use nameko_core::config::{Config, ConfigError, ConfigErrorKind, ConfigValue, KNOWN_KEYS};
use serde::Deserialize;
use serde_json::json;

fn load(yaml: &str, vars: &[(&str, &str)]) -> Config {
    try_load(yaml, vars).unwrap_or_else(|e| panic!("config should load: {e}"))
}

fn try_load(yaml: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::loader()
        .yaml_str("config.yaml", yaml)
        .vars(vars.iter().copied())
        .load()
}

fn json_of(config: &Config, key: &str) -> serde_json::Value {
    config.get(key).map_or(serde_json::Value::Null, ConfigValue::to_json)
}

/// A file under the temp dir with a name unique to this process and call.
struct TempFile(PathBuf);

impl TempFile {
    fn new(contents: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "nameko-config-test-{}-{}.yaml",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, contents).expect("temp dir is writable");
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// ---- the substitution table of the reference, §5.2 ----

#[test]
fn default_used_when_unset() {
    let c = load("AMQP_URI: ${AMQP_URI:pyamqp://guest:guest@127.0.0.1:5672/vh}\n", &[]);
    assert_eq!(c.amqp_uri(), "pyamqp://guest:guest@127.0.0.1:5672/vh");
}

#[test]
fn variable_wins_over_default() {
    let c = load(
        "AMQP_URI: ${AMQP_URI:pyamqp://guest:guest@127.0.0.1:5672/vh}\n",
        &[("AMQP_URI", "amqp://rabbit/")],
    );
    assert_eq!(c.amqp_uri(), "amqp://rabbit/");
}

#[test]
fn substituted_plain_scalar_is_reparsed_as_int() {
    let c = load("max_workers: ${MAX_WORKERS:5}\n", &[]);
    assert_eq!(c.get("max_workers").and_then(ConfigValue::as_i64), Some(5));
    assert_eq!(c.max_workers(), 5);
    let c = load("max_workers: ${MAX_WORKERS:5}\n", &[("MAX_WORKERS", "20")]);
    assert_eq!(c.get("max_workers").and_then(ConfigValue::as_i64), Some(20));
    assert_eq!(c.max_workers(), 20);
}

#[test]
fn substituted_plain_scalar_is_reparsed_as_list_or_mapping() {
    let c = load("EXAMPLE_LIST: ${LISTY:[1, 2, 3]}\n", &[]);
    assert_eq!(json_of(&c, "EXAMPLE_LIST"), json!([1, 2, 3]));
    let c = load("EXAMPLE_LIST: ${LISTY:[1, 2, 3]}\n", &[("LISTY", "{a: 1}")]);
    assert_eq!(json_of(&c, "EXAMPLE_LIST"), json!({"a": 1}));
}

#[test]
fn leading_zero_is_decimal_under_yaml_1_2() {
    let c = load("EXAMPLE_TYPED: ${PORTISH:0123}\n", &[]);
    assert_eq!(json_of(&c, "EXAMPLE_TYPED"), json!(123));
    let c = load("EXAMPLE_TYPED: ${PORTISH:0123}\n", &[("PORTISH", "0777")]);
    assert_eq!(json_of(&c, "EXAMPLE_TYPED"), json!(777));
    let c = load("EXAMPLE_TYPED: ${PORTISH:0o17}\n", &[]);
    assert_eq!(json_of(&c, "EXAMPLE_TYPED"), json!(15));
}

#[test]
fn raw_env_var_keeps_a_string() {
    let c = load("EXAMPLE_RAW: !raw_env_var \"${PORTISH:0123}\"\n", &[]);
    assert_eq!(json_of(&c, "EXAMPLE_RAW"), json!("0123"));
}

#[test]
fn env_var_tag_reparses_a_quoted_scalar() {
    let c = load("X: !env_var \"${PORTISH:0123}\"\nY: !env_var \"${L:[a, b]}\"\n", &[]);
    assert_eq!(json_of(&c, "X"), json!(123));
    assert_eq!(json_of(&c, "Y"), json!(["a", "b"]));
}

#[test]
fn unset_without_default_is_null_with_a_located_warning() {
    let c = load("a: 1\nX: ${UNSET_NO_DEFAULT}\n", &[]);
    let x = c.get("X").expect("X is present");
    assert!(x.is_null());
    assert_eq!(x.unset_var(), Some("UNSET_NO_DEFAULT"));
    let [warning] = c.warnings() else {
        panic!("expected one warning, got {:?}", c.warnings());
    };
    assert_eq!(warning.location().to_string(), "config.yaml:2:4");
    assert!(warning.message().contains("UNSET_NO_DEFAULT"), "{warning}");
    assert!(warning.message().contains("null"), "{warning}");
}

#[test]
fn nested_default() {
    let yaml = "X: ${A:${B:fallback}}\n";
    assert_eq!(json_of(&load(yaml, &[]), "X"), json!("fallback"));
    assert_eq!(json_of(&load(yaml, &[("B", "7")]), "X"), json!(7));
    assert_eq!(json_of(&load(yaml, &[("A", "a"), ("B", "b")]), "X"), json!("a"));
}

#[test]
fn default_with_balanced_braces() {
    // `: ` cannot appear in a plain scalar in block context, so such defaults are quoted
    // and tagged `!env_var` to be parsed after substitution.
    let c = load("X: !env_var \"${X:{a: 1, b: {c: 2}}}\"\nY: ${Y:{}}\n", &[]);
    assert_eq!(json_of(&c, "X"), json!({"a": 1, "b": {"c": 2}}));
    assert_eq!(json_of(&c, "Y"), json!({}));
}

#[test]
fn set_but_empty_is_the_empty_string() {
    let c = load("X: ${EMPTY}\nY: a${EMPTY}b\n", &[("EMPTY", "")]);
    assert_eq!(json_of(&c, "X"), json!(""));
    assert_eq!(json_of(&c, "Y"), json!("ab"));
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
}

#[test]
fn several_variables_in_one_scalar() {
    let c = load(
        "AMQP_URI: amqp://${USER:guest}:${PASS}@${HOST}:${PORT:5672}/\n",
        &[("PASS", "secret"), ("HOST", "rabbit")],
    );
    assert_eq!(c.amqp_uri(), "amqp://guest:secret@rabbit:5672/");
}

#[test]
fn unset_inside_a_longer_scalar_is_an_empty_string_with_a_warning() {
    let c = load("X: http://${HOST}/x\n", &[]);
    assert_eq!(json_of(&c, "X"), json!("http:///x"));
    assert_eq!(c.warnings().len(), 1);
}

#[test]
fn quoted_scalars_stay_strings() {
    let c = load("A: \"${N:5}\"\nB: '${L:[1, 2]}'\nC: \"${UNSET}\"\nD: ${N:5}\n", &[]);
    assert_eq!(json_of(&c, "A"), json!("5"));
    assert_eq!(json_of(&c, "B"), json!("[1, 2]"));
    assert_eq!(json_of(&c, "C"), json!(""));
    assert_eq!(json_of(&c, "D"), json!(5));
}

#[test]
fn core_str_tag_is_literal() {
    let c = load("A: !!str ${NOT_A_VAR}\nB: !!str 0123\n", &[("NOT_A_VAR", "x")]);
    assert_eq!(json_of(&c, "A"), json!("${NOT_A_VAR}"));
    assert_eq!(json_of(&c, "B"), json!("0123"));
}

#[test]
fn core_tags_are_honoured() {
    let c = load(
        "a: !!int \"12\"\nb: !!float 3\nc: !!bool \"true\"\nd: !!null ''\ne: !env_var \"5\"\n",
        &[],
    );
    assert_eq!(json_of(&c, "a"), json!(12));
    assert_eq!(json_of(&c, "b"), json!(3.0));
    assert_eq!(json_of(&c, "c"), json!(true));
    assert_eq!(json_of(&c, "d"), json!(null));
    // Like Nameko, `!env_var` without a reference leaves the text a string.
    assert_eq!(json_of(&c, "e"), json!("5"));
    let error = try_load("a: 1\nb: !!int abc\n", &[]).expect_err("not an int");
    assert_eq!(error.to_string(), "config.yaml:2:4: b: `!!int abc` is not an integer");
    let error = try_load("b: !custom 1\n", &[]).expect_err("unknown tag");
    assert!(error.message().contains("`!custom`"), "{error}");
}

#[test]
fn yaml_1_2_core_schema() {
    let c = load(
        "a: yes\nb: True\nc: ~\nd:\ne: 0x1f\nf: .inf\ng: 1.5\nh: -3\ni: \"true\"\n",
        &[],
    );
    assert_eq!(json_of(&c, "a"), json!("yes"));
    assert_eq!(json_of(&c, "b"), json!(true));
    assert_eq!(json_of(&c, "c"), json!(null));
    assert_eq!(json_of(&c, "d"), json!(null));
    assert_eq!(json_of(&c, "e"), json!(31));
    assert_eq!(json_of(&c, "f"), json!(".inf"));
    assert_eq!(json_of(&c, "g"), json!(1.5));
    assert_eq!(json_of(&c, "h"), json!(-3));
    assert_eq!(json_of(&c, "i"), json!("true"));
}

#[test]
fn aliases_and_merge_keys() {
    let c = load(
        "base: &base {host: h, port: 1}\ncopy: *base\nmerged:\n  <<: *base\n  port: 2\n",
        &[],
    );
    assert_eq!(json_of(&c, "copy"), json!({"host": "h", "port": 1}));
    assert_eq!(json_of(&c, "merged"), json!({"host": "h", "port": 2}));
}

#[test]
fn no_substitution_in_keys() {
    let c = load("${KEY}: 1\n", &[("KEY", "x")]);
    assert!(c.get("${KEY}").is_some());
    assert!(c.get("x").is_none());
}

// ---- precedence ----

#[test]
fn precedence_file_env_define_broker() {
    let yaml = "AMQP_URI: amqp://file/\nmax_workers: 2\nrpc_exchange: file-rpc\nserializer: file\n";
    let vars = [
        ("NAMEKO_AMQP_URI", "amqp://env/"),
        ("NAMEKO_MAX_WORKERS", "3"),
        ("NAMEKO_RPC_EXCHANGE", "env-rpc"),
    ];
    let c = Config::loader()
        .yaml_str("config.yaml", yaml)
        .vars(vars)
        .load()
        .expect("loads");
    assert_eq!(c.amqp_uri(), "amqp://env/");
    assert_eq!(c.max_workers(), 3);
    assert_eq!(c.rpc_exchange(), "env-rpc");
    assert_eq!(c.serializer(), "file");
    assert_eq!(
        c.get("max_workers").map(|v| v.location().to_string()).as_deref(),
        Some("environment NAMEKO_MAX_WORKERS")
    );

    let c = Config::loader()
        .yaml_str("config.yaml", yaml)
        .vars(vars)
        .define("max_workers=4")
        .define("AMQP_URI=amqp://define/")
        .load()
        .expect("loads");
    assert_eq!(c.max_workers(), 4);
    assert_eq!(c.amqp_uri(), "amqp://define/");
    assert_eq!(c.rpc_exchange(), "env-rpc");

    let c = Config::loader()
        .yaml_str("config.yaml", yaml)
        .vars(vars)
        .define("AMQP_URI=amqp://define/")
        .broker("amqp://broker/")
        .load()
        .expect("loads");
    assert_eq!(c.amqp_uri(), "amqp://broker/");
    assert_eq!(
        c.get("AMQP_URI").map(|v| v.location().to_string()).as_deref(),
        Some("--broker")
    );
}

#[test]
fn env_overrides_nest_with_double_underscore_and_keep_siblings() {
    let yaml = "GREETING:\n  salutation: Hello\n  punctuation: '!'\n";
    let c = Config::loader()
        .yaml_str("config.yaml", yaml)
        .vars([
            ("NAMEKO_GREETING__SALUTATION", "Hi"),
            ("NAMEKO_GREETING__EXTRA__DEPTH", "[1, 2]"),
        ])
        .load()
        .expect("loads");
    assert_eq!(
        json_of(&c, "GREETING"),
        json!({"salutation": "Hi", "punctuation": "!", "EXTRA": {"DEPTH": [1, 2]}})
    );
    // The file's spelling of `salutation` is kept.
    let keys: Vec<&str> = c.get("GREETING").expect("set").entries().map(|(k, _)| k).collect();
    assert_eq!(keys, ["salutation", "punctuation", "EXTRA"]);
}

#[test]
fn define_nests_with_dots_and_parses_yaml() {
    let c = Config::loader()
        .yaml_str("config.yaml", "GREETING: {salutation: Hello}\n")
        .vars(Vec::<(String, String)>::new())
        .define("GREETING.salutation=Hey")
        .define("NEW.list=[a, 1]")
        .load()
        .expect("loads");
    assert_eq!(json_of(&c, "GREETING"), json!({"salutation": "Hey"}));
    assert_eq!(json_of(&c, "NEW"), json!({"list": ["a", 1]}));
}

#[test]
fn known_keys_are_case_insensitive() {
    let c = load("amqp_uri: amqp://lower/\nMAX_WORKERS: 7\n", &[]);
    assert_eq!(c.get("AMQP_URI").and_then(ConfigValue::as_str), Some("amqp://lower/"));
    assert_eq!(c.amqp_uri(), "amqp://lower/");
    assert_eq!(c.max_workers(), 7);
    assert_eq!(c.get("Max_Workers").and_then(ConfigValue::as_i64), Some(7));
    // Unknown keys are matched exactly by `get`.
    let c = load("Greeting: 1\n", &[]);
    assert!(c.get("GREETING").is_none());
}

#[test]
fn env_known_keys_map_to_nameko_spelling() {
    let c = Config::loader()
        .vars([("NAMEKO_MAX_WORKERS", "3"), ("NAMEKO_HEARTBEAT", "5")])
        .load()
        .expect("loads");
    assert_eq!(c.max_workers(), 3);
    assert_eq!(c.heartbeat(), 5);
    assert_eq!(c.keys().filter(|k| *k == "max_workers").count(), 1);
    assert!(c.keys().all(|k| k != "MAX_WORKERS"));
}

#[test]
fn from_yaml_str_names_its_origin_string() {
    let error = Config::from_yaml_str("max_workers: lots\n").expect_err("invalid");
    assert_eq!(
        error.to_string(),
        "<string>:1:14: max_workers: expected a non-negative integer, got \"lots\""
    );
}

// ---- typed sections ----

#[derive(Debug, Deserialize, PartialEq)]
struct Greeting {
    salutation: String,
    #[serde(default = "bang")]
    punctuation: String,
    port: Option<u16>,
}

fn bang() -> String {
    "!".to_owned()
}

#[test]
fn typed_section() {
    let c = load("GREETING:\n  salutation: Hello\n  port: 8080\n", &[]);
    let greeting: Greeting = c.section("GREETING").expect("valid");
    assert_eq!(
        greeting,
        Greeting {
            salutation: "Hello".into(),
            punctuation: "!".into(),
            port: Some(8080),
        }
    );
    // Matched ignoring case when there is no exact match.
    let greeting: Greeting = c.section("greeting").expect("valid");
    assert_eq!(greeting.salutation, "Hello");
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Mode {
    Fast,
    Limited { rate: u32 },
    Named(String),
}

#[derive(Debug, Deserialize, PartialEq)]
struct Rich {
    modes: Vec<Mode>,
    pair: (u8, String),
    table: std::collections::BTreeMap<u16, bool>,
    nothing: Option<i32>,
    ratio: f64,
}

#[test]
fn typed_section_serde_data_model() {
    let c = load(
        "RICH:\n  modes: [fast, {limited: {rate: 3}}, {named: x}]\n  pair: [1, one]\n  table: {80: true, 443: false}\n  nothing: ~\n  ratio: 2\n",
        &[],
    );
    let rich: Rich = c.section("RICH").expect("valid");
    assert_eq!(
        rich,
        Rich {
            modes: vec![Mode::Fast, Mode::Limited { rate: 3 }, Mode::Named("x".into())],
            pair: (1, "one".into()),
            table: [(80, true), (443, false)].into_iter().collect(),
            nothing: None,
            ratio: 2.0,
        }
    );
    let any: serde_json::Value = c.section("RICH").expect("valid");
    assert_eq!(any["pair"], json!([1, "one"]));
}

#[test]
fn section_bad_value_type_is_located() {
    let yaml = "a: 1\nGREETING:\n  salutation: Hello\n  port: abc\n";
    let error = try_load(yaml, &[])
        .expect("loads")
        .section::<Greeting>("GREETING")
        .expect_err("port is not a number");
    assert_eq!(error.kind(), ConfigErrorKind::InvalidValue);
    assert_eq!(error.key_path(), "GREETING.port");
    let location = error.location().expect("located");
    assert_eq!((location.line(), location.column()), (Some(4), Some(9)));
    assert_eq!(
        error.to_string(),
        "config.yaml:4:9: GREETING.port: invalid type: string \"abc\", expected u16"
    );
}

#[test]
fn section_unknown_key_is_located_and_lists_fields() {
    let yaml = "GREETING:\n  salutation: Hello\n  salutaton: Hi\n";
    let error = load(yaml, &[]).section::<Greeting>("GREETING").expect_err("typo");
    assert_eq!(error.kind(), ConfigErrorKind::UnknownKey);
    assert_eq!(
        error.to_string(),
        "config.yaml:3:3: GREETING: unknown key `salutaton`, expected one of `salutation`, `punctuation`, `port`"
    );
}

#[test]
fn section_nested_path_in_sequences() {
    #[derive(Debug, Deserialize)]
    struct Outer {
        #[expect(dead_code, reason = "only deserialized")]
        items: Vec<Greeting>,
    }
    let yaml = "OUTER:\n  items:\n    - salutation: a\n    - salutation: b\n      port: 70000\n";
    let error = load(yaml, &[]).section::<Outer>("OUTER").expect_err("out of range");
    assert_eq!(error.key_path(), "OUTER.items[1].port");
    assert_eq!(error.location().and_then(|l| l.line()), Some(5));
    assert!(error.message().contains("70000"), "{error}");
    assert!(error.message().contains("u16"), "{error}");
}

#[test]
fn section_number_out_of_range() {
    let error = load("GREETING: {salutation: x, port: 70000}\n", &[])
        .section::<Greeting>("GREETING")
        .expect_err("70000 does not fit a u16");
    assert_eq!(error.key_path(), "GREETING.port");
    assert_eq!(
        error.location().map(ToString::to_string).as_deref(),
        Some("config.yaml:1:33")
    );
    assert!(error.message().contains("70000"), "{error}");
}

#[test]
fn section_missing_required_field_is_located_at_the_section() {
    let error = load("GREETING:\n  port: 1\n", &[])
        .section::<Greeting>("GREETING")
        .expect_err("salutation is required");
    assert_eq!(error.key_path(), "GREETING");
    assert_eq!(error.location().and_then(|l| l.line()), Some(2));
    assert!(error.message().contains("missing field `salutation`"), "{error}");
}

#[test]
fn unset_variable_reaching_a_required_field() {
    #[derive(Debug, Deserialize)]
    struct Database {
        #[expect(dead_code, reason = "only deserialized")]
        url: String,
    }
    let yaml = "a: 1\nb: 2\nDATABASE:\n  url: ${DB_URL}\n";
    let error = load(yaml, &[])
        .section::<Database>("DATABASE")
        .expect_err("DB_URL is unset");
    assert_eq!(
        error.to_string(),
        "config.yaml:4:8: DATABASE.url: `${DB_URL}` is unset and has no default, so the value is null; expected a string"
    );
}

#[test]
fn missing_section_uses_defaults_or_says_it_is_missing() {
    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default)]
    struct AllDefaults {
        retries: u32,
    }
    let c = Config::default();
    assert_eq!(
        c.section::<AllDefaults>("RETRY").expect("defaults"),
        AllDefaults::default()
    );
    let error = c.section::<Greeting>("GREETING").expect_err("required fields");
    assert_eq!(error.kind(), ConfigErrorKind::MissingSection);
    assert!(
        error
            .to_string()
            .contains("the section `GREETING` is missing from the config"),
        "{error}"
    );
}

// ---- load errors ----

#[test]
fn bad_yaml_in_file_names_file_and_line() {
    let file = TempFile::new("a: 1\nb: [1, 2\nc: 3\n");
    let error = Config::loader()
        .file(&file.0)
        .vars(Vec::<(String, String)>::new())
        .load()
        .expect_err("unclosed flow sequence");
    assert_eq!(error.kind(), ConfigErrorKind::Syntax);
    let location = error.location().expect("located");
    assert_eq!(location.source(), file.0.display().to_string());
    assert!(matches!(location.line(), Some(2..=4)), "{error}");
    assert!(error.to_string().starts_with(&file.0.display().to_string()), "{error}");
}

#[test]
fn file_loads() {
    let file = TempFile::new("serializer: pickle\nHEARTBEAT: 0\n");
    let c = Config::loader()
        .file(&file.0)
        .vars(Vec::<(String, String)>::new())
        .load()
        .expect("loads");
    assert_eq!(c.serializer(), "pickle");
    assert_eq!(c.heartbeat(), 0);
    let location = c.get("serializer").expect("set").location().clone();
    assert_eq!(location.to_string(), format!("{}:1:13", file.0.display()));
}

#[test]
fn file_not_found_names_the_path() {
    let path = std::env::temp_dir().join(format!("nameko-no-such-{}.yaml", std::process::id()));
    let error = Config::loader().file(&path).load().expect_err("missing file");
    assert_eq!(error.kind(), ConfigErrorKind::Io);
    assert!(error.to_string().contains(&path.display().to_string()), "{error}");
}

#[test]
fn bad_yaml_in_substituted_value_is_located_at_the_scalar() {
    let error = try_load("a: 1\nX: ${LISTY}\n", &[("LISTY", "[1, 2")]).expect_err("bad YAML");
    assert_eq!(error.kind(), ConfigErrorKind::Syntax);
    assert_eq!(
        error.location().map(ToString::to_string).as_deref(),
        Some("config.yaml:2:4")
    );
    assert_eq!(error.key_path(), "X");
}

#[test]
fn malformed_reference_is_located() {
    let error = try_load("a: 1\nX: ${UNCLOSED\n", &[]).expect_err("unterminated");
    assert_eq!(error.kind(), ConfigErrorKind::Substitution);
    assert_eq!(error.location().and_then(|l| l.line()), Some(2));
}

#[test]
fn more_than_one_document_is_an_error() {
    let error = try_load("a: 1\n---\nb: 2\n", &[]).expect_err("two documents");
    assert_eq!(error.kind(), ConfigErrorKind::Syntax);
    assert!(error.message().contains("more than one"), "{error}");
}

#[test]
fn empty_file_is_defaults() {
    let c = load("", &[]);
    assert_eq!(c.max_workers(), 10);
    let c = load("# only a comment\n", &[]);
    assert_eq!(c.amqp_uri(), "amqp://guest:guest@localhost:5672/");
}

#[test]
fn top_level_must_be_a_mapping() {
    let error = try_load("- a\n- b\n", &[]).expect_err("a list");
    assert!(error.message().contains("mapping"), "{error}");
}

#[test]
fn define_without_equals_is_an_error() {
    let error = Config::loader()
        .vars(Vec::<(String, String)>::new())
        .define("max_workers")
        .load()
        .expect_err("no =");
    assert_eq!(error.kind(), ConfigErrorKind::Override);
    assert_eq!(error.to_string(), "--define max_workers: expected KEY=VALUE");
}

#[test]
fn define_of_wrong_type_for_known_key() {
    let error = Config::loader()
        .vars(Vec::<(String, String)>::new())
        .define("max_workers=abc")
        .load()
        .expect_err("not a number");
    assert_eq!(
        error.to_string(),
        "--define max_workers=abc: max_workers: expected a non-negative integer, got \"abc\""
    );
}

#[test]
fn known_key_of_wrong_type_in_file() {
    let error = try_load("a: 1\nmax_workers: lots\n", &[]).expect_err("not a number");
    assert_eq!(error.kind(), ConfigErrorKind::InvalidValue);
    assert_eq!(error.key_path(), "max_workers");
    assert_eq!(
        error.location().map(ToString::to_string).as_deref(),
        Some("config.yaml:2:14")
    );
    for yaml in [
        "AMQP_URI: 5\n",
        "serializer: [json]\n",
        "HEARTBEAT: -1\n",
        "parent_calls_tracked: 1.5\n",
    ] {
        assert!(try_load(yaml, &[]).is_err(), "{yaml} should be rejected");
    }
}

#[test]
fn unset_variable_for_a_string_known_key_is_an_error() {
    let error = try_load("AMQP_URI: ${AMQP_URI}\n", &[]).expect_err("null AMQP_URI");
    assert!(error.message().contains("`${AMQP_URI}` is unset"), "{error}");
}

#[test]
fn max_message_size_is_a_positive_size_in_bytes() {
    assert_eq!(load("a: 1\n", &[]).max_message_size(), 8 * 1024 * 1024);
    assert_eq!(load("MAX_MESSAGE_SIZE: 1024\n", &[]).max_message_size(), 1024);
    assert_eq!(load("max_message_size: 2048\n", &[]).max_message_size(), 2048);
    assert_eq!(load("MAX_MESSAGE_SIZE:\n", &[]).max_message_size(), 8 * 1024 * 1024);
    for (yaml, column) in [
        ("MAX_MESSAGE_SIZE: 0\n", 19),
        ("MAX_MESSAGE_SIZE: -5\n", 19),
        ("MAX_MESSAGE_SIZE: 8MiB\n", 19),
        ("MAX_MESSAGE_SIZE: 1.5\n", 19),
    ] {
        let error = try_load(yaml, &[]).expect_err(yaml);
        assert_eq!(error.kind(), ConfigErrorKind::InvalidValue, "{yaml}");
        assert_eq!(error.key_path(), "MAX_MESSAGE_SIZE", "{yaml}");
        assert!(
            error.to_string().contains("expected a size in bytes above 0"),
            "{error}"
        );
        assert_eq!(
            error.location().map(ToString::to_string),
            Some(format!("config.yaml:1:{column}")),
            "{yaml}"
        );
    }
}

#[test]
fn falsy_max_workers_means_default() {
    assert_eq!(load("max_workers: 0\n", &[]).max_workers(), 10);
    assert_eq!(load("max_workers:\n", &[]).max_workers(), 10);
    assert_eq!(load("parent_calls_tracked: 0\n", &[]).parent_calls_tracked(), 0);
}

#[test]
fn override_into_a_scalar_is_an_error() {
    let error = Config::loader()
        .yaml_str("config.yaml", "GREETING: hello\n")
        .vars([("NAMEKO_GREETING__SALUTATION", "Hi")])
        .load()
        .expect_err("GREETING is a string");
    assert_eq!(error.kind(), ConfigErrorKind::Override);
    assert!(
        error.to_string().starts_with("environment NAMEKO_GREETING__SALUTATION"),
        "{error}"
    );
}

// ---- get_str, unknown_keys, defaults, to_json ----

#[test]
fn get_str_errors_name_key_and_location() {
    let c = load("a: 1\nNAME: 5\n", &[]);
    let error = c.get_str("NAME").expect_err("not a string");
    assert_eq!(error.to_string(), "config.yaml:2:7: NAME: expected a string, got 5");
    let error = c.get_str("MISSING").expect_err("missing");
    assert_eq!(error.kind(), ConfigErrorKind::MissingKey);
    assert!(error.to_string().contains("MISSING"), "{error}");
    assert_eq!(c.get_str("rpc_exchange").expect("default"), "nameko-rpc");
}

#[test]
fn unknown_keys_skip_known_and_claimed() {
    let c = Config::loader()
        .yaml_str("config.yaml", "amqp_uri: x\nGREETING: {}\nTYPO: 1\nlogging: {}\n")
        .vars([("NAMEKO_FROM_ENV", "1")])
        .load()
        .expect("loads");
    let unknown = c.unknown_keys(&["greeting"]);
    let keys: Vec<(&str, String)> = unknown.iter().map(|(k, l)| (k.as_str(), l.to_string())).collect();
    assert_eq!(keys, [("TYPO", "config.yaml:3:1".to_owned())]);
    assert_eq!(c.unknown_keys(&[]).len(), 2);
}

#[test]
fn defaults() {
    let c = Config::default();
    assert_eq!(c.max_workers(), 10);
    assert_eq!(c.parent_calls_tracked(), 10);
    assert_eq!(c.rpc_exchange(), "nameko-rpc");
    assert_eq!(c.amqp_uri(), "amqp://guest:guest@localhost:5672/");
    assert_eq!(c.serializer(), "json");
    assert_eq!(c.web_server_address(), "0.0.0.0:8000");
    assert_eq!(c.heartbeat(), 60);
    assert!(c.warnings().is_empty());
    assert!(c.unknown_keys(&[]).is_empty());
    let json = c.to_json();
    assert_eq!(json["max_workers"], json!(10));
    assert_eq!(json["HEARTBEAT"], json!(60));
    assert_eq!(c.max_message_size(), 8 * 1024 * 1024);
    assert_eq!(json["MAX_MESSAGE_SIZE"], json!(8 * 1024 * 1024));
    assert_eq!(json["AMQP_URI"], json!("amqp://guest:guest@localhost:5672/"));
    assert!(c.get("AMQP_URI").expect("default").location().is_default());
    for key in c.keys() {
        assert!(KNOWN_KEYS.contains(&key), "{key}");
    }
}

#[test]
fn keys_keep_file_order_then_defaults() {
    let c = load("zeta: 1\nserializer: json\nalpha: 2\n", &[]);
    let keys: Vec<&str> = c.keys().collect();
    assert_eq!(&keys[..3], ["zeta", "serializer", "alpha"]);
    assert_eq!(keys.iter().filter(|k| **k == "serializer").count(), 1);
    assert!(keys.contains(&"AMQP_URI"));
}

#[test]
fn addresses_are_nameko_style() {
    use nameko_core::config::parse_address;
    assert_eq!(parse_address("8000").unwrap(), "0.0.0.0:8000");
    assert_eq!(parse_address("127.0.0.1:0").unwrap(), "127.0.0.1:0");
    assert_eq!(parse_address("localhost:8080").unwrap(), "localhost:8080");
    assert_eq!(parse_address("[::1]:8080").unwrap(), "[::1]:8080");
    let err = parse_address("localhost").unwrap_err();
    assert!(err.contains("`localhost` is not an address"), "{err}");
    assert!(parse_address("host:99999").is_err());
}
