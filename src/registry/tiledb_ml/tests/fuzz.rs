//! Property tests: no input makes the reader or the views panic, and every
//! input is answered quickly because the step and allocation bounds hold.
//!
//! Inputs are random bytes, random opcode soups, and mutations (byte
//! flips, truncations, insertions, spliced opcodes, duplicated chunks) of
//! the real fixture pickles and of the hand-made ones (numpy, torch-like,
//! tensorboard). Each input also goes through [`ViewFile`], the owned form
//! a mount serves.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::data_dir;
use crate::registry::tiledb_ml::budget::Budget;
use crate::registry::tiledb_ml::pickle::{self, Limits};
use crate::registry::tiledb_ml::pyjson;
use crate::registry::tiledb_ml::tensor::DecodeLimits;
use crate::registry::tiledb_ml::view_file::ViewFile;
use crate::registry::tiledb_ml::views::{self, Framework};

/// Tight bounds so that a hostile input costs milliseconds.
fn limits() -> DecodeLimits {
    DecodeLimits {
        pickle: Limits {
            max_input_len: 1 << 20,
            max_alloc_bytes: 16 << 20,
            max_memo_entries: 1 << 14,
            max_stack_len: 1 << 14,
            max_mark_depth: 256,
            max_nesting: 64,
            max_steps: 100_000,
        },
        max_expanded_bytes: 1 << 20,
    }
}

fn seeds() -> &'static Vec<Vec<u8>> {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let root = data_dir();
        let mut out = Vec::new();
        for dir in [
            "keras_mlp",
            "pytorch_mixed",
            "pytorch_mlp",
            "sklearn_linreg",
            "handmade",
        ] {
            let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
                .expect("testdata")
                .map(|e| e.expect("entry").path())
                .filter(|p| p.extension().is_some_and(|e| e == "pkl"))
                .collect();
            files.sort();
            // Every fixture pickle, and a spread of the hand-made ones.
            let keep = |name: &str| {
                dir != "handmade"
                    || ["_p0", "_p2", "_p4", "_p5"]
                        .iter()
                        .any(|p| name.ends_with(&format!("{p}.pkl")))
            };
            for f in files {
                if keep(&f.file_name().unwrap_or_default().to_string_lossy()) {
                    out.push(std::fs::read(&f).expect("read seed"));
                }
            }
        }
        assert!(out.len() > 20);
        out
    })
}

/// The materialisation budget of each fuzzed view: small, so a mutated
/// pickle that copies one object many times stops early.
fn budget() -> Budget<'static> {
    Budget::standalone(64 << 20)
}

/// Runs every consumer over `data`; panics are the only failure.
fn exercise(data: &[u8]) {
    let limits = limits();
    let start = Instant::now();
    if let Ok(v) = pickle::load_with(data, &limits.pickle) {
        let _ = views::pytorch_model_value(&v, &limits, &budget()).map(|f| f.to_vec());
        let _ = views::pytorch_optimizer_value(&v, &limits, &budget()).map(|f| f.to_vec());
        let _ = views::keras_weights_value(&v, &budget()).map(|f| f.to_vec());
        let _ = views::tensorboard_value(&v, &budget());
        let _ = pyjson::dumps(&v);
    }
    let _ = pickle::load_prefix(data, &limits.pickle);
    let field = Arc::new(data.to_vec());
    for (framework, name) in [
        (Framework::PyTorch, "model"),
        (Framework::PyTorch, "optimizer"),
        (Framework::Keras, "model"),
        (Framework::Keras, "tensorboard"),
    ] {
        if let Ok(files) = views::field_files(framework, name, &field, &limits, &budget()) {
            for f in files {
                let view = ViewFile::from_content(f.content, &field);
                let mut buf = [0u8; 64];
                let _ = view.read_at(view.len() / 2, &mut buf);
                let _ = view.read_at(view.len().saturating_sub(3), &mut buf);
            }
        }
    }
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
}

/// Short opcode sequences worth splicing into a valid pickle.
const SPLICES: &[&[u8]] = &[
    b"(",
    b"0",
    b"1",
    b"2",
    b".",
    b"N",
    b")",
    b"]",
    b"}",
    b"t",
    b"l",
    b"d",
    b"a",
    b"e",
    b"s",
    b"u",
    b"R",
    b"b",
    b"\x81",
    b"\x92",
    b"\x93",
    b"Q",
    b"\x94",
    b"h\x00",
    b"h\xff",
    b"j\xff\xff\xff\xff",
    b"q\x00",
    b"r\xff\xff\xff\x7f",
    b"\x85",
    b"\x86",
    b"\x87",
    b"\x8f",
    b"\x90",
    b"\x91",
    b"B\xff\xff\xff\x7f",
    b"\x8e\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\x8d\x00\x00\x00\x00\x00\x00\x00\x80",
    b"\x96\x10\x00\x00\x00\x00\x00\x00\x00",
    b"\x95\x00\x00\x00\x00\x00\x00\x00\x10",
    b"\x8b\xff\xff\xff\x7f",
    b"\x8a\xff",
    b"L99999999999999999999999999L\n",
    b"I-1\n",
    b"cos\nsystem\n",
    b"\x8c\x05posix\x8c\x06system\x93",
    b"\x97",
    b"\x98",
    b"\x82\x01",
    b"K\x00",
    b"J\xff\xff\xff\xff",
    b"M\xff\xff",
    b"G\x7f\xf0\x00\x00\x00\x00\x00\x00",
    b"(((((((((((((((((((((((((((((((((",
    b"]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    b"\x8c\x0bcollections\x8c\x0bOrderedDict\x93)R",
    b"\x8c\x0ctorch._utils\x8c\x12_rebuild_tensor_v2\x93",
    b"\x8c\x0dtorch.storage\x8c\x10_load_from_bytes\x93",
];

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, mask: u8 },
    Set { at: usize, byte: u8 },
    Truncate { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Splice { at: usize, which: usize },
    Remove { at: usize, len: usize },
    Duplicate { from: usize, len: usize, to: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 1u8..).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        1 => any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        2 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..12))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        3 => (any::<usize>(), 0..SPLICES.len()).prop_map(|(at, which)| Mutation::Splice { at, which }),
        1 => (any::<usize>(), 1usize..64).prop_map(|(at, len)| Mutation::Remove { at, len }),
        1 => (any::<usize>(), 1usize..256, any::<usize>())
            .prop_map(|(from, len, to)| Mutation::Duplicate { from, len, to }),
    ]
}

fn apply(data: &mut Vec<u8>, m: &Mutation) {
    let pos = |at: usize, len: usize| if len == 0 { 0 } else { at % (len + 1) };
    match *m {
        Mutation::Flip { at, mask } => {
            if !data.is_empty() {
                let i = at % data.len();
                data[i] ^= mask;
            }
        }
        Mutation::Set { at, byte } => {
            if !data.is_empty() {
                let i = at % data.len();
                data[i] = byte;
            }
        }
        Mutation::Truncate { at } => {
            let i = pos(at, data.len());
            data.truncate(i);
        }
        Mutation::Insert { at, ref bytes } => {
            let i = pos(at, data.len());
            data.splice(i..i, bytes.iter().copied());
        }
        Mutation::Splice { at, which } => {
            let i = pos(at, data.len());
            data.splice(i..i, SPLICES[which].iter().copied());
        }
        Mutation::Remove { at, len } => {
            let i = pos(at, data.len());
            let end = (i + len).min(data.len());
            data.drain(i..end);
        }
        Mutation::Duplicate { from, len, to } => {
            let i = pos(from, data.len());
            let end = (i + len).min(data.len());
            let chunk: Vec<u8> = data[i..end].to_vec();
            let j = pos(to, data.len());
            data.splice(j..j, chunk);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 3000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_bytes_never_panic(
        proto in prop::option::of(0u8..7),
        body in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut data = Vec::with_capacity(body.len() + 2);
        if let Some(p) = proto {
            data.extend_from_slice(&[0x80, p]);
        }
        data.extend_from_slice(&body);
        exercise(&data);
    }

    #[test]
    fn random_opcode_soup_never_panics(
        parts in prop::collection::vec(0..SPLICES.len(), 0..60),
    ) {
        let mut data = vec![0x80, 4];
        for p in parts {
            data.extend_from_slice(SPLICES[p]);
        }
        data.push(b'.');
        exercise(&data);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 4000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn mutated_pickles_never_panic(
        seed in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let seeds = seeds();
        let mut data = seed.get(seeds).clone();
        for m in &mutations {
            apply(&mut data, m);
        }
        exercise(&data);
    }
}

#[test]
fn unmutated_seeds_decode() {
    // The seeds themselves must pass the tight limits, or mutations would
    // mostly test the limits rather than the decoders.
    let limits = limits();
    let mut decoded = 0;
    for s in seeds() {
        if pickle::load_with(s, &limits.pickle).is_ok() {
            decoded += 1;
        }
    }
    assert!(decoded * 10 >= seeds().len() * 9, "{decoded} of {}", seeds().len());
}
