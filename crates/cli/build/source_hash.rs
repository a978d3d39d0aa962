//! The hash of the sources a `ymera` binary is built from, shared by the build script
//! (which embeds it in the binary, shown by `ymera --version`) and the end-to-end tests
//! (which refuse a binary whose hash is not the tree's).
//!
//! Content only: file modification times say nothing after a clone, which gives every file
//! the same time, so a build cache can look fresh for sources it was never built from.
//!
//! The sources are the workspace manifests (`Cargo.toml`, `Cargo.lock`: every dependency
//! version) and every file under `crates/<crate>/` except the crates' own `tests/`,
//! `benches/` and `examples/` (they are not part of the binary) and hidden files (editor
//! swap files). Anything the binary embeds from elsewhere in the repository must be added
//! to [`ROOT_FILES`] or [`ROOT_DIRS`].

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Files at the repository root that go into the binary.
pub(crate) const ROOT_FILES: &[&str] = &["Cargo.toml", "Cargo.lock"];
/// Directories at the repository root whose files all go into the binary.
pub(crate) const ROOT_DIRS: &[&str] = &["pipelines", "models", "sql/migrations"];
/// Subdirectories of a crate that never go into the binary.
const NOT_SOURCES: &[&str] = &["tests", "benches", "examples", "target"];

/// The paths whose changes must re-run the build script: the root files, the root
/// directories, and each top-level entry of each crate that counts as a source. Cargo
/// scans a directory given to `rerun-if-changed` recursively.
pub(crate) fn watched_paths(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = ROOT_FILES
        .iter()
        .chain(ROOT_DIRS)
        .map(|p| root.join(p))
        .collect();
    for krate in sorted_entries(&root.join("crates"))? {
        if krate.is_dir() {
            paths.extend(
                sorted_entries(&krate)?
                    .into_iter()
                    .filter(|p| counts(p, true)),
            );
        }
    }
    Ok(paths)
}

/// Every source file under `root` (the files of [`watched_paths`], directories walked), as
/// paths relative to it with `/` separators, sorted.
pub(crate) fn source_files(root: &Path) -> io::Result<Vec<String>> {
    let mut files = Vec::new();
    for path in watched_paths(root)? {
        if path.is_dir() {
            walk(root, &path, &mut files)?;
        } else if path.is_file() {
            files.push(relative(root, &path));
        }
    }
    files.sort();
    Ok(files)
}

/// The sha256 of the sources under `root` (each file's relative path, length and bytes, in
/// path order), as 64 hex digits.
pub(crate) fn source_hash(root: &Path) -> io::Result<String> {
    let mut hasher = Sha256::new();
    for file in source_files(root)? {
        let bytes = std::fs::read(root.join(&file))
            .map_err(|e| io::Error::new(e.kind(), format!("{file}: {e}")))?;
        hasher.update(file.as_bytes());
        hasher.update([0]);
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The first 16 hex digits of the hash: what `ymera --version` shows and the tests compare.
pub(crate) fn short(hash: &str) -> &str {
    &hash[..16.min(hash.len())]
}

fn walk(root: &Path, dir: &Path, files: &mut Vec<String>) -> io::Result<()> {
    for entry in sorted_entries(dir)? {
        if !counts(&entry, false) {
            continue;
        }
        if entry.is_dir() {
            walk(root, &entry, files)?;
        } else {
            files.push(relative(root, &entry));
        }
    }
    Ok(())
}

/// Whether `path` is a source: not hidden, and at a crate's top level not one of
/// [`NOT_SOURCES`].
fn counts(path: &Path, crate_top_level: bool) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let hidden = name.starts_with('.');
    let not_source = crate_top_level && path.is_dir() && NOT_SOURCES.contains(&name);
    !hidden && !not_source
}

fn sorted_entries(dir: &Path) -> io::Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut entries = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<io::Result<Vec<_>>>()?;
    entries.sort();
    Ok(entries)
}

fn relative(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}
