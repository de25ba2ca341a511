//! [`TileDbMlModel`]: one TileDB-ML model array, read once at one timestamp,
//! and the directory of pickle-free files it shows.
//!
//! Opening reads everything through a single open of the array, so sizes,
//! data and metadata are of the same version: the schema, every metadata
//! key, and for each field (a UINT8 attribute with a `<field>_size` key) the
//! cells `[0, size)`. Each field is then decoded into its files by the
//! restricted pickle reader, which executes nothing.
//!
//! Invariants:
//! - `metadata.json` is always an entry, whatever the fields hold;
//! - a field that cannot be shown becomes one [`ViewEntry::Failed`] entry, at
//!   the path its file would have had, naming why; other fields are
//!   unaffected;
//! - a size key is checked (a non-negative integer, at most
//!   [`MAX_FIELD_BYTES`], within the cells written) before anything is
//!   allocated for it;
//! - a field whose bytes start with a zero byte is empty in the newest save:
//!   tiledb-ml zero-pads every field to the longest one and never deletes a
//!   size key, so a key can outlive its data (no pickle starts with 0x00);
//! - entries are sorted by path, paths are unique, and no path is both a
//!   file and the folder of another.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use log::{debug, warn};

use crate::registry::error::{Error, Result};
use crate::registry::file_array::{MAX_QUERY_TILES, check_tile_bytes};
use crate::registry::names::invalid_name_reason;
use crate::registry::tree::TILEDB_ML_FRAMEWORK_KEY;
use crate::tiledb::{Array, ArrayType, AttributeInfo, Context, Datatype, MetaValue, Mode, Schema};

use super::budget::{MemoryPool, ModelBudget, OverBudget, Reservation, ViewLimits};
use super::metadata_json::metadata_json;
use super::spill::SpillFile;
use super::tensor::DecodeLimits;
use super::view_file::{Spill, ViewFile};
use super::views::{self, Framework, ViewError};

/// Path of the entry holding every array metadata key as JSON.
pub const METADATA_JSON: &str = "metadata.json";

/// Largest field read, in bytes (4 GiB). A bigger `<field>_size` makes that
/// field a [`FieldProblem::TooLarge`] failure; nothing is allocated for it.
pub const MAX_FIELD_BYTES: u64 = 4 << 30;

/// The one dimension of a TileDB-ML model array (UINT64, one byte per cell).
pub const OFFSET_DIMENSION: &str = "offset";

/// Suffix of the metadata key holding a field's length in bytes.
const SIZE_SUFFIX: &str = "_size";

/// One field of the array: an attribute holding one pickle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldInfo {
    /// The attribute name (`model`, `optimizer`, `tensorboard`).
    pub name: String,
    /// The field's length in bytes from its `<field>_size` key; 0 when the
    /// key is absent (an empty field) or unreadable.
    pub size: u64,
    /// The size key outlived its data: the newest save left the field empty
    /// (its bytes start with a zero byte), so it shows no files.
    pub stale: bool,
}

/// Why a field shows no files.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FieldProblem {
    #[error("`{key}` is not a non-negative integer")]
    BadSize { key: String },
    #[error("`{key}` is {size} bytes, over the {limit}-byte limit")]
    TooLarge { key: String, size: u64, limit: u64 },
    #[error("`{key}` is {size} bytes but only {written} cells were written")]
    PastWritten { key: String, size: u64, written: u64 },
    #[error("cannot allocate {size} bytes to read it")]
    OutOfMemory { size: u64 },
    /// Reading the field's bytes into memory would pass the mount's
    /// memory budget.
    #[error("its {size} bytes do not fit in memory: {source}")]
    NoRoom {
        size: u64,
        #[source]
        source: OverBudget,
    },
    #[error("the attribute is {datatype}, not one non-nullable UINT8 per cell")]
    NotBytes { datatype: String },
    /// The field's pickle could not be turned into files: a forbidden
    /// global, a limit, a malformed pickle or tensor.
    #[error(transparent)]
    View(#[from] ViewError),
}

/// A field that shows no files: the array, the field and why. Cheap to
/// clone, so a caller can hand out a fresh error each time the entry is
/// asked for; converts into [`crate::registry::Error`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{uri}: TileDB-ML field `{field}`: {problem}")]
pub struct FieldError {
    pub uri: String,
    pub field: String,
    pub problem: FieldProblem,
}

impl FieldError {
    /// The `(module, name)` of the global the field's pickle tried to call,
    /// when that is why it was refused.
    pub fn forbidden_global(&self) -> Option<(&str, &str)> {
        match &self.problem {
            FieldProblem::View(e) => e.forbidden_global(),
            _ => None,
        }
    }
}

/// One entry of a model's directory.
#[derive(Debug, Clone)]
pub enum ViewEntry {
    /// A file, ready to read.
    Ready(ViewFile),
    /// The field behind this path could not be shown. The path is where its
    /// file would be (`model.safetensors`), or `tensorboard` for the folder
    /// of the tensorboard field's files.
    Failed(FieldError),
}

/// How a model is decoded and where its bytes live.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// The memory budget shared by every decoded model: fields while they
    /// are in memory and what the views keep resident are charged to it.
    pub pool: MemoryPool,
    /// Caps on what the views materialise, per view and per model.
    pub limits: ViewLimits,
    /// Where large fields and large materialised tensors are spilled after
    /// the decode (an unlinked file); `None` keeps everything in memory.
    pub spill_dir: Option<PathBuf>,
    /// Buffers (fields, materialised tensors) of at least this many bytes
    /// are spilled when `spill_dir` is set.
    pub spill_min_bytes: usize,
}

/// Default for [`ModelOptions::spill_min_bytes`]: 1 MiB. Smaller buffers
/// cost less memory than the bookkeeping and the reads from disk are worth.
pub const SPILL_MIN_BYTES: usize = 1 << 20;

impl Default for ModelOptions {
    /// In memory only, with the default caps and a pool of one model's cap.
    fn default() -> Self {
        let limits = ViewLimits::default();
        ModelOptions {
            pool: MemoryPool::new(limits.model_bytes),
            limits,
            spill_dir: None,
            spill_min_bytes: SPILL_MIN_BYTES,
        }
    }
}

/// One TileDB-ML model array at one version; see the module docs.
#[derive(Debug, Clone)]
pub struct TileDbMlModel {
    uri: String,
    version: u64,
    framework: Framework,
    fields: Vec<FieldInfo>,
    entries: Vec<(String, ViewEntry)>,
    reservation: Arc<Reservation>,
    materialized: u64,
    spilled: u64,
}

/// What reading one field gave.
enum FieldRead {
    Empty,
    Stale,
    Bytes(Vec<u8>),
    Problem(FieldProblem),
}

impl TileDbMlModel {
    /// Opens the TileDB-ML model array at `uri` as of now; see
    /// [`TileDbMlModel::open_at`].
    pub fn open(ctx: &Context, uri: &str) -> Result<Self> {
        Self::open_at(ctx, uri, None)
    }

    /// Opens the TileDB-ML model array at `uri` as of `end_ms` (ms since the
    /// epoch, inclusive; `None` for now), reads its metadata and fields and
    /// decodes them into files. Memory: the fields' bytes (each at most
    /// [`MAX_FIELD_BYTES`]) plus the tensors that had to be rearranged.
    ///
    /// # Errors
    /// [`Error::TileDB`] when the array cannot be opened or read;
    /// [`Error::NotATileDbMlModel`] when it lacks the layout (one UINT64
    /// dimension `offset`, dense) or a known `TILEDB_ML_MODEL_ML_FRAMEWORK`.
    /// A field that cannot be shown is not an error here: it is a
    /// [`ViewEntry::Failed`] entry.
    pub fn open_at(ctx: &Context, uri: &str, end_ms: Option<u64>) -> Result<Self> {
        Self::open_with(ctx, uri, end_ms, &ModelOptions::default())
    }

    /// [`TileDbMlModel::open_at`] with `options`: each field is charged to
    /// `options.pool` while it is in memory, the views' materialised bytes
    /// are capped per view and per model by `options.limits`, and, with a
    /// spill directory, large fields and tensors go to a spill file once
    /// decoded; what stays in memory stays charged to the pool while the
    /// model or any of its files is alive. A field over a cap is a
    /// [`ViewEntry::Failed`] naming the cap.
    pub fn open_with(ctx: &Context, uri: &str, end_ms: Option<u64>, options: &ModelOptions) -> Result<Self> {
        let mut array = Array::open_at(ctx, uri, Mode::Read, end_ms)?;
        let version = array.open_timestamp_end()?;
        let schema = array.schema()?;
        let meta = array.metadata()?;
        let (framework, tile_cells) = check_layout(uri, &schema, &meta)?;
        let per_query = query_cells(tile_cells);
        // Cells past the non-empty domain read as the fill value: a size
        // key pointing there is broken.
        let written = array.non_empty_domain_u64(0)?.map_or(0, |(_, hi)| hi.saturating_add(1));
        let cells = Cells {
            array: &array,
            written,
            per_query,
        };
        let limits = DecodeLimits::default();
        let budget = ModelBudget::new(options.pool.clone(), options.limits);
        let mut spill = SpillTarget::new(options);

        let mut entries = Entries::default();
        entries.add(
            uri,
            METADATA_JSON.to_string(),
            ViewEntry::Ready(ViewFile::from_vec(metadata_json(&meta))),
        );
        let mut fields = Vec::new();
        for attr in schema.attributes()? {
            let key = format!("{}{SIZE_SUFFIX}", attr.name);
            let path = views::field_path(framework, &attr.name);
            if let Some(reason) = path_problem(&path) {
                warn!("{uri}: field {:?} not shown (nothing read): {reason}", attr.name);
                continue;
            }
            let size_value = meta.iter().find(|(k, _)| *k == key).map(|(_, v)| v);
            let is_bytes = attr.datatype == Datatype::UINT8 && attr.cell_val_num == 1 && !attr.nullable;
            if !is_bytes && size_value.is_none() {
                continue;
            }
            let read = read_field(&cells, &attr, is_bytes, &key, size_value, &budget)?;
            fields.push(FieldInfo {
                name: attr.name.clone(),
                size: size_value.and_then(MetaValue::as_u64).unwrap_or(0),
                stale: matches!(read, FieldRead::Stale),
            });
            let fail = |problem: FieldProblem| {
                ViewEntry::Failed(FieldError {
                    uri: uri.to_string(),
                    field: attr.name.clone(),
                    problem,
                })
            };
            match read {
                FieldRead::Empty => {}
                FieldRead::Stale => debug!("{uri}: `{key}` outlived its data; field `{}` is empty", attr.name),
                FieldRead::Problem(p) => entries.add(uri, views::field_path(framework, &attr.name), fail(p)),
                FieldRead::Bytes(buf) => {
                    spill.next_field();
                    let held = buf.len() as u64;
                    let bytes = Arc::new(buf);
                    let view_budget = budget.view();
                    match views::field_files(framework, &attr.name, &bytes, &limits, &view_budget) {
                        Ok(files) => {
                            view_budget.keep();
                            for f in files {
                                let file = ViewFile::from_content(f.content, &bytes);
                                let file = spill.apply(uri, file, &bytes);
                                entries.add(uri, f.path, ViewEntry::Ready(file));
                            }
                        }
                        Err(e) => entries.add(uri, views::field_path(framework, &attr.name), fail(e.into())),
                    }
                    // The field now lives in its files (in memory or spilled):
                    // what stays resident is counted once, below.
                    budget.release_field(held);
                }
            }
        }
        let mut seen = HashSet::new();
        let resident = entries
            .list
            .iter()
            .map(|(_, e)| match e {
                ViewEntry::Ready(f) => f.resident_bytes(&mut seen),
                ViewEntry::Failed(_) => 0,
            })
            .fold(0u64, u64::saturating_add);
        let materialized = budget.materialized();
        let reservation = Arc::new(budget.finish(resident));
        let mut entries = entries.list;
        entries.sort_by(|(a, _), (b, _)| a.cmp(b));
        for (_, entry) in &mut entries {
            if let ViewEntry::Ready(file) = entry {
                file.hold(reservation.clone());
            }
        }
        Ok(TileDbMlModel {
            uri: uri.to_string(),
            version,
            framework,
            fields,
            entries,
            reservation,
            materialized,
            spilled: spill.spilled_bytes(),
        })
    }

    /// Bytes its views materialised (owned, not borrowed from the fields),
    /// whether kept in memory or spilled.
    pub fn materialized_bytes(&self) -> u64 {
        self.materialized
    }

    /// Bytes the model keeps in memory (fields not spilled, headers, JSON,
    /// small tensors it made), charged to the pool it was opened with
    /// while the model or any of its files is alive.
    pub fn resident_bytes(&self) -> u64 {
        self.reservation.bytes()
    }

    /// Bytes written to its spill file (0 when nothing was spilled).
    pub fn spilled_bytes(&self) -> u64 {
        self.spilled
    }

    /// The array's URI, as given to [`TileDbMlModel::open`].
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The timestamp (ms since the epoch) the array was opened at: every
    /// byte and key shown is as of this time, and
    /// [`TileDbMlModel::open_at`] with it shows the same files again. Cache
    /// views per `(uri, version)`.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The array's `TILEDB_ML_MODEL_ML_FRAMEWORK`.
    pub fn framework(&self) -> Framework {
        self.framework
    }

    /// The fields (attributes holding a pickle), in schema order.
    pub fn fields(&self) -> &[FieldInfo] {
        &self.fields
    }

    /// The directory's entries, sorted by path: `/`-separated paths relative
    /// to the model's directory (`metadata.json`, `model.safetensors`,
    /// `tensorboard/train/events...`); folders are implied by the paths.
    pub fn entries(&self) -> &[(String, ViewEntry)] {
        &self.entries
    }

    /// The entry at `path`, if there is one.
    pub fn entry(&self, path: &str) -> Option<&ViewEntry> {
        let i = self.entries.binary_search_by(|(p, _)| p.as_str().cmp(path)).ok()?;
        self.entries.get(i).map(|(_, e)| e)
    }

    /// The fields that show no files, and why.
    pub fn failures(&self) -> impl Iterator<Item = &FieldError> {
        self.entries.iter().filter_map(|(_, e)| match e {
            ViewEntry::Failed(f) => Some(f),
            ViewEntry::Ready(_) => None,
        })
    }
}

/// Whether `schema` and `meta` have the TileDB-ML layout; the framework
/// and the tile extent (cells, one byte each; `None` when not known).
/// A tile extent over [`crate::registry::file_array::MAX_TILE_BYTES`] is
/// [`Error::Corrupt`]: reading a field loads whole tiles.
fn check_layout(uri: &str, schema: &Schema, meta: &[(String, MetaValue)]) -> Result<(Framework, Option<u64>)> {
    let not = |reason: String| Error::NotATileDbMlModel {
        uri: uri.to_string(),
        reason,
    };
    let value = meta
        .iter()
        .find(|(k, _)| k == TILEDB_ML_FRAMEWORK_KEY)
        .map(|(_, v)| v)
        .ok_or_else(|| not(format!("no `{TILEDB_ML_FRAMEWORK_KEY}` metadata")))?;
    let name = value
        .as_str()
        .ok_or_else(|| not(format!("`{TILEDB_ML_FRAMEWORK_KEY}` is not text")))?;
    let framework = Framework::from_metadata(name).ok_or_else(|| not(format!("unknown framework {name:?}")))?;
    if schema.array_type()? != ArrayType::Dense {
        return Err(not("sparse array".into()));
    }
    match schema.dimensions()?.as_slice() {
        [d] if d.name == OFFSET_DIMENSION && d.datatype == Datatype::UINT64 => {
            let extent = d.as_u64().map(|(_, _, extent)| extent);
            if let Some(extent) = extent {
                check_tile_bytes(uri, extent)?;
            }
            Ok((framework, extent))
        }
        _ => Err(not(format!("dimensions are not one UINT64 `{OFFSET_DIMENSION}`"))),
    }
}

/// The spill file of a model being decoded, made when the first buffer
/// worth spilling comes.
struct SpillTarget<'o> {
    options: &'o ModelOptions,
    file: Option<Arc<SpillFile>>,
    /// The field appended last (its buffer's address) and where it starts,
    /// so the files of one field share one copy.
    field_at: Option<(usize, u64)>,
    /// A spill file could not be made or written: keep the rest in memory.
    broken: bool,
}

impl<'o> SpillTarget<'o> {
    fn new(options: &'o ModelOptions) -> Self {
        SpillTarget {
            options,
            file: None,
            field_at: None,
            broken: options.spill_dir.is_none(),
        }
    }

    /// A new field comes: its buffer is not in the spill file yet.
    fn next_field(&mut self) {
        self.field_at = None;
    }

    /// `file` with its large buffers (and `field`'s bytes) spilled, or as
    /// it is when nothing needs spilling or spilling fails (logged once).
    fn apply(&mut self, uri: &str, file: ViewFile, field: &Arc<Vec<u8>>) -> ViewFile {
        if self.broken || file.len() < self.options.spill_min_bytes as u64 {
            return file;
        }
        let dir = self.options.spill_dir.clone().unwrap_or_default();
        let spill_file = match &self.file {
            Some(f) => f.clone(),
            None => match SpillFile::create(&dir) {
                Ok(f) => self.file.insert(Arc::new(f)).clone(),
                Err(e) => return self.give_up(uri, &dir, &e, file),
            },
        };
        let key = Arc::as_ptr(field).addr();
        let mut spill = Spill {
            file: &spill_file,
            min_bytes: self.options.spill_min_bytes,
            field_at: self.field_at.filter(|(k, _)| *k == key).map(|(_, at)| at),
        };
        let out = file.spill(field, &mut spill);
        if let Some(at) = spill.field_at {
            self.field_at = Some((key, at));
        }
        match out {
            Ok(spilled) => spilled,
            Err(e) => self.give_up(uri, &dir, &e, file),
        }
    }

    fn give_up(&mut self, uri: &str, dir: &std::path::Path, e: &std::io::Error, file: ViewFile) -> ViewFile {
        warn!(
            "{uri}: cannot spill view bytes under {}: {e}; keeping them in memory",
            dir.display()
        );
        self.broken = true;
        file
    }

    fn spilled_bytes(&self) -> u64 {
        self.file.as_ref().map_or(0, |f| f.len())
    }
}

/// The cells of a model array open for reading.
struct Cells<'a> {
    array: &'a Array,
    /// Cells written (the non-empty domain's end, exclusive).
    written: u64,
    /// Cells asked of TileDB per query.
    per_query: usize,
}

/// Reads field `attr` of `cells` after checking its size key; its bytes
/// are charged to `budget` (released by the caller once decoded).
fn read_field(
    cells: &Cells<'_>,
    attr: &AttributeInfo,
    is_bytes: bool,
    key: &str,
    size_value: Option<&MetaValue>,
    budget: &ModelBudget,
) -> Result<FieldRead> {
    let written = cells.written;
    let Some(value) = size_value else {
        return Ok(FieldRead::Empty);
    };
    let problem = |p| Ok(FieldRead::Problem(p));
    let Some(size) = value.as_u64() else {
        return problem(FieldProblem::BadSize { key: key.into() });
    };
    if !is_bytes {
        return problem(FieldProblem::NotBytes {
            datatype: attr.datatype.to_string(),
        });
    }
    if size == 0 {
        return Ok(FieldRead::Empty);
    }
    let too_large = FieldProblem::TooLarge {
        key: key.into(),
        size,
        limit: MAX_FIELD_BYTES,
    };
    if size > MAX_FIELD_BYTES {
        return problem(too_large);
    }
    if size > written {
        return problem(FieldProblem::PastWritten {
            key: key.into(),
            size,
            written,
        });
    }
    let Ok(len) = usize::try_from(size) else {
        return problem(too_large);
    };
    if let Err(source) = budget.hold_field(size) {
        return problem(FieldProblem::NoRoom { size, source });
    }
    let mut buf = Vec::new();
    if buf.try_reserve_exact(len).is_err() {
        budget.release_field(size);
        return problem(FieldProblem::OutOfMemory { size });
    }
    buf.resize(len, 0);
    if let Err(e) = read_in_pieces(cells.array, &attr.name, &mut buf, cells.per_query) {
        budget.release_field(size);
        return Err(e);
    }
    if buf.first() == Some(&0) {
        budget.release_field(size);
        return Ok(FieldRead::Stale);
    }
    Ok(FieldRead::Bytes(buf))
}

/// Most bytes asked of TileDB per query when a field is read. One query
/// for a whole field makes TileDB hold per-tile state for all of it at
/// once: a 480 MB PyTorch field (tiledb-ml writes 1 KiB zstd tiles) read in
/// one query peaked the daemon at 3.4 GB and took 40 s; in queries of 16 MiB
/// it peaked at 636 MB (the field plus ~130 MB), in 4 MiB queries at ~520 MB.
const FIELD_QUERY_BYTES: usize = 16 << 20;

/// Most tiles one query covers ([`MAX_QUERY_TILES`]): TileDB keeps state
/// per tile a query touches, about 8 KiB for tiledb-ml's 1 KiB tiles; the
/// whole-array fuzzer found a 140 KB field in 1-byte tiles peaking at
/// 486 MiB in one query.
const FIELD_QUERY_TILES: u64 = MAX_QUERY_TILES;

/// Cells (bytes) per query for a field in tiles of `tile_cells`.
fn query_cells(tile_cells: Option<u64>) -> usize {
    let by_tiles = tile_cells.map_or(u64::MAX, |t| t.max(1).saturating_mul(FIELD_QUERY_TILES));
    usize::try_from(by_tiles).map_or(FIELD_QUERY_BYTES, |n| n.min(FIELD_QUERY_BYTES))
}

/// Queries of one field in flight at once. One query at a time left half
/// the CPU idle between queries: reading a 480 MB tiledb-ml field cost the
/// same CPU as tiledb-ml's own load() (21 s) but took 43 s against 27 s.
const FIELD_QUERIES_IN_FLIGHT: usize = 2;

/// Fills `buf` with cells `[0, buf.len())` of `attr`, `cells` per query,
/// [`FIELD_QUERIES_IN_FLIGHT`] queries at a time; the first error wins.
fn read_in_pieces(array: &Array, attr: &str, buf: &mut [u8], cells: usize) -> Result<()> {
    let cells = cells.max(1);
    let pieces: Vec<(u64, &mut [u8])> = buf
        .chunks_mut(cells)
        .enumerate()
        .map(|(i, piece)| ((i as u64).saturating_mul(cells as u64), piece))
        .collect();
    let queue = std::sync::Mutex::new(pieces.into_iter());
    let next = || queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).next();
    let worker = || -> Result<()> {
        while let Some((lo, piece)) = next() {
            let hi = lo.saturating_add(piece.len() as u64 - 1);
            if let Err(e) = array.read_cells(attr, lo, hi, piece) {
                // Nothing more to read: the field has failed.
                queue
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .by_ref()
                    .for_each(drop);
                return Err(e.into());
            }
        }
        Ok(())
    };
    std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..FIELD_QUERIES_IN_FLIGHT).map(|_| scope.spawn(worker)).collect();
        let mut result = worker();
        for h in helpers {
            let r = h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            result = result.and(r);
        }
        result
    })
}

/// Why `path` (`/`-separated, relative) cannot be shown as a file in a
/// view: a component that is empty, `.`, `..`, holds NUL or is over 255
/// bytes. Attribute names come from storage and can be any of these.
fn path_problem(path: &str) -> Option<String> {
    path.split('/')
        .find_map(|c| invalid_name_reason(c).map(|reason| format!("component {c:?} cannot be a file name ({reason})")))
}

/// Entries in the making: the first entry at a path wins, and a path that
/// would be both a file and a folder is dropped.
#[derive(Default)]
struct Entries {
    list: Vec<(String, ViewEntry)>,
    files: HashSet<String>,
    folders: HashSet<String>,
}

impl Entries {
    fn add(&mut self, uri: &str, path: String, entry: ViewEntry) {
        if let Some(reason) = path_problem(&path) {
            warn!("{uri}: view entry {path:?} left out: {reason}");
            return;
        }
        let parents: Vec<&str> = path.match_indices('/').filter_map(|(i, _)| path.get(..i)).collect();
        if self.files.contains(&path) || self.folders.contains(&path) || parents.iter().any(|p| self.files.contains(*p))
        {
            debug!("{uri}: a second entry at {path:?} left out");
            return;
        }
        for p in parents {
            self.folders.insert(p.to_string());
        }
        self.files.insert(path.clone());
        self.list.push((path, entry));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<TileDbMlModel>();
        shared::<ViewEntry>();
    }

    #[test]
    fn first_entry_at_a_path_wins_and_files_are_not_folders() {
        let mut e = Entries::default();
        let file = |b: &[u8]| ViewEntry::Ready(ViewFile::from_vec(b.to_vec()));
        e.add("u", "metadata.json".into(), file(b"{}"));
        e.add("u", "metadata.json".into(), file(b"x"));
        e.add("u", "tensorboard/a/x".into(), file(b"1"));
        e.add("u", "tensorboard/a".into(), file(b"2"));
        e.add("u", "tensorboard".into(), file(b"3"));
        e.add("u", "tensorboard/a/x/y".into(), file(b"4"));
        e.add("u", "tensorboard/b".into(), file(b"5"));
        // Names no file system can show (attribute names are free text).
        let long = "n".repeat(256);
        for bad in [
            "..",
            ".",
            "",
            "a//b",
            "/abs",
            "a/",
            "x\0y",
            "tensorboard/../up",
            long.as_str(),
        ] {
            e.add("u", bad.to_string(), file(b"6"));
        }
        let paths: Vec<&str> = e.list.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["metadata.json", "tensorboard/a/x", "tensorboard/b"]);
        match &e.list[0].1 {
            ViewEntry::Ready(f) => assert_eq!(f.len(), 2),
            ViewEntry::Failed(_) => panic!("metadata.json failed"),
        }
    }
}
