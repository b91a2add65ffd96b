//! "Which cloud" has one spelling: `Provider` and `AgentAuth` in this crate. This test fails when
//! another crate declares its own fieldless enum with a variant per cloud. (Enums that carry a
//! cloud's data per variant, like `Proof`, `Identity` or a verifier error, are not a second
//! spelling of the vocabulary.)
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "target" && name != "fuzz" && !name.to_string_lossy().starts_with('.') {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Variant names that spell a cloud or a cloud's auth method.
const CLOUD_WORDS: &[&str] = &[
    "Aws",
    "Amazon",
    "Azure",
    "Gcp",
    "Google",
    "AwsInstanceIdentity",
    "AzureInstanceIdentity",
    "GoogleInstanceIdentity",
];

/// Each fieldless `enum` declared in `source` with its variant names (a rough scan: enough for
/// this check).
fn enums(source: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(i) = rest.find("enum ") {
        let after = &rest[i + 5..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let Some(open) = after.find('{') else { break };
        let body = &after[open + 1..];
        let mut depth = 1;
        let mut end = body.len();
        for (j, c) in body.char_indices() {
            match c {
                '{' | '(' => depth += 1,
                '}' | ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = j;
                        break;
                    }
                }
                _ => {}
            }
        }
        let body = &body[..end];
        rest = &after[open..];
        let code: String = body
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("//") && !l.starts_with("#["))
            .collect();
        if code.contains('(') || code.contains('{') {
            continue;
        }
        let variants = body
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("//") && !l.starts_with("#["))
            .filter_map(|l| {
                let v: String = l
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                (!v.is_empty()).then_some(v)
            })
            .collect();
        out.push((name, variants));
    }
    out
}

#[test]
fn only_instauth_types_spells_the_clouds() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = here.parent().and_then(Path::parent).unwrap();
    let own = here.join("src");
    let mut files = Vec::new();
    for dir in ["crates", "bins", "xtask"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 50, "scanned too few files: {}", files.len());
    let mut offenders = Vec::new();
    for f in files {
        if f.starts_with(&own) || f.components().any(|c| c.as_os_str() == "tests") {
            continue;
        }
        let source = std::fs::read_to_string(&f).unwrap();
        for (name, variants) in enums(&source) {
            let clouds = variants
                .iter()
                .filter(|v| CLOUD_WORDS.contains(&v.as_str()))
                .count();
            if clouds >= 2 {
                offenders.push(format!("{}: enum {name}", f.display()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "use instauth_types::{{Provider, AgentAuth}} instead of:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_scan_finds_a_cloud_enum() {
    let found = enums(
        "pub enum Cloud {\n    /// x\n    Aws,\n    #[default]\n    Azure,\n    Gcp,\n}\n\
         enum Data { Aws(String), Azure { a: u8 } }",
    );
    assert_eq!(
        found,
        vec![(
            "Cloud".into(),
            vec!["Aws".into(), "Azure".into(), "Gcp".into()]
        )]
    );
}
