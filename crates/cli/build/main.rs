//! Build script of the `ymera` binary: embeds the hash of the sources it is built from
//! (`YMERA_SOURCE_HASH`, shown by `ymera --version`), so the end-to-end tests can refuse a
//! binary that a build cache kept from other sources.

mod source_hash;

use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let root = manifest_dir
        .parent()
        .and_then(|p| p.parent())
        .expect("crates/cli sits two levels below the repository root")
        .to_path_buf();
    for path in source_hash::watched_paths(&root).expect("list the sources") {
        println!("cargo::rerun-if-changed={}", path.display());
    }
    let hash = source_hash::source_hash(&root).expect("hash the sources");
    println!(
        "cargo::rustc-env=YMERA_SOURCE_HASH={}",
        source_hash::short(&hash)
    );
}
