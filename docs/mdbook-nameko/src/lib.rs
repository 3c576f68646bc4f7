//! The guide's chapters in the two forms they are read in: the book (mdBook, with API
//! links into `cargo doc`'s output) and the `nameko-docs` crate (rustdoc, where every
//! code block is a doctest). Shared by the `mdbook-nameko` preprocessor and
//! `nameko-docs`'s build script, so both read the same source the same way.
//!
//! A chapter is written once, in the book's form:
//! - a link to another chapter is `[text](rpc.md)` or `[text](rpc.md#heading-slug)`;
//! - a link to an API item is a rustdoc path, `` [`Dependency`](nameko::core::Dependency) ``;
//! - code from `examples/` is included with mdBook's `{{#include path}}`,
//!   `{{#include path:anchor}}` or `{{#rustdoc_include path:anchor}}`.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

/// What went wrong with a chapter: the file and what is wrong in it.
pub type Problem = String;

/// The book's form: every API link becomes a link into `cargo doc`'s output beside the
/// book (`target/doc`, the book being `target/book`), searching for the item and opening
/// the first hit; anchor comments (`// ANCHOR: name`) that a whole-file include brought
/// into a code block are dropped, as the rustdoc form drops them.
pub fn for_book(markdown: &str) -> String {
    let mut fenced = false;
    let mut without_anchors = String::with_capacity(markdown.len());
    for line in markdown.split_inclusive('\n') {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if fenced && is_anchor_line(line) {
            continue;
        }
        without_anchors.push_str(line);
    }
    rewrite_links(&without_anchors, |target| {
        api_path(target).map(|path| {
            // `Type::method` searches for both; a plain item for its name.
            let (head, item) = path.rsplit_once("::").unwrap_or(("", path));
            let owner = head.rsplit("::").next().unwrap_or("");
            let query = if owner.starts_with(char::is_uppercase) {
                format!("{owner}::{item}")
            } else {
                item.to_owned()
            };
            format!("../doc/nameko/index.html?search={query}&go_to_first=true")
        })
    })
}

/// The rustdoc form of the chapter at `path`: includes expanded as mdBook expands them,
/// and links to other chapters turned into intra-doc links to their modules
/// (`rpc.md#x` into `crate::rpc#x`; `-` in a file name becomes `_`). Returns the text
/// and the files it included.
pub fn for_rustdoc(path: &Path, markdown: &str) -> Result<(String, Vec<PathBuf>), Problem> {
    let (expanded, included) = expand_includes(path, markdown)?;
    let text = rewrite_links(&expanded, |target| {
        let (file, fragment) = chapter_link(target)?;
        let module = file.trim_end_matches(".md").replace('-', "_");
        Some(match fragment {
            Some(fragment) => format!("crate::{module}#{fragment}"),
            None => format!("crate::{module}"),
        })
    });
    Ok((text, included))
}

/// Checks every link of the chapter at `path` (its source, `markdown`) that points at a
/// chapter: the chapter exists in `guide` and has the heading the fragment names.
/// `#fragment` alone points into the chapter itself.
pub fn check_links(guide: &Path, path: &Path, markdown: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    rewrite_links(markdown, |target| {
        let (file, fragment) = if let Some(fragment) = target.strip_prefix('#') {
            (name.clone(), Some(fragment))
        } else {
            let (file, fragment) = chapter_link(target)?;
            (file.to_owned(), fragment)
        };
        let Ok(text) = fs::read_to_string(guide.join(&file)) else {
            problems.push(format!(
                "{}: the link `{target}` names no chapter {file}",
                path.display()
            ));
            return None;
        };
        if let Some(fragment) = fragment
            && !heading_ids(&text).contains(fragment)
        {
            problems.push(format!(
                "{}: the link `{target}` names no heading of {file} (slug `{fragment}`)",
                path.display()
            ));
        }
        None
    });
    problems
}

/// The ids mdBook and rustdoc give the chapter's headings: lower case, spaces turned
/// into `-`, anything but letters, digits, `-` and `_` dropped.
pub fn heading_ids(markdown: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for line in outside_fences(markdown) {
        let Some(title) = line.strip_prefix('#') else { continue };
        let title = title.trim_start_matches('#');
        if !title.starts_with(' ') {
            continue;
        }
        let id: String = title
            .trim()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_ascii_lowercase()),
                _ => None,
            })
            .collect();
        ids.insert(id);
    }
    ids
}

/// A line marking where an anchor starts or ends, in any comment syntax.
fn is_anchor_line(line: &str) -> bool {
    line.contains("ANCHOR:") || line.contains("ANCHOR_END:")
}

/// `rpc.md` or `rpc.md#slug`: a chapter beside this one.
fn chapter_link(target: &str) -> Option<(&str, Option<&str>)> {
    let (file, fragment) = match target.split_once('#') {
        Some((file, fragment)) => (file, Some(fragment)),
        None => (target, None),
    };
    let plain = file.ends_with(".md") && !file.contains('/') && !file.contains(':');
    plain.then_some((file, fragment))
}

/// `nameko::core::Dependency`: a rustdoc path into one of our crates.
fn api_path(target: &str) -> Option<&str> {
    let root = target.split("::").next()?;
    let ours = root == "nameko" || root.starts_with("nameko_");
    let path_like = target.contains("::")
        && target
            .split("::")
            .all(|s| !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || c == '_'));
    (ours && path_like).then_some(target)
}

/// The lines of `markdown` outside fenced code blocks.
fn outside_fences(markdown: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    markdown.lines().filter(move |line| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// Calls `rewrite` with the target of every inline link `[text](target)` outside fenced
/// code blocks, replacing the target when it returns `Some`.
fn rewrite_links(markdown: &str, mut rewrite: impl FnMut(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(markdown.len());
    let mut fenced = false;
    for line in markdown.split_inclusive('\n') {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if fenced || !line.contains("](") {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let (head, tail) = rest.split_at(at + 2);
            out.push_str(head);
            match tail.find(')') {
                Some(end) if !tail[..end].contains(char::is_whitespace) => {
                    let target = &tail[..end];
                    out.push_str(&rewrite(target).unwrap_or_else(|| target.to_owned()));
                    rest = &tail[end..];
                }
                _ => rest = tail,
            }
        }
        out.push_str(rest);
    }
    out
}

/// Expands mdBook's `{{#include path}}`, `{{#include path:anchor}}` and
/// `{{#rustdoc_include path[:anchor]}}` (paths relative to the chapter) as mdBook
/// does: anchor lines dropped, an anchor's part dedented, and `rustdoc_include`
/// keeping the rest of the file as hidden `# ` lines so the whole file compiles.
fn expand_includes(chapter: &Path, markdown: &str) -> Result<(String, Vec<PathBuf>), Problem> {
    let base = chapter.parent().unwrap_or(Path::new("."));
    let mut out = String::with_capacity(markdown.len());
    let mut included = Vec::new();
    let mut rest = markdown;
    while let Some(start) = rest.find("{{#") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 3..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("{}: an unclosed `{{{{#`", chapter.display()))?;
        let directive = after[..end].trim();
        let (kind, argument) = directive.split_once(char::is_whitespace).unwrap_or((directive, ""));
        let hidden = match kind {
            "include" => false,
            "rustdoc_include" => true,
            other => {
                return Err(format!(
                    "{}: `{{{{#{other}}}}}` is not a directive the guide uses (include, rustdoc_include)",
                    chapter.display()
                ));
            }
        };
        let (file, anchor) = match argument.trim().split_once(':') {
            Some((file, anchor)) => (file, Some(anchor)),
            None => (argument.trim(), None),
        };
        let path = base.join(file);
        let text = fs::read_to_string(&path)
            .map_err(|e| format!("{}: cannot include {}: {e}", chapter.display(), path.display()))?;
        let part = match anchor {
            None => drop_anchor_lines(&text, None, hidden),
            Some(anchor) if !anchor.is_empty() && !anchor.starts_with(|c: char| c.is_ascii_digit()) => {
                let part = drop_anchor_lines(&text, Some(anchor), hidden);
                if part.is_empty() {
                    return Err(format!(
                        "{}: {} has no anchor `{anchor}`",
                        chapter.display(),
                        path.display()
                    ));
                }
                part
            }
            Some(lines) => {
                return Err(format!(
                    "{}: line ranges (`{file}:{lines}`) are fragile; mark the part with an anchor",
                    chapter.display()
                ));
            }
        };
        out.push_str(part.trim_end_matches('\n'));
        included.push(path);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok((out, included))
}

/// The lines of `text` without anchor lines: all of them (`anchor` `None`), or those
/// between `ANCHOR: anchor` and `ANCHOR_END: anchor`, dedented — or, `hidden`, all of
/// them with the others turned into hidden `# ` lines.
fn drop_anchor_lines(text: &str, anchor: Option<&str>, hidden: bool) -> String {
    let is_marker = |line: &str, marker: &str, name: &str| {
        line.find(marker).is_some_and(|at| {
            let after = line[at + marker.len()..].trim_start();
            after
                .strip_prefix(name)
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_alphanumeric() || c == '_' || c == '-'))
        })
    };
    let mut inside = anchor.is_none();
    let mut kept: Vec<(bool, &str)> = Vec::new();
    for line in text.lines() {
        if let Some(name) = anchor {
            if is_marker(line, "ANCHOR:", name) {
                inside = true;
            } else if is_marker(line, "ANCHOR_END:", name) {
                inside = false;
            }
        }
        if is_anchor_line(line) {
            continue;
        }
        kept.push((inside, line));
    }
    if hidden {
        let mut out = String::new();
        for (visible, line) in kept {
            if !visible {
                out.push_str("# ");
            }
            out.push_str(line);
            out.push('\n');
        }
        return out;
    }
    let shown: Vec<&str> = kept
        .into_iter()
        .filter(|(visible, _)| *visible)
        .map(|(_, l)| l)
        .collect();
    let indent = shown
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut out = String::new();
    for line in shown {
        out.push_str(line.get(indent..).unwrap_or(""));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_links_point_into_cargo_doc_and_chapter_links_stay() {
        let md = "See [`Dependency`](nameko::core::Dependency), [`publish`](nameko::messaging::Publisher::publish) and [RPC](rpc.md#calls).\n```rust\nlet x = v[0](nameko::core::Dependency);\n```\n";
        let book = for_book(md);
        assert!(
            book.contains("](../doc/nameko/index.html?search=Dependency&go_to_first=true)"),
            "{book}"
        );
        assert!(
            book.contains("](../doc/nameko/index.html?search=Publisher::publish&go_to_first=true)"),
            "{book}"
        );
        assert!(book.contains("[RPC](rpc.md#calls)"), "{book}");
        assert!(
            book.contains("v[0](nameko::core::Dependency)"),
            "code is left alone: {book}"
        );
        let whole = for_book("```rust\n// ANCHOR: a\nfn a() {}\n    // ANCHOR_END: a\n```\nANCHOR: prose\n");
        assert_eq!(whole, "```rust\nfn a() {}\n```\nANCHOR: prose\n");
    }

    #[test]
    fn rustdoc_form_links_chapters_as_modules_and_includes_anchors() {
        let dir = std::env::temp_dir().join(format!("mdbook-nameko-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("code.rs"),
            "use a;\n// ANCHOR: part\n    fn shown() {}\n    // ANCHOR: inner\n    fn inner() {}\n    // ANCHOR_END: inner\n// ANCHOR_END: part\nfn after() {}\n",
        )
        .unwrap();
        let chapter = dir.join("python-cluster.md");
        let md = "[x](python-cluster.md#a-b) [y](rpc.md)\n```rust\n{{#include code.rs:part}}\n```\n```rust\n{{#rustdoc_include code.rs:inner}}\n```\n";
        let (text, included) = for_rustdoc(&chapter, md).unwrap();
        assert!(
            text.contains("[x](crate::python_cluster#a-b) [y](crate::rpc)"),
            "{text}"
        );
        assert!(text.contains("```rust\nfn shown() {}\nfn inner() {}\n```"), "{text}");
        assert!(
            text.contains("# use a;\n#     fn shown() {}\n    fn inner() {}\n# fn after() {}\n```"),
            "{text}"
        );
        assert_eq!(included.len(), 2);
        let missing = for_rustdoc(&chapter, "{{#include code.rs:nope}}").unwrap_err();
        assert!(missing.contains("no anchor `nope`"), "{missing}");
        let ranges = for_rustdoc(&chapter, "{{#include code.rs:2:3}}").unwrap_err();
        assert!(ranges.contains("line ranges"), "{ranges}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn broken_chapter_links_are_reported() {
        let dir = std::env::temp_dir().join(format!("mdbook-nameko-links-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("rpc.md"),
            "# RPC\n## Calls, and replies\n```\n# not a heading\n```\n",
        )
        .unwrap();
        let chapter = dir.join("events.md");
        let md = "# Events\n[a](rpc.md#calls-and-replies) [b](rpc.md#not-a-heading) [c](timers.md) [d](#events) [e](#nope) [f](https://x.io/a.md)\n";
        fs::write(&chapter, md).unwrap();
        let problems = check_links(&dir, &chapter, md);
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(
            problems[0].contains("`rpc.md#not-a-heading` names no heading"),
            "{problems:#?}"
        );
        assert!(problems[1].contains("`timers.md` names no chapter"), "{problems:#?}");
        assert!(
            problems[2].contains("`#nope` names no heading of events.md"),
            "{problems:#?}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
