//! Tests across the decoding modules, on pickles made by Python:
//! - `handmade`: the pickles of `tests/data/tiledb_ml/make_handmade.py`
//!   decode to what Python says they hold;
//! - `evil`: the pickles of `make_evil.py` fail with the forbidden global
//!   they name, in every view;
//! - `fuzz`: random and mutated pickles never panic and are answered
//!   quickly.
//!
//! The fixture arrays themselves are tested end to end, through TileDB and
//! the binary, in `tests/tiledb_ml.rs`.

use std::path::{Path, PathBuf};

mod evil;
mod fuzz;
mod handmade;

/// `tests/data/tiledb_ml` of the crate.
fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiledb_ml")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The extracted field pickles of the fixture arrays (`extract.py`).
const FIXTURE_FIELDS: [(&str, &str); 6] = [
    ("keras_mlp", "model"),
    ("keras_mlp", "optimizer"),
    ("pytorch_mixed", "model"),
    ("pytorch_mlp", "model"),
    ("pytorch_mlp", "optimizer"),
    ("sklearn_linreg", "model"),
];
