//! `Verified::__new_after_verification` exists only with the `__verifier-internals` feature;
//! this test keeps that feature out of every manifest but the verifier crates', so nothing else
//! in the workspace can mint a `Verified<Identity>`.

use std::path::Path;

const ALLOWED: &[&str] = &[
    "instauth-verify",
    "instauth-verify-aws",
    "instauth-verify-azure",
    "instauth-verify-gcp",
];

#[test]
fn only_verifier_crates_enable_the_constructor_feature() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut manifests = vec![
        root.join("xtask/Cargo.toml"),
        root.join("xtask/loadtest/Cargo.toml"),
        root.join("fuzz/Cargo.toml"),
    ];
    for dir in ["crates", "bins"] {
        for e in std::fs::read_dir(root.join(dir))
            .into_iter()
            .flatten()
            .flatten()
        {
            manifests.push(e.path().join("Cargo.toml"));
        }
    }
    let mut checked = 0;
    for m in manifests {
        let Ok(text) = std::fs::read_to_string(&m) else {
            continue;
        };
        checked += 1;
        let name = m
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        assert!(
            !text.contains("__verifier-internals") || ALLOWED.contains(&name),
            "{} enables __verifier-internals; only the verifier crates may",
            m.display()
        );
    }
    assert!(checked >= 5, "found only {checked} manifests");
}

/// Feature unification means the constructor is compiled whenever a verifier crate is in the
/// build, so also check that no source outside the verifier crates names it.
#[test]
fn only_verifier_crates_call_the_constructor() {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if p.is_dir() && name != "target" && !name.starts_with('.') {
                walk(&p, out);
            } else if name.ends_with(".rs") {
                out.push(p);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    for dir in ["crates", "bins", "xtask", "fuzz"] {
        walk(&root.join(dir), &mut files);
    }
    assert!(files.len() > 10, "found only {} source files", files.len());
    let needle = ["__new_after", "_verification"].concat();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        if !text.contains(&needle) {
            continue;
        }
        let in_verifier = f
            .components()
            .any(|c| ALLOWED.contains(&c.as_os_str().to_str().unwrap_or_default()));
        let is_this_test = f.ends_with("tests/sealed.rs");
        assert!(
            in_verifier || is_this_test,
            "{} mints Verified values; only the verifier crates may",
            f.display()
        );
    }
}
