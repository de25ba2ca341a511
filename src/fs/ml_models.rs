//! [`MlModels`]: the TileDB-ML models a mount has decoded, kept within one
//! memory budget (`--view-memory`).
//!
//! A decoded model is shared by the inodes of its directory and files and
//! by open files, each holding an `Arc`. This cache holds up to
//! [`MODELS_KEPT`] of them strongly, least recently used first out, and
//! every other one weakly: a model still held elsewhere is found again
//! rather than decoded twice, and one nobody holds is gone, its memory and
//! spill file with it.
//!
//! Models leave the cache:
//! - under pressure: a decode that finds no room in the budget (a field
//!   that does not fit, views over the mount's cap) drops the least
//!   recently used models nobody else holds until the field fits, then is
//!   tried once more;
//! - when the kernel forgets the model's directory ([`MlModels::forget`]);
//! - when a newer version of the array is decoded.
//!
//! Invariants: at most one entry per URI; the lock is never held while a
//! model is decoded (TileDB I/O).

use std::sync::{Arc, Mutex, PoisonError, Weak};

use log::{debug, info};

use super::counters::Counters;
use super::store::Store;
use crate::registry::Result;
use crate::registry::tiledb_ml::{BudgetScope, FieldProblem, ModelOptions, TileDbMlModel, ViewEntry, ViewError};

/// Models held by the cache itself at most (each also keeps its spill file
/// on disk while held).
pub const MODELS_KEPT: usize = 4;

struct Kept {
    uri: String,
    version: u64,
    /// Held by the cache (one of the [`MODELS_KEPT`]) or only known.
    strong: Option<Arc<TileDbMlModel>>,
    weak: Weak<TileDbMlModel>,
}

/// The decoded models of a mount; see the module docs.
pub struct MlModels {
    options: ModelOptions,
    /// Least recently used first.
    kept: Mutex<Vec<Kept>>,
    counters: Arc<Counters>,
}

impl MlModels {
    pub fn new(options: ModelOptions, counters: Arc<Counters>) -> Self {
        MlModels {
            options,
            kept: Mutex::new(Vec::new()),
            counters,
        }
    }

    /// Bytes charged to the memory budget now, and its limit.
    pub fn memory(&self) -> (u64, u64) {
        (self.options.pool.used(), self.options.pool.limit())
    }

    /// Models alive (held by the cache, an inode or an open file).
    pub fn alive(&self) -> usize {
        let mut kept = self.lock();
        kept.retain(|k| k.weak.strong_count() > 0);
        kept.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Kept>> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The model at `uri` as of `version`: the one alive, or decoded now.
    ///
    /// # Errors
    /// The array cannot be read or is not a TileDB-ML model.
    pub fn get(&self, store: &dyn Store, uri: &str, version: u64) -> Result<Arc<TileDbMlModel>> {
        if let Some(m) = self.find(uri, version) {
            return Ok(m);
        }
        let mut model = self.decode(store, uri)?;
        if let Some(need) = wants_room(&model)
            && self.make_room(need)
        {
            model = self.decode(store, uri)?;
        }
        let model = Arc::new(model);
        self.insert(uri, version, &model);
        Ok(model)
    }

    fn decode(&self, store: &dyn Store, uri: &str) -> Result<TileDbMlModel> {
        let started = std::time::Instant::now();
        let model = store.tiledb_ml_model(uri, &self.options)?;
        Counters::add(&self.counters.ml_models_decoded, 1);
        Counters::add(&self.counters.view_bytes_spilled, model.spilled_bytes());
        info!(
            "{uri}: TileDB-ML model decoded in {:.2} s: {} bytes resident, {} spilled",
            started.elapsed().as_secs_f64(),
            model.resident_bytes(),
            model.spilled_bytes()
        );
        Ok(model)
    }

    /// The model alive at `uri` and `version`, made the most recently used.
    fn find(&self, uri: &str, version: u64) -> Option<Arc<TileDbMlModel>> {
        let mut kept = self.lock();
        let i = kept.iter().position(|k| k.uri == uri && k.version == version)?;
        let k = kept.remove(i);
        let model = k.weak.upgrade()?;
        kept.push(Kept {
            strong: Some(model.clone()),
            ..k
        });
        Self::trim(&mut kept, &self.counters);
        Some(model)
    }

    fn insert(&self, uri: &str, version: u64, model: &Arc<TileDbMlModel>) {
        if wants_room(model).is_some() {
            // Not kept at all: the next lookup, once memory is free,
            // decodes it again.
            return;
        }
        let mut kept = self.lock();
        kept.retain(|k| k.uri != uri && k.weak.strong_count() > 0);
        kept.push(Kept {
            uri: uri.to_string(),
            version,
            strong: Some(model.clone()),
            weak: Arc::downgrade(model),
        });
        Self::trim(&mut kept, &self.counters);
    }

    /// Keeps at most [`MODELS_KEPT`] held, dropping the least recently used.
    fn trim(kept: &mut [Kept], counters: &Counters) {
        let mut held = kept.iter().filter(|k| k.strong.is_some()).count();
        for k in kept.iter_mut() {
            if held <= MODELS_KEPT {
                break;
            }
            if k.strong.take().is_some() {
                held -= 1;
                Counters::add(&counters.ml_models_dropped, 1);
            }
        }
    }

    /// Drops held models nobody else holds, least recently used first,
    /// until `need` bytes are free in the budget; whether any was dropped.
    fn make_room(&self, need: u64) -> bool {
        let mut dropped = false;
        let mut kept = self.lock();
        for k in kept.iter_mut() {
            let (used, limit) = (self.options.pool.used(), self.options.pool.limit());
            if limit.saturating_sub(used) >= need {
                break;
            }
            let alone = k.strong.as_ref().is_some_and(|m| Arc::strong_count(m) == 1);
            if alone {
                debug!("{}: decoded model dropped to make room for {need} bytes", k.uri);
                k.strong = None;
                dropped = true;
                Counters::add(&self.counters.ml_models_dropped, 1);
            }
        }
        kept.retain(|k| k.weak.strong_count() > 0);
        dropped
    }

    /// The kernel forgot the directory of `model`: the cache lets it go
    /// (open files of it keep reading).
    pub fn forget(&self, model: &Arc<TileDbMlModel>) {
        let mut kept = self.lock();
        for k in kept.iter_mut() {
            if k.strong.as_ref().is_some_and(|m| Arc::ptr_eq(m, model)) {
                debug!("{}: decoded model dropped: its directory was forgotten", k.uri);
                k.strong = None;
                Counters::add(&self.counters.ml_models_dropped, 1);
            }
        }
    }
}

/// Room in the mount's budget a field of `model` lacked: its size when a
/// field did not fit, the whole budget when views passed the mount's cap.
fn wants_room(model: &TileDbMlModel) -> Option<u64> {
    model
        .entries()
        .iter()
        .filter_map(|(_, e)| match e {
            ViewEntry::Failed(f) => match &f.problem {
                FieldProblem::NoRoom { size, .. } => Some(*size),
                FieldProblem::View(ViewError::OverBudget(o)) if o.scope == BudgetScope::Mount => Some(o.limit),
                _ => None,
            },
            ViewEntry::Ready(_) => None,
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use crate::registry::tiledb_ml::{MemoryPool, ViewLimits};
    use crate::tiledb::{Array, AttributeSpec, Context, Datatype, DimensionSpec, MetaValue, Mode, Schema};

    /// A scikit-learn model array at `uri` whose field is `len` bytes (shown
    /// as `model.pkl`, kept as it is).
    fn sklearn_array(ctx: &Context, uri: &str, len: usize) {
        let dim = DimensionSpec {
            name: "offset".into(),
            lo: 0,
            hi: u64::MAX - 1025,
            extent: 64 << 10,
            filters: vec![],
        };
        let attr = AttributeSpec {
            name: "model".into(),
            datatype: Datatype::UINT8,
            filters: vec![],
        };
        Schema::dense(ctx, &[dim], &[attr]).unwrap().create_array(uri).unwrap();
        let mut array = Array::open(ctx, uri, Mode::Write).unwrap();
        array.write_cells("model", 0, len as u64 - 1, &vec![0x80; len]).unwrap();
        let framework = crate::registry::TILEDB_ML_FRAMEWORK_KEY;
        array.put_metadata(framework, &MetaValue::text("SKLEARN")).unwrap();
        array.put_metadata("model_size", &MetaValue::i64(len as i64)).unwrap();
        array.close().unwrap();
    }

    #[test]
    fn a_decode_without_room_drops_the_least_recently_used_idle_model() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(Context::new().unwrap()).unwrap();
        let uris: Vec<String> = ["a", "b", "c"]
            .iter()
            .map(|n| dir.path().join(n).to_str().unwrap().to_string())
            .collect();
        for uri in &uris {
            sklearn_array(registry.context(), uri, 600 << 10);
        }
        let counters = Arc::new(Counters::default());
        // Room for two fields of 600 KiB, kept in memory (no spill).
        let models = MlModels::new(
            ModelOptions {
                pool: MemoryPool::new(1300 << 10),
                limits: ViewLimits::default(),
                spill_dir: None,
                spill_min_bytes: usize::MAX,
            },
            counters.clone(),
        );
        let a = models.get(&registry, &uris[0], 1).unwrap();
        let b = models.get(&registry, &uris[1], 1).unwrap();
        assert_eq!(models.alive(), 2);
        // `b` is in use (held here); `a` is idle once let go.
        let a_weak = Arc::downgrade(&a);
        drop(a);
        let c = models.get(&registry, &uris[2], 1).unwrap();
        assert_eq!(c.failures().count(), 0, "c decoded after a was dropped");
        assert!(a_weak.upgrade().is_none(), "a, idle and least recently used, is gone");
        assert!(counters.snapshot().ml_models_dropped >= 1);
        assert_eq!(models.get(&registry, &uris[1], 1).unwrap().version(), b.version());
        // Nothing idle left to drop: a fourth decode fails for want of room
        // and is not kept, so a later lookup tries again.
        let a_again = models.get(&registry, &uris[0], 1).unwrap();
        assert!(matches!(
            a_again.failures().next().map(|f| &f.problem),
            Some(FieldProblem::NoRoom { .. })
        ));
        let c_weak = Arc::downgrade(&c);
        drop((b, c));
        let decoded = counters.snapshot().ml_models_decoded;
        drop(a_again);
        // b and c are idle now (held by the cache alone): the decode that
        // lacks room drops the least recently used one, c (b was looked up
        // after it), and is tried once more.
        let a_third = models.get(&registry, &uris[0], 1).unwrap();
        assert_eq!(counters.snapshot().ml_models_decoded, decoded + 2);
        assert_eq!(a_third.failures().count(), 0, "room once c is dropped");
        assert!(c_weak.upgrade().is_none(), "c was the least recently used");
        assert_eq!(models.alive(), 2, "b stays");
    }

    #[test]
    fn a_forgotten_model_is_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(Context::new().unwrap()).unwrap();
        let uri = dir.path().join("m").to_str().unwrap().to_string();
        sklearn_array(registry.context(), &uri, 1 << 10);
        let models = MlModels::new(ModelOptions::default(), Arc::new(Counters::default()));
        let m = models.get(&registry, &uri, 1).unwrap();
        let weak = Arc::downgrade(&m);
        models.forget(&m);
        drop(m);
        assert!(weak.upgrade().is_none());
        assert_eq!(models.alive(), 0);
        assert_eq!(models.memory().0, 0);
    }
}
