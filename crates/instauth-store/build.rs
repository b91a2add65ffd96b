//! `embed_migrations!` reads `migrations/` at compile time; cargo does not know that, so a new
//! migration would not reach a build whose Rust sources did not change.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
