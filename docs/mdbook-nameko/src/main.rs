//! The guide's mdBook preprocessor (`docs/book.toml` runs it): turns each chapter's
//! rustdoc API links into links into `cargo doc`'s output beside the book. The
//! library's docs say how a chapter is written.
//!
//! mdBook runs it as `mdbook-nameko supports <renderer>` (every renderer is supported)
//! and then with `[context, book]` as JSON on stdin, expecting the book on stdout.

use std::{
    io::{self, Read, Write},
    process::ExitCode,
};

use serde_json::Value;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("supports") => return ExitCode::SUCCESS,
        Some(other) => {
            eprintln!("mdbook-nameko: unknown argument `{other}` (mdBook runs it with none or `supports`)");
            return ExitCode::from(2);
        }
        None => {}
    }
    match preprocess() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mdbook-nameko: {error}");
            ExitCode::FAILURE
        }
    }
}

fn preprocess() -> Result<(), String> {
    let mut input = String::new();
    io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| format!("cannot read the book from stdin: {e}"))?;
    let value: Value = serde_json::from_str(&input).map_err(|e| format!("the input is not JSON: {e}"))?;
    let Value::Array(mut pair) = value else {
        return Err("expected `[context, book]` on stdin".to_owned());
    };
    let (2, Some(mut book)) = (pair.len(), pair.pop()) else {
        return Err("expected `[context, book]` on stdin".to_owned());
    };
    rewrite_chapters(&mut book);
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, &book).map_err(|e| format!("cannot write the book: {e}"))?;
    out.flush().map_err(|e| format!("cannot write the book: {e}"))
}

/// Rewrites the content of every chapter, at any depth, whatever the book's JSON
/// layout around them (`sections` or `items`).
fn rewrite_chapters(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(chapter)) = map.get_mut("Chapter")
                && let Some(Value::String(content)) = chapter.get_mut("content")
            {
                *content = mdbook_nameko::for_book(content);
            }
            map.values_mut().for_each(rewrite_chapters);
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_chapters),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_nested_chapters_and_nothing_else() {
        let mut book = serde_json::json!({"items": [
            {"Chapter": {"name": "a", "content": "[`D`](nameko::core::Dependency)", "sub_items": [
                {"Chapter": {"name": "b", "content": "[x](b.md) [`P`](nameko::messaging::Publisher)", "sub_items": []}}
            ]}},
            "Separator",
            {"PartTitle": "[`D`](nameko::core::Dependency)"}
        ]});
        rewrite_chapters(&mut book);
        let a = &book["items"][0]["Chapter"];
        assert_eq!(
            a["content"],
            "[`D`](../doc/nameko/index.html?search=Dependency&go_to_first=true)"
        );
        assert_eq!(
            a["sub_items"][0]["Chapter"]["content"],
            "[x](b.md) [`P`](../doc/nameko/index.html?search=Publisher&go_to_first=true)"
        );
        assert_eq!(book["items"][2]["PartTitle"], "[`D`](nameko::core::Dependency)");
    }
}
