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
    let mut manifests = vec![root.join("xtask/Cargo.toml"), root.join("fuzz/Cargo.toml")];
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
