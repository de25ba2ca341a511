//! TileDB-ML model arrays (written by `tiledb-ml` 0.9 to 0.10) shown as
//! read-only directories of pickle-free files. The array layout and the
//! convention for the files are in `tests/data/tiledb_ml/fixtures/README.md`;
//! in short:
//!
//! | framework | field | files |
//! |---|---|---|
//! | any | (metadata) | `metadata.json`: every array metadata key |
//! | PyTorch | `model` | `model.safetensors`: the `state_dict`, `{"format": "pt"}` |
//! | PyTorch | `optimizer` | `optimizer.safetensors`: tensors `state.<id>.<key>`, the rest as JSON metadata |
//! | Keras | `model`, `optimizer` | `<field>.safetensors`: weight `i` named `{i:04}`, `{"format": "keras"}` |
//! | PyTorch, Keras | `tensorboard` | `tensorboard/<path>`: the pickled event files |
//! | scikit-learn | `model` | `model.pkl`: the stored pickle bytes, never unpickled |
//!
//! Safety model: fields are Python pickles, which can run any code when
//! Python loads them. Nothing here runs any: a restricted reader parses the
//! pickle opcodes into data, and a call (`REDUCE`, `NEWOBJ`, `INST`, `OBJ`,
//! `BUILD`) is only recorded, as data, when its callee is on a short
//! allowlist (`collections.OrderedDict`, the torch tensor and storage
//! rebuilders, numpy's array and scalar reconstructors, a few builtins);
//! any other global is refused and named in the error. Every size is
//! checked before it is used, and bounds (`tensor::DecodeLimits`) cap the
//! input, the opcodes run, the memo, the stack, the nesting and the bytes
//! allocated, so a hostile pickle costs bounded time and memory; and
//! `budget` counts every byte a view materialises, per view, per model and
//! per mount.
//!
//! Layers, bottom up: `pickle` (bytes to values), `torch_legacy` and
//! `numpy` (values to `tensor::Tensor`s), `views` (a field to its files,
//! through `safetensors_writer` and `pyjson`), `view_file` (those files
//! owned, served by byte range), `metadata_json`, and `model`, the one
//! entry point: [`TileDbMlModel::open`].

mod budget;
mod metadata_json;
mod model;
mod numpy;
mod pickle;
mod pyjson;
mod safetensors_writer;
mod spill;
mod tensor;
mod torch_legacy;
mod view_file;
mod views;

#[cfg(test)]
mod tests;

pub use budget::{Budget, MemoryPool, ModelBudget, OverBudget, Reservation, Scope as BudgetScope, ViewLimits};
pub use model::{
    FieldError, FieldInfo, FieldProblem, MAX_FIELD_BYTES, METADATA_JSON, ModelOptions, OFFSET_DIMENSION,
    SPILL_MIN_BYTES, TileDbMlModel, ViewEntry,
};
pub use pickle::{Error as PickleError, Limit as PickleLimit};
pub use pyjson::JsonError;
pub use safetensors_writer::WriteError;
pub use tensor::DecodeError;
pub use view_file::{TensorInfo, ViewFile};
pub use views::{Framework, ViewError};
