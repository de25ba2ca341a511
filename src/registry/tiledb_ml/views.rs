//! The files a mount shows for the fields of a tiledb-ml model array,
//! built from the decoded field pickles (the convention `expected/` holds):
//!
//! | framework | field | files |
//! |---|---|---|
//! | PyTorch | `model` | `model.safetensors`: state_dict name → tensor, `{"format": "pt"}` |
//! | PyTorch | `optimizer` | `optimizer.safetensors`: tensors `state.<id>.<key>`; metadata `format`, `param_groups` and each non-tensor `state.<id>.<key>` as `json.dumps` text |
//! | Keras | `model`, `optimizer` | `<field>.safetensors`: weight `i` named `{i:04}`, `{"format": "keras"}` |
//! | any | `tensorboard` | `tensorboard/<path>`: the pickled `{path: bytes}` files, relative to their common folder |
//! | scikit-learn | `model` | `model.pkl`: the stored pickle bytes, never unpickled |
//!
//! Invariants: every pickle goes through the restricted reader with the
//! caller's [`DecodeLimits`]; nothing is executed; tensor bytes stay
//! borrowed from the field pickle where possible, so a view costs little
//! more than the field itself; tensorboard paths never escape their folder
//! (no `..`, no absolute paths, no NUL). A numpy scalar among Keras weights
//! (the optimizer's iteration count, learning rate) is shown with shape
//! `[1]`, as the reference files have it.

use std::borrow::Cow;
use std::collections::HashSet;

use super::budget::{Budget, OverBudget};
use super::numpy;
use super::pickle::{self, Value};
use super::pyjson::{self, JsonError};
use super::safetensors_writer::{SafetensorsFile, WriteError};
use super::tensor::{DecodeError, DecodeLimits, Tensor};
use super::torch_legacy;
use crate::registry::names::invalid_name_reason;

/// The `TILEDB_ML_MODEL_ML_FRAMEWORK` of an array; displayed as that
/// metadata spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framework {
    PyTorch,
    Keras,
    SkLearn,
}

impl Framework {
    /// Parses the metadata value (`PYTORCH`, `TENSORFLOW KERAS`, `SKLEARN`).
    pub fn from_metadata(value: &str) -> Option<Framework> {
        match value.trim() {
            "PYTORCH" => Some(Framework::PyTorch),
            "TENSORFLOW KERAS" => Some(Framework::Keras),
            "SKLEARN" => Some(Framework::SkLearn),
            _ => None,
        }
    }

    /// The metadata value naming this framework.
    pub fn metadata_name(self) -> &'static str {
        match self {
            Framework::PyTorch => "PYTORCH",
            Framework::Keras => "TENSORFLOW KERAS",
            Framework::SkLearn => "SKLEARN",
        }
    }
}

impl std::fmt::Display for Framework {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.metadata_name())
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ViewError {
    #[error(transparent)]
    Pickle(#[from] pickle::Error),
    #[error("{context}: {source}")]
    Decode {
        context: String,
        #[source]
        source: DecodeError,
    },
    #[error("{context}: {source}")]
    Json {
        context: String,
        #[source]
        source: JsonError,
    },
    #[error("unexpected pickle layout: {0}")]
    Layout(String),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("tensorboard path {0:?} is not a safe relative path")]
    BadPath(String),
    #[error("no view for field {field:?} of a {framework:?} model")]
    UnknownField { framework: Framework, field: String },
    #[error(transparent)]
    OverBudget(#[from] OverBudget),
}

impl ViewError {
    /// The forbidden global behind this error, if a pickle named one
    /// (directly or inside a torch storage stream).
    pub fn forbidden_global(&self) -> Option<(&str, &str)> {
        let err = match self {
            ViewError::Pickle(e) => e,
            ViewError::Decode {
                source: DecodeError::StoragePickle(e),
                ..
            } => e,
            _ => return None,
        };
        match err {
            pickle::Error::ForbiddenGlobal { module, name, .. } => Some((module, name)),
            _ => None,
        }
    }
}

fn decode_err(context: impl Into<String>) -> impl FnOnce(DecodeError) -> ViewError {
    let context = context.into();
    move |source| ViewError::Decode { context, source }
}

/// `json.dumps(v)`, charged to `budget` (and stopped once it would pass it).
fn json_text(v: &Value<'_>, context: impl Into<String>, budget: &Budget<'_>) -> Result<String, ViewError> {
    let room = usize::try_from(budget.remaining()).unwrap_or(usize::MAX);
    match pyjson::dumps_within(v, room) {
        Ok(text) => {
            budget.charge(text.len())?;
            Ok(text)
        }
        // The cap that the text passed, named as the budget names it.
        Err(JsonError::TooLong(_)) => Err(budget.charge(room.saturating_add(1)).err().map_or_else(
            || ViewError::Json {
                context: context.into(),
                source: JsonError::TooLong(room),
            },
            ViewError::OverBudget,
        )),
        Err(source) => Err(ViewError::Json {
            context: context.into(),
            source,
        }),
    }
}

/// A PyTorch `state_dict` (`OrderedDict` name → tensor) as safetensors.
pub fn pytorch_model_value<'a>(
    root: &Value<'a>,
    limits: &DecodeLimits,
    budget: &Budget<'_>,
) -> Result<SafetensorsFile<'a>, ViewError> {
    let items = root
        .dict_items()
        .ok_or_else(|| ViewError::Layout(format!("state_dict is a {}", root.type_name())))?;
    let mut tensors = Vec::with_capacity(items.len());
    for (k, v) in items {
        let name = k
            .as_str()
            .ok_or_else(|| ViewError::Layout(format!("state_dict key is a {}", k.type_name())))?;
        let t = torch_legacy::decode_tensor(v, limits, budget).map_err(decode_err(format!("tensor {name:?}")))?;
        tensors.push((name.to_string(), t));
    }
    Ok(SafetensorsFile::new(tensors, vec![("format".into(), "pt".into())])?)
}

fn state_id(k: &Value<'_>) -> Result<String, ViewError> {
    match k {
        Value::Int(i) => Ok(i.to_string()),
        Value::BigInt(b) => {
            pickle::bigint_to_decimal(b).ok_or_else(|| ViewError::Layout("optimizer state key is a huge int".into()))
        }
        Value::Str(s) => Ok(s.to_string()),
        other => Err(ViewError::Layout(format!(
            "optimizer state key is a {}",
            other.type_name()
        ))),
    }
}

/// A PyTorch optimizer `state_dict` as safetensors plus JSON metadata.
pub fn pytorch_optimizer_value<'a>(
    root: &Value<'a>,
    limits: &DecodeLimits,
    budget: &Budget<'_>,
) -> Result<SafetensorsFile<'a>, ViewError> {
    if root.dict_items().is_none() {
        return Err(ViewError::Layout(format!(
            "optimizer state_dict is a {}",
            root.type_name()
        )));
    }
    let mut metadata = vec![("format".to_string(), "pt".to_string())];
    if let Some(groups) = root.get("param_groups") {
        metadata.push(("param_groups".into(), json_text(groups, "param_groups", budget)?));
    }
    let mut tensors = Vec::new();
    if let Some(state) = root.get("state") {
        let entries = state
            .dict_items()
            .ok_or_else(|| ViewError::Layout(format!("optimizer state is a {}", state.type_name())))?;
        for (id, per_param) in entries {
            let id = state_id(id)?;
            let values = per_param
                .dict_items()
                .ok_or_else(|| ViewError::Layout(format!("optimizer state {id} is a {}", per_param.type_name())))?;
            for (key, value) in values {
                let key = key
                    .as_str()
                    .ok_or_else(|| ViewError::Layout(format!("optimizer state {id} key is a {}", key.type_name())))?;
                let name = format!("state.{id}.{key}");
                if torch_legacy::is_tensor(value) {
                    let t = torch_legacy::decode_tensor(value, limits, budget)
                        .map_err(decode_err(format!("tensor {name:?}")))?;
                    tensors.push((name, t));
                } else {
                    let text = json_text(value, name.clone(), budget)?;
                    metadata.push((name, text));
                }
            }
        }
    }
    Ok(SafetensorsFile::new(tensors, metadata)?)
}

/// A Keras weight list (numpy arrays and scalars) as safetensors.
pub fn keras_weights_value<'a>(root: &Value<'a>, budget: &Budget<'_>) -> Result<SafetensorsFile<'a>, ViewError> {
    let items = root
        .as_seq()
        .ok_or_else(|| ViewError::Layout(format!("weights are a {}", root.type_name())))?;
    let mut tensors = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let name = format!("{i:04}");
        let mut t: Tensor<'a> = numpy::decode_any(item, budget).map_err(decode_err(format!("weight {name}")))?;
        if numpy::is_scalar(item) {
            t.shape = vec![1];
        }
        tensors.push((name, t));
    }
    Ok(SafetensorsFile::new(tensors, vec![("format".into(), "keras".into())])?)
}

/// One event file of the `tensorboard` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorboardFile<'a> {
    /// Relative path below the view's `tensorboard/` folder, `/`-separated.
    pub path: String,
    pub data: Cow<'a, [u8]>,
}

/// Splits a stored path into its components, refusing anything that could
/// leave the folder it is shown in or that no file system could name.
fn path_components(path: &str) -> Result<Vec<&str>, ViewError> {
    if path.contains('\0') {
        return Err(ViewError::BadPath(path.into()));
    }
    // Paths come from whatever OS saved the model: accept both separators.
    let parts: Vec<&str> = path.split(['/', '\\']).filter(|c| !c.is_empty() && *c != ".").collect();
    if parts.is_empty() || parts.iter().any(|c| invalid_name_reason(c).is_some()) {
        return Err(ViewError::BadPath(path.into()));
    }
    Ok(parts)
}

/// The `{path: bytes}` dict of the `tensorboard` field, as files relative to
/// the deepest folder that holds them all.
pub fn tensorboard_value<'a>(root: &Value<'a>, budget: &Budget<'_>) -> Result<Vec<TensorboardFile<'a>>, ViewError> {
    let items = root
        .dict_items()
        .ok_or_else(|| ViewError::Layout(format!("tensorboard field is a {}", root.type_name())))?;
    let mut entries = Vec::with_capacity(items.len());
    for (k, v) in items {
        let path = k
            .as_str()
            .ok_or_else(|| ViewError::Layout(format!("tensorboard path is a {}", k.type_name())))?;
        let data = match v {
            Value::Bytes(b) | Value::ByteArray(b) => {
                if let Cow::Owned(o) = b {
                    budget.charge(o.len())?;
                }
                b.clone()
            }
            other => {
                return Err(ViewError::Layout(format!(
                    "tensorboard file {path:?} is a {}",
                    other.type_name()
                )));
            }
        };
        entries.push((path_components(path)?, data));
    }
    // Common folder: the longest shared prefix of the files' folders.
    let mut common: Option<&[&str]> = None;
    for (parts, _) in &entries {
        let dir = parts.split_last().map_or(&[][..], |(_, d)| d);
        common = Some(match common {
            None => dir,
            Some(c) => {
                let n = c.iter().zip(dir).take_while(|(a, b)| a == b).count();
                c.get(..n).unwrap_or(&[])
            }
        });
    }
    let skip = common.map_or(0, <[&str]>::len);
    let mut seen = HashSet::new();
    let mut folders = HashSet::new();
    let mut out = Vec::with_capacity(entries.len());
    for (parts, data) in &entries {
        let rel = parts.get(skip..).unwrap_or(&[]);
        let path = rel.join("/");
        if path.is_empty() || !seen.insert(path.clone()) {
            return Err(ViewError::BadPath(path));
        }
        for n in 1..rel.len() {
            folders.insert(rel.get(..n).unwrap_or(&[]).join("/"));
        }
        out.push(TensorboardFile {
            path,
            data: data.clone(),
        });
    }
    // A path cannot be both a file and a folder holding other files.
    if let Some(clash) = out.iter().find(|f| folders.contains(&f.path)) {
        return Err(ViewError::BadPath(clash.path.clone()));
    }
    Ok(out)
}

/// `model.safetensors` for a PyTorch `model` field pickle.
pub fn pytorch_model<'a>(
    pickle_bytes: &'a [u8],
    limits: &DecodeLimits,
    budget: &Budget<'_>,
) -> Result<SafetensorsFile<'a>, ViewError> {
    let root = pickle::load_with(pickle_bytes, &limits.pickle)?;
    pytorch_model_value(&root, limits, budget)
}

/// `optimizer.safetensors` for a PyTorch `optimizer` field pickle.
pub fn pytorch_optimizer<'a>(
    pickle_bytes: &'a [u8],
    limits: &DecodeLimits,
    budget: &Budget<'_>,
) -> Result<SafetensorsFile<'a>, ViewError> {
    let root = pickle::load_with(pickle_bytes, &limits.pickle)?;
    pytorch_optimizer_value(&root, limits, budget)
}

/// `model.safetensors` / `optimizer.safetensors` for a Keras field pickle.
pub fn keras_weights<'a>(
    pickle_bytes: &'a [u8],
    limits: &DecodeLimits,
    budget: &Budget<'_>,
) -> Result<SafetensorsFile<'a>, ViewError> {
    let root = pickle::load_with(pickle_bytes, &limits.pickle)?;
    keras_weights_value(&root, budget)
}

/// The event files of a `tensorboard` field pickle.
pub fn tensorboard_files<'a>(
    pickle_bytes: &'a [u8],
    limits: &DecodeLimits,
    budget: &Budget<'_>,
) -> Result<Vec<TensorboardFile<'a>>, ViewError> {
    let root = pickle::load_with(pickle_bytes, &limits.pickle)?;
    tensorboard_value(&root, budget)
}

/// What a view file holds.
#[derive(Debug, Clone)]
pub enum Content<'a> {
    Safetensors(SafetensorsFile<'a>),
    Bytes(Cow<'a, [u8]>),
}

/// One file of a field's view, at a `/`-separated path below the model's
/// directory.
#[derive(Debug, Clone)]
pub struct FieldFile<'a> {
    pub path: String,
    pub content: Content<'a>,
}

/// Where the files of `field` show: the file's path, or for `tensorboard`
/// the folder holding its files (and the field name for a field that has no
/// view). A field that fails to decode is reported at this path.
pub fn field_path(framework: Framework, field: &str) -> String {
    match (framework, field) {
        (Framework::SkLearn, "model") => "model.pkl".into(),
        (Framework::PyTorch | Framework::Keras, "model" | "optimizer") => format!("{field}.safetensors"),
        _ => field.into(),
    }
}

/// The files one non-empty field shows (`field` is the attribute name:
/// `model`, `optimizer` or `tensorboard`).
pub fn field_files<'a>(
    framework: Framework,
    field: &str,
    pickle_bytes: &'a [u8],
    limits: &DecodeLimits,
    budget: &Budget<'_>,
) -> Result<Vec<FieldFile<'a>>, ViewError> {
    let st = |path: &str, f: SafetensorsFile<'a>| -> Result<Vec<FieldFile<'a>>, ViewError> {
        budget.charge(f.header_len())?;
        Ok(vec![FieldFile {
            path: path.into(),
            content: Content::Safetensors(f),
        }])
    };
    match (framework, field) {
        (Framework::SkLearn, "model") => Ok(vec![FieldFile {
            path: "model.pkl".into(),
            content: Content::Bytes(Cow::Borrowed(pickle_bytes)),
        }]),
        (Framework::PyTorch, "model") => st("model.safetensors", pytorch_model(pickle_bytes, limits, budget)?),
        (Framework::PyTorch, "optimizer") => st(
            "optimizer.safetensors",
            pytorch_optimizer(pickle_bytes, limits, budget)?,
        ),
        (Framework::Keras, "model" | "optimizer") => st(
            &format!("{field}.safetensors"),
            keras_weights(pickle_bytes, limits, budget)?,
        ),
        (Framework::PyTorch | Framework::Keras, "tensorboard") => Ok(tensorboard_files(pickle_bytes, limits, budget)?
            .into_iter()
            .map(|f| FieldFile {
                path: format!("tensorboard/{}", f.path),
                content: Content::Bytes(f.data),
            })
            .collect()),
        _ => Err(ViewError::UnknownField {
            framework,
            field: field.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tb_files<'a>(v: &Value<'a>) -> Result<Vec<TensorboardFile<'a>>, ViewError> {
        tensorboard_value(v, &Budget::standalone(0))
    }

    fn tb(pairs: &[(&'static str, &'static [u8])]) -> Value<'static> {
        Value::Dict(
            pairs
                .iter()
                .map(|(p, d)| (Value::Str(Cow::Borrowed(*p)), Value::Bytes(Cow::Borrowed(*d))))
                .collect(),
        )
    }

    #[test]
    fn tensorboard_paths() {
        let files = tb_files(&tb(&[
            ("/logs/run/train/events.1", b"a"),
            ("/logs/run/validation/events.2", b"bc"),
        ]))
        .unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["train/events.1", "validation/events.2"]);
        let one = tb_files(&tb(&[("C:\\logs\\events.3", b"")])).unwrap();
        assert_eq!(one[0].path, "events.3");
        for bad in ["/logs/../etc/passwd", "", "/", "a/\0b"] {
            assert!(matches!(tb_files(&tb(&[(bad, b"x")])), Err(ViewError::BadPath(_))));
        }
        assert!(matches!(
            tb_files(&tb(&[("/a/b/e", b"x"), ("/a//b/./e", b"y")])),
            Err(ViewError::BadPath(_))
        ));
        // A file that is also the folder of another file.
        assert!(matches!(
            tb_files(&tb(&[("/r/a/x", b"1"), ("/r/a", b"2"), ("/r/b", b"3")])),
            Err(ViewError::BadPath(p)) if p == "a"
        ));
        // A component no file system can name.
        let long = format!("/logs/{}", "n".repeat(300));
        let long: &'static str = Box::leak(long.into_boxed_str());
        assert!(matches!(tb_files(&tb(&[(long, b"x")])), Err(ViewError::BadPath(_))));
        assert!(tb_files(&Value::List(vec![])).is_err());
    }

    #[test]
    fn framework_names() {
        assert_eq!(Framework::from_metadata("PYTORCH"), Some(Framework::PyTorch));
        assert_eq!(Framework::from_metadata("TENSORFLOW KERAS"), Some(Framework::Keras));
        assert_eq!(Framework::from_metadata("SKLEARN"), Some(Framework::SkLearn));
        assert_eq!(Framework::from_metadata("JAX"), None);
    }

    #[test]
    fn sklearn_is_raw_and_unknown_fields_fail() {
        let raw = b"not even a pickle";
        let files = field_files(
            Framework::SkLearn,
            "model",
            raw,
            &DecodeLimits::default(),
            &Budget::standalone(0),
        )
        .unwrap();
        assert_eq!(files[0].path, "model.pkl");
        assert!(matches!(&files[0].content, Content::Bytes(Cow::Borrowed(b)) if *b == raw));
        assert!(matches!(
            field_files(
                Framework::SkLearn,
                "optimizer",
                raw,
                &DecodeLimits::default(),
                &Budget::standalone(0)
            ),
            Err(ViewError::UnknownField { .. })
        ));
    }
}
