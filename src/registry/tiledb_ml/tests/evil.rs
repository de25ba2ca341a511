//! Pickles that would run code in Python are refused, naming the global.

use serde_json::Value as Json;

use super::{FIXTURE_FIELDS, data_dir, read};
use crate::registry::tiledb_ml::budget::Budget;
use crate::registry::tiledb_ml::pickle;
use crate::registry::tiledb_ml::tensor::DecodeLimits;
use crate::registry::tiledb_ml::torch_legacy;
use crate::registry::tiledb_ml::views::{self, Framework, ViewError};

#[test]
fn evil_pickles_name_their_global() {
    let dir = data_dir().join("evil");
    let manifest: Json = serde_json::from_slice(&read(&dir.join("manifest.json"))).expect("manifest");
    let cases = manifest.as_array().expect("list");
    assert!(cases.len() >= 20);
    let limits = DecodeLimits::default();
    for case in cases {
        let file = case["file"].as_str().expect("file");
        let want = (
            case["module"].as_str().expect("module"),
            case["name"].as_str().expect("name"),
        );
        let bytes = read(&dir.join(file));
        match case["via"].as_str().expect("via") {
            "pickle" => match pickle::load(&bytes) {
                Err(pickle::Error::ForbiddenGlobal { module, name, .. }) => {
                    assert_eq!((module.as_str(), name.as_str()), want, "{file}");
                }
                other => panic!("{file}: {other:?}"),
            },
            _ => {
                // The outer pickle is harmless; the storage stream is not.
                let v = pickle::load(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
                let err = torch_legacy::decode_tensor(&v, &limits, &Budget::standalone(u64::MAX)).expect_err(file);
                let err = ViewError::Decode {
                    context: file.into(),
                    source: err,
                };
                assert_eq!(err.forbidden_global(), Some(want), "{file}");
            }
        }
        // Every view of it refuses too.
        for (fw, field) in [
            (Framework::PyTorch, "model"),
            (Framework::PyTorch, "optimizer"),
            (Framework::Keras, "model"),
            (Framework::PyTorch, "tensorboard"),
        ] {
            assert!(
                views::field_files(fw, field, &bytes, &limits, &Budget::standalone(u64::MAX)).is_err(),
                "{file}"
            );
        }
    }
}

#[test]
fn fixture_pickles_pass_the_allowlist_but_sklearn_does_not() {
    for (fixture, field) in FIXTURE_FIELDS {
        let bytes = read(&data_dir().join(fixture).join(format!("{field}.pkl")));
        let loaded = pickle::load(&bytes);
        if fixture == "sklearn_linreg" {
            // Never unpickled by a view: shown as `model.pkl` as it is.
            match loaded {
                Err(pickle::Error::ForbiddenGlobal { module, name, .. }) => {
                    assert_eq!(
                        (module.as_str(), name.as_str()),
                        ("sklearn.linear_model._base", "LinearRegression")
                    );
                }
                other => panic!("sklearn pickle: {other:?}"),
            }
        } else {
            loaded.unwrap_or_else(|e| panic!("{fixture}/{field}: {e}"));
        }
    }
}
