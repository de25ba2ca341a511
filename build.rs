//! Finds libtiledb 2.30 and links it with an rpath, so the binaries run
//! without LD_LIBRARY_PATH.
//!
//! Search order: `MODELFS_TILEDB_LIB` (a directory holding `libtiledb*.so*`,
//! or the library file itself), then the project's virtual environment made
//! by `scripts/setup.sh`, where the `tiledb==0.36.1` wheel ships the library
//! as `tiledb.libs/libtiledb-<hash>.so.2.30` (that file name is its SONAME).

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=MODELFS_TILEDB_LIB");
    println!("cargo:rerun-if-changed=build.rs");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets this"));
    let lib = match find_library(&manifest) {
        Some(lib) => lib,
        None => {
            println!(
                "cargo::error=libtiledb 2.30 not found: run scripts/setup.sh (or set MODELFS_TILEDB_LIB to the directory holding libtiledb)"
            );
            return;
        }
    };
    let dir = lib.parent().expect("a file has a parent").to_path_buf();
    let file = lib.file_name().and_then(|n| n.to_str()).expect("utf-8 name");
    // The wheel's library has no plain `libtiledb.so`, so link it by file name.
    println!("cargo:rustc-link-search=native={}", dir.display());
    println!("cargo:rustc-link-arg=-l:{file}");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    println!("cargo:rerun-if-changed={}", lib.display());
}

fn find_library(manifest: &Path) -> Option<PathBuf> {
    if let Ok(path) = std::env::var("MODELFS_TILEDB_LIB") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Some(path);
        }
        if let Some(lib) = library_in(&path) {
            return Some(lib);
        }
    }
    let venv_lib = manifest.join(".venv").join("lib");
    for python in std::fs::read_dir(venv_lib).ok()?.flatten() {
        let libs = python.path().join("site-packages").join("tiledb.libs");
        if let Some(lib) = library_in(&libs) {
            return Some(lib);
        }
    }
    None
}

fn library_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libtiledb") && n.contains(".so"))
        })
        .collect();
    found.sort();
    found.pop()
}
