//! Compile-time behaviour of the macros: `ui/pass` must compile, every `ui/fail` case
//! must fail with its reviewed `.stderr` (regenerate with `TRYBUILD=overwrite`).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
