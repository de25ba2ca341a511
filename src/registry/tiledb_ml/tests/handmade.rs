//! The hand-made pickles of `make_handmade.py` decode to what Python says
//! they hold: plain values at protocols 0-5, numpy arrays and scalars,
//! torch-like state dicts and optimizer state, tensorboard dicts, and the
//! error cases.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value as Json, json};

use super::{data_dir, read};
use crate::registry::tiledb_ml::budget::Budget;
use crate::registry::tiledb_ml::numpy;
use crate::registry::tiledb_ml::pickle::{self, Value};
use crate::registry::tiledb_ml::tensor::{DType, DecodeLimits};
use crate::registry::tiledb_ml::views::{self, Framework, ViewError};

/// The tagged JSON form `make_handmade.py` writes.
fn tag(v: &Value<'_>) -> Json {
    let seq = |items: &[Value<'_>]| Json::Array(items.iter().map(tag).collect());
    let pairs =
        |items: &[(Value<'_>, Value<'_>)]| Json::Array(items.iter().map(|(k, v)| json!([tag(k), tag(v)])).collect());
    match v {
        Value::None => Json::Null,
        Value::Bool(b) => json!(b),
        Value::Int(i) => json!({ "int": i.to_string() }),
        Value::BigInt(b) => json!({ "int": pickle::bigint_to_decimal(b) }),
        Value::Float(f) => json!({ "float": format!("{:016x}", f.to_bits()) }),
        Value::Str(s) => json!({ "str": s }),
        Value::Bytes(b) => json!({ "bytes": hex_of(b) }),
        Value::ByteArray(b) => json!({ "bytearray": hex_of(b) }),
        Value::List(items) => json!({ "list": seq(items) }),
        Value::Tuple(items) => json!({ "tuple": seq(items) }),
        Value::Set(items) => json!({ "set": seq(items) }),
        Value::FrozenSet(items) => json!({ "frozenset": seq(items) }),
        Value::Dict(items) => json!({ "dict": pairs(items) }),
        Value::Object(o) if o.class.is("collections", "OrderedDict") => {
            json!({ "odict": pairs(&o.items) })
        }
        other => json!({ "other": format!("{other:?}") }),
    }
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn numpy_dtype(code: &str) -> DType {
    match code {
        "f4" => DType::F32,
        "f8" => DType::F64,
        "f2" => DType::F16,
        "i8" => DType::I64,
        "i4" => DType::I32,
        "i2" => DType::I16,
        "u1" => DType::U8,
        "u4" => DType::U32,
        "b1" => DType::Bool,
        other => panic!("dtype {other}"),
    }
}

/// name -> (dtype, shape, bytes), plus `__metadata__`, via the reference crate.
type Parsed = (BTreeMap<String, (String, Vec<usize>, Vec<u8>)>, HashMap<String, String>);

fn parse_safetensors(bytes: &[u8]) -> Parsed {
    let st = safetensors::SafeTensors::deserialize(bytes).expect("loads in the safetensors crate");
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).expect("metadata");
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let dtype = format!("{:?}", view.dtype());
            (name, (dtype, view.shape().to_vec(), view.data().to_vec()))
        })
        .collect();
    (tensors, meta.metadata().clone().unwrap_or_default())
}

#[test]
fn handmade_pickles() {
    let dir = data_dir().join("handmade");
    let manifest: Json = serde_json::from_slice(&read(&dir.join("manifest.json"))).expect("manifest");
    let limits = DecodeLimits::default();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut values: HashMap<String, Json> = HashMap::new();
    for case in manifest.as_array().expect("list") {
        let file = case["file"].as_str().expect("file");
        let kind = case["kind"].as_str().expect("kind");
        let mut expect = case["expect"].clone();
        if let Some(same) = expect.get("same_as").and_then(Json::as_str) {
            expect = values
                .get(same)
                .cloned()
                .unwrap_or_else(|| panic!("{file}: {same} not listed before"));
        }
        values.insert(file.to_string(), expect.clone());
        let expect = &expect;
        let bytes = read(&dir.join(file));
        *counts.entry(kind.to_string()).or_default() += 1;
        match kind {
            "value" => {
                let v = pickle::load(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
                assert_eq!(&tag(&v), expect, "{file}");
            }
            "value_skip" => {
                pickle::load(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
            }
            "error" => {
                let err = pickle::load(&bytes).expect_err(file);
                let name = format!("{err:?}");
                assert!(name.starts_with(expect.as_str().expect("str")), "{file}: {name}");
            }
            "numpy" => {
                let v = pickle::load(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
                assert_eq!(numpy::is_scalar(&v), expect["scalar"].as_bool().expect("bool"));
                let t = numpy::decode_any(&v, &Budget::standalone(u64::MAX)).unwrap_or_else(|e| panic!("{file}: {e}"));
                assert_eq!(t.dtype, numpy_dtype(expect["dtype"].as_str().expect("dtype")), "{file}");
                let shape: Vec<usize> = serde_json::from_value(expect["shape"].clone()).expect("shape");
                assert_eq!(t.shape, shape, "{file}");
                assert_eq!(hex_of(&t.data), expect["hex"].as_str().expect("hex"), "{file}");
            }
            "torch" => {
                let file_view = views::pytorch_model(&bytes, &limits, &Budget::standalone(u64::MAX))
                    .unwrap_or_else(|e| panic!("{file}: {e}"));
                let by_name: HashMap<&str, _> = file_view.tensors().iter().map(|(n, t)| (n.as_str(), t)).collect();
                let want = expect.as_array().expect("list");
                assert_eq!(by_name.len(), want.len());
                for w in want {
                    let name = w[0].as_str().expect("name");
                    let t = by_name[name];
                    assert_eq!(t.dtype.name(), w[1].as_str().expect("dtype"), "{file}/{name}");
                    let shape: Vec<usize> = serde_json::from_value(w[2].clone()).expect("shape");
                    assert_eq!(t.shape, shape, "{file}/{name}");
                    assert_eq!(hex_of(&t.data), w[3].as_str().expect("hex"), "{file}/{name}");
                }
                parse_safetensors(&file_view.to_vec());
            }
            "torch_error" => {
                let err = views::pytorch_model(&bytes, &limits, &Budget::standalone(u64::MAX)).expect_err(file);
                assert!(
                    format!("{err:?}").contains(expect.as_str().expect("str")),
                    "{file}: {err:?}"
                );
            }
            "torch_optimizer" => {
                let f = views::pytorch_optimizer(&bytes, &limits, &Budget::standalone(u64::MAX))
                    .unwrap_or_else(|e| panic!("{file}: {e}"));
                let (tensors, meta) = parse_safetensors(&f.to_vec());
                assert_eq!(meta["format"], "pt");
                for (key, value) in expect.as_object().expect("object") {
                    if key == "tensors" {
                        for w in value.as_array().expect("list") {
                            let (dtype, shape, data) = &tensors[w[0].as_str().expect("name")];
                            assert_eq!(dtype, w[1].as_str().expect("dtype"));
                            let want_shape: Vec<usize> = serde_json::from_value(w[2].clone()).expect("shape");
                            assert_eq!(shape, &want_shape);
                            assert_eq!(hex_of(data), w[3].as_str().expect("hex"));
                        }
                        assert_eq!(tensors.len(), value.as_array().expect("list").len());
                    } else {
                        assert_eq!(meta.get(key).map(String::as_str), value.as_str(), "{file}: {key}");
                    }
                }
                assert_eq!(meta.len(), expect.as_object().expect("object").len());
            }
            "tensorboard" => {
                let files = views::tensorboard_files(&bytes, &limits, &Budget::standalone(u64::MAX))
                    .unwrap_or_else(|e| panic!("{file}: {e}"));
                let got: Vec<Json> = files.iter().map(|f| json!([f.path, hex_of(&f.data)])).collect();
                assert_eq!(&Json::Array(got), expect, "{file}");
                let via_fields = views::field_files(
                    Framework::PyTorch,
                    "tensorboard",
                    &bytes,
                    &limits,
                    &Budget::standalone(u64::MAX),
                )
                .expect("field files");
                assert!(via_fields.iter().all(|f| f.path.starts_with("tensorboard/")));
            }
            "tensorboard_error" => {
                let err = views::tensorboard_files(&bytes, &limits, &Budget::standalone(u64::MAX)).expect_err(file);
                assert!(matches!(err, ViewError::BadPath(_)), "{file}: {err:?}");
            }
            other => panic!("unknown kind {other}"),
        }
    }
    // Guard against a silently empty manifest.
    assert!(counts["value"] >= 60, "{counts:?}");
    assert!(counts["numpy"] >= 40, "{counts:?}");
    assert!(counts["torch"] >= 2, "{counts:?}");
}
