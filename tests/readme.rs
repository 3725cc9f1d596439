//! Every Rust example in the READMEs and the crate's docs compiles as it is shown: no lines
//! hidden the rustdoc way (`# ...`, which GitHub and crates.io show), a `main` of its own, and
//! compiled by the doc tests (`README.md` and `docs/crate.md` are doc-tested by the core
//! crate, `integrations/burn/README.md` by the burn crate). The burn example shown in the
//! main README, which the core crate cannot compile, must be the burn README's verbatim.

use std::path::Path;

/// Each ```rust block of a Markdown file: its fence attributes and its text.
fn rust_blocks(path: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut blocks = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(fence) = line.strip_prefix("```rust") else {
            continue;
        };
        let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
        blocks.push((fence.to_string(), body.join("\n")));
    }
    blocks
}

#[test]
fn every_rust_example_is_whole_and_compiled() {
    let burn_examples = rust_blocks("integrations/burn/README.md");
    let mut checked = 0;
    for path in ["README.md", "docs/crate.md", "integrations/burn/README.md"] {
        let blocks = rust_blocks(path);
        assert!(!blocks.is_empty(), "{path} has no Rust example");
        for (i, (fence, body)) in blocks.iter().enumerate() {
            let what = format!("{path}, Rust example {}", i + 1);
            assert!(
                body.lines().all(|l| l != "#" && !l.starts_with("# ")),
                "{what}: hidden lines do not paste"
            );
            assert!(
                body.contains("fn main()"),
                "{what}: no main, so it does not run as pasted"
            );
            match fence.as_str() {
                "" | ",no_run" => {}
                ",ignore" => assert!(
                    burn_examples
                        .iter()
                        .any(|(f, b)| f == ",no_run" && b == body),
                    "{what}: an ignored example must be the burn README's (compiled there)"
                ),
                other => panic!("{what}: fence rust{other} is not compiled"),
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 6,
        "only {checked} examples found: is the fence parsing broken?"
    );
}
