//! Writes each guide chapter's rustdoc form to `OUT_DIR` (includes expanded, chapter
//! links made intra-doc links; see `mdbook-nameko`), and fails the build on a link to
//! a chapter or heading that does not exist.

use std::{env, fs, path::PathBuf};

fn main() {
    let guide = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("guide");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets it"));
    println!("cargo::rerun-if-changed={}", guide.display());
    let mut problems = Vec::new();
    let mut chapters: Vec<PathBuf> = fs::read_dir(&guide)
        .expect("docs/guide exists")
        .map(|entry| entry.expect("docs/guide is readable").path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .filter(|path| !path.ends_with("SUMMARY.md"))
        .collect();
    chapters.sort();
    let mut names = Vec::new();
    for path in chapters {
        let markdown = fs::read_to_string(&path).expect("a chapter is UTF-8");
        match mdbook_nameko::for_rustdoc(&path, &markdown) {
            Ok((text, included)) => {
                for file in included {
                    println!("cargo::rerun-if-changed={}", file.display());
                }
                problems.extend(mdbook_nameko::check_links(&guide, &path, &markdown));
                let name = path.file_name().expect("a chapter has a name");
                fs::write(out.join(name), text).expect("OUT_DIR is writable");
                names.push(name.to_string_lossy().into_owned());
            }
            Err(problem) => problems.push(problem),
        }
    }
    // The book's table of contents, which is also the crate's front page: every
    // chapter is in it.
    let summary = guide.join("SUMMARY.md");
    let text = fs::read_to_string(&summary).expect("docs/guide/SUMMARY.md exists");
    problems.extend(mdbook_nameko::check_links(&guide, &summary, &text));
    for chapter in &names {
        if !text.contains(&format!("]({chapter})")) {
            problems.push(format!("{chapter} is not in SUMMARY.md, so not in the book"));
        }
    }
    match mdbook_nameko::for_rustdoc(&summary, &text) {
        Ok((text, _)) => fs::write(out.join("SUMMARY.md"), text).expect("OUT_DIR is writable"),
        Err(problem) => problems.push(problem),
    }
    assert!(
        problems.is_empty(),
        "the guide has broken links or includes:\n{}",
        problems.join("\n")
    );
}
