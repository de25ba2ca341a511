//! File arrays: one file's bytes in a dense 1-D TileDB array, and the
//! metadata that describes them (format version 1, see the README).
//!
//! Layout written here: dimension `position` (UINT64, tiles of
//! [`TILE_BYTES`]), attribute `contents` (BLOB, as TileDB's filestore
//! writes it, no filters). BLOB, because TileDB computes a minimum, maximum
//! and sum over every cell of every tile it writes of a numeric attribute:
//! for UINT8, half of a `cp`'s CPU. Readers accept any tile extent and
//! filters, and a UINT8 `contents` (arrays written before).
//!
//! Commit protocol: a version is written with one explicit timestamp `T`,
//! strictly greater than every earlier fragment of the array: whole tiles as
//! one global-order fragment, the tail as a row-major fragment, then the
//! metadata (including `modelfs.timestamp = T`) at close. The metadata write
//! is the commit point: readers take the latest metadata and read the data
//! as of its `modelfs.timestamp`, so fragments of a write that died before
//! its metadata are never seen.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::tiledb::{
    self, Array, AttributeSpec, Context, Datatype, DimensionSpec, GlobalWrite, MetaValue, Mode, Schema, StoredTiles,
};

use super::attrs::{self, Attrs};
use super::error::{Error, Result};
use super::names::split_extension;
use super::safetensors_index::TensorIndex;

/// Tile extent of new file arrays, in bytes (one byte per cell).
///
/// Measured with `scripts/measure/tile_extent.py` on 256 MiB of BF16/F32
/// weights: a cold sequential read takes the same time for 64 KiB to 4 MiB
/// tiles, while the median random 64 KiB read grows with the tile (1.8 ms at
/// 64 KiB, 2.3 ms at 256 KiB, 4.1 ms at 1 MiB, 10.9 ms at 4 MiB). 256 KiB
/// keeps random reads near the smallest while keeping tiles few (4,096 per
/// GiB of fragment metadata) and object-store requests large.
pub const TILE_BYTES: u64 = 256 * 1024;

/// Largest tile extent read, in bytes (64 MiB): a read loads whole tiles,
/// so an array with larger tiles (any UINT64 extent up to 2^64 is valid
/// TileDB) could make one 1-byte read allocate that much. Arrays over it
/// are refused before anything is allocated for them. No tool writes
/// model files with tiles this large (modelfs writes 256 KiB, TileDB's
/// filestore 1 KiB, TileDB-ML 1 KiB).
pub const MAX_TILE_BYTES: u64 = 64 << 20;

/// Most tiles one read query covers. TileDB keeps a few KiB of state per
/// tile a query touches, whatever the tile's size, so a read of arrays with
/// tiny tiles is split: the whole-array fuzzer read a file array of 1 MB in
/// 7-byte tiles through the core at a 491 MiB peak (a 4 MiB read-ahead
/// query spans 600,000 tiles); split, at 48 MiB. Files modelfs writes
/// (256 KiB tiles) never reach it.
pub const MAX_QUERY_TILES: u64 = 4096;

/// Versions of at least this many whole tiles, each of at least
/// [`STORED_MIN_TILE_BYTES`], read their tiles straight from storage when
/// they are stored unfiltered (as modelfs writes them), in reads of at
/// least [`STORED_MIN_READ_TILES`] tiles: a query costs the daemon more CPU
/// and memory, and on a host shared with the store that slows the read.
/// Measured on cold 1 GiB reads from Garage on loopback (2 cores, 3
/// alternated runs): 2.54-2.68 s against 2.82-3.02 s by queries, the
/// daemon's CPU 1.1-1.3 s against 1.5-1.8 s. Smaller versions and reads
/// keep to queries: finding the tiles costs about 10 requests.
pub const STORED_MIN_TILES: u64 = 64;
pub const STORED_MIN_TILE_BYTES: u64 = 64 * 1024;
pub const STORED_MIN_READ_TILES: u64 = 4;

/// Bytes gathered before one submit of a streaming write: each submit costs
/// TileDB a fixed amount of work, so FUSE's 128 KiB-1 MiB writes are
/// batched (measured: `cp` into the mount went at a third of `import`'s
/// speed with one submit per FUSE write).
pub const SUBMIT_BYTES: usize = 8 << 20;

/// Upper bound of the `position` domain: far beyond any file, and leaving
/// room for TileDB to round the domain up to whole tiles.
pub const DOMAIN_MAX: u64 = (1 << 62) - 1;

/// Largest `file_size` accepted: what `off_t` (and so `stat`) can state.
pub const MAX_FILE_BYTES: u64 = i64::MAX as u64;

/// Value of `modelfs.format` this code writes and understands.
pub const FORMAT_VERSION: u64 = 1;

pub const DIM_NAME: &str = "position";
pub const ATTR_NAME: &str = "contents";

pub const KEY_FILE_SIZE: &str = "file_size";
pub const KEY_ORIGINAL_NAME: &str = "original_file_name";
pub const KEY_EXTENSION: &str = "file_extension";
pub const KEY_MIME_TYPE: &str = "mime_type";
pub const KEY_FORMAT: &str = "modelfs.format";
pub const KEY_KIND: &str = "modelfs.kind";
pub const KEY_TENSORS: &str = "modelfs.tensors";
pub const KEY_HEADER_SIZE: &str = "modelfs.header_size";
pub const KEY_TIMESTAMP: &str = "modelfs.timestamp";

/// What a file array holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    /// A validated safetensors file with its tensor index.
    Safetensors(TensorIndex),
    /// Any other file.
    Plain,
}

impl FileKind {
    pub fn name(&self) -> &'static str {
        match self {
            FileKind::Safetensors(_) => "safetensors",
            FileKind::Plain => "file",
        }
    }
}

/// The metadata of one version of a file array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    pub size: u64,
    /// `modelfs.timestamp` (ms) when modelfs wrote it; `None` for arrays
    /// written by other tools, which are read as of now.
    pub timestamp: Option<u64>,
    /// `safetensors`, `file`, or `None` for arrays written by other tools.
    pub kind: Option<String>,
    pub tensors: Option<TensorIndex>,
    /// Modes, owners and times set by tools (not part of the version).
    pub attrs: Attrs,
}

impl FileMeta {
    /// Whether `other` describes the same bytes (attributes aside).
    pub fn same_data(&self, other: &FileMeta) -> bool {
        self.size == other.size && self.timestamp == other.timestamp && self.kind == other.kind
    }
}

/// Whether a schema has the shape of a file array; `Err` says why not.
pub fn check_schema(schema: &Schema) -> std::result::Result<(), String> {
    let dims = schema.dimensions().map_err(|e| e.to_string())?;
    let attrs = schema.attributes().map_err(|e| e.to_string())?;
    if schema.array_type().map_err(|e| e.to_string())? != tiledb::ArrayType::Dense {
        return Err("sparse array".into());
    }
    match dims.as_slice() {
        [d] if d.name == DIM_NAME && d.as_u64().is_some() => {}
        _ => return Err(format!("dimensions are not one UINT64 `{DIM_NAME}`")),
    }
    match attrs.iter().find(|a| a.name == ATTR_NAME) {
        Some(a) if matches!(a.datatype, Datatype::UINT8 | Datatype::BLOB) && a.cell_val_num == 1 => Ok(()),
        _ => Err(format!("no UINT8 or BLOB attribute `{ATTR_NAME}`")),
    }
}

/// Reads the file metadata out of the array's metadata list.
pub fn parse_meta(uri: &str, meta: &[(String, MetaValue)]) -> Result<FileMeta> {
    let get = |k: &str| meta.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let corrupt = |reason: String| Error::Corrupt {
        uri: uri.to_string(),
        reason,
    };
    let size = get(KEY_FILE_SIZE)
        .ok_or_else(|| corrupt(format!("no `{KEY_FILE_SIZE}` metadata (an unfinished write?)")))?
        .as_u64()
        .ok_or_else(|| corrupt(format!("`{KEY_FILE_SIZE}` is not a non-negative integer")))?;
    if size > MAX_FILE_BYTES {
        return Err(corrupt(format!(
            "`{KEY_FILE_SIZE}` is {size} bytes, over the largest file size ({MAX_FILE_BYTES})"
        )));
    }
    if let Some(v) = get(KEY_FORMAT).and_then(|v| v.as_u64())
        && v > FORMAT_VERSION
    {
        return Err(corrupt(format!(
            "format version {v} is newer than this modelfs ({FORMAT_VERSION})"
        )));
    }
    let kind = get(KEY_KIND).and_then(|v| v.as_str()).map(str::to_string);
    let tensors = match get(KEY_TENSORS).and_then(|v| v.as_str()) {
        Some(text) if kind.as_deref() == Some("safetensors") => Some(
            serde_json::from_str::<TensorIndex>(text)
                .map_err(|e| corrupt(format!("`{KEY_TENSORS}` does not parse: {e}")))?,
        ),
        _ => None,
    };
    Ok(FileMeta {
        size,
        timestamp: get(KEY_TIMESTAMP).and_then(|v| v.as_u64()),
        kind,
        tensors,
        attrs: Attrs::parse(meta),
    })
}

/// `e`, a failed open of the array at `uri`, as [`Error::NotFound`] when
/// the array is no longer there: removed (by another mount, or here)
/// between the lookup that found it and the open. (A folder that cannot
/// be read also looks like nothing to TileDB: only its own "does not
/// exist" counts.)
pub(super) fn unless_removed(ctx: &Context, uri: &str, e: tiledb::Error) -> Error {
    if !e.message.contains("does not exist") {
        return e.into();
    }
    match tiledb::object_type(ctx, uri) {
        Ok(tiledb::ObjectType::Invalid) => Error::NotFound { uri: uri.to_string() },
        _ => e.into(),
    }
}

/// Reads the current metadata of the file array at `uri` (latest commit).
pub fn read_meta(ctx: &Context, uri: &str) -> Result<FileMeta> {
    let mut array = Array::open_latest(ctx, uri)?;
    let schema = array.schema()?;
    check_schema(&schema).map_err(|reason| Error::NotAFileArray {
        uri: uri.to_string(),
        reason,
    })?;
    parse_meta(uri, &array.metadata()?)
}

/// One version of a file array, open for reads of any byte range. Cheap to
/// share between threads.
pub struct FileArray {
    array: Array,
    meta: FileMeta,
    tile_bytes: u64,
    /// The version's whole tiles as stored, for reads that skip the query
    /// (see [`STORED_MIN_TILES`]): `None` when it is read by queries only.
    stored: Option<Stored>,
}

/// A version's whole tiles, found at its first large read.
struct Stored {
    tiles: OnceLock<Option<StoredTiles>>,
    /// Set by the read that looks for them: reads meanwhile use queries
    /// rather than wait on its requests.
    finding: AtomicBool,
    /// Set at the first failed read of them: queries from then on.
    failed: AtomicBool,
}

impl FileArray {
    /// Opens the latest committed version of the file at `uri`.
    pub fn open(ctx: &Context, uri: &str) -> Result<Self> {
        let meta = read_meta(ctx, uri)?;
        Self::open_version(ctx, uri, meta)
    }

    /// Opens the version `meta` describes (as read by [`read_meta`]).
    ///
    /// # Errors
    /// [`Error::Corrupt`] when the tile extent is over [`MAX_TILE_BYTES`] or
    /// `file_size` runs past the cells the version holds (its non-empty
    /// domain), both checked before anything is read.
    ///
    /// A version modelfs wrote is read from its own writes only (the array
    /// opened at `[T, T]`, see `versions.rs`), so older fragments, pruned
    /// or not, are never touched. When they do not hold it, it is read as
    /// of `T` only if modelfs did not commit it at `T` (another tool set
    /// `modelfs.timestamp`) or a consolidated fragment ends at `T` (another
    /// tool merged the versions up to it); otherwise the version was pruned
    /// and [`Error::VersionGone`] is returned: as of `T`, an older
    /// version's cells would show.
    pub fn open_version(ctx: &Context, uri: &str, meta: FileMeta) -> Result<Self> {
        if let Some(t) = meta.timestamp
            && let Ok(mut own) = Array::open_between(ctx, uri, t, t)
        {
            if covers(meta.size, own.non_empty_domain_u64(0)?) {
                return Self::from_array(uri, own, meta, true);
            }
            let committed_at_t = parse_meta(uri, &own.metadata()?).is_ok_and(|m| m.timestamp == Some(t));
            let merged_up_to_t = tiledb::fragments(ctx, uri)?
                .iter()
                .any(|f| f.timestamp_range.0 < f.timestamp_range.1 && f.timestamp_range.1 == t);
            if committed_at_t && !merged_up_to_t {
                return Err(super::versions::gone(uri, t));
            }
        }
        let array = Array::open_at(ctx, uri, Mode::Read, meta.timestamp).map_err(|e| unless_removed(ctx, uri, e))?;
        Self::from_array(uri, array, meta, false)
    }

    /// Opens past version `meta` (its `timestamp` set), from its own writes
    /// only.
    ///
    /// # Errors
    /// [`Error::VersionGone`] when its cells are no longer all stored (the
    /// version was pruned): never another version's bytes.
    pub fn open_past(ctx: &Context, uri: &str, meta: FileMeta) -> Result<Self> {
        let Some(t) = meta.timestamp else {
            return Self::open_version(ctx, uri, meta);
        };
        let own = Array::open_between(ctx, uri, t, t).map_err(|e| unless_removed(ctx, uri, e))?;
        if !covers(meta.size, own.non_empty_domain_u64(0)?) {
            return Err(super::versions::gone(uri, t));
        }
        Self::from_array(uri, own, meta, true)
    }

    /// `own`: `array` is open on the version's own writes only.
    fn from_array(uri: &str, array: Array, meta: FileMeta, own: bool) -> Result<Self> {
        let schema = array.schema()?;
        let dimension = schema.dimensions()?.first().and_then(|d| d.as_u64());
        let tile_bytes = dimension.map_or(TILE_BYTES, |(_, _, extent)| extent);
        check_tile_bytes(uri, tile_bytes)?;
        check_size_written(uri, meta.size, array.non_empty_domain_u64(0)?)?;
        // Tiles as stored are tried only where modelfs's layout can hold:
        // one unfiltered attribute over a domain from 0 (the check of each
        // tile read stays as a second guard).
        let attributes = schema.attributes()?;
        let plain = matches!(attributes.as_slice(), [a] if a.name == ATTR_NAME && a.filters.is_empty() && !a.nullable)
            && dimension.is_some_and(|(lo, _, _)| lo == 0);
        let stored = (own
            && plain
            && meta.timestamp.is_some()
            && tile_bytes >= STORED_MIN_TILE_BYTES
            && meta.size / tile_bytes >= STORED_MIN_TILES)
            .then(|| Stored {
                tiles: OnceLock::new(),
                finding: AtomicBool::new(false),
                failed: AtomicBool::new(false),
            });
        Ok(FileArray {
            array,
            meta,
            tile_bytes,
            stored,
        })
    }

    pub fn meta(&self) -> &FileMeta {
        &self.meta
    }

    pub fn size(&self) -> u64 {
        self.meta.size
    }

    /// The array's tile extent, in bytes.
    pub fn tile_bytes(&self) -> u64 {
        self.tile_bytes
    }

    pub fn uri(&self) -> &str {
        self.array.uri()
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read
    /// (fewer only at the end of the file, 0 at or past it).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let mut done = 0;
        for (at, n) in self.query_pieces(offset, buf.len()) {
            let piece = &mut buf[done..done + n];
            self.array.read_cells(ATTR_NAME, at, at + n as u64 - 1, piece)?;
            done += n;
        }
        Ok(done)
    }

    /// [`FileArray::read_at`] of up to `len` bytes, appended to `out`
    /// without zeroing them first; on an error `out` is left as it was.
    pub fn read_append(&self, offset: u64, len: usize, out: &mut Vec<u8>) -> Result<usize> {
        let start = out.len();
        let end = offset.saturating_add(len as u64).min(self.meta.size);
        out.reserve(end.saturating_sub(offset) as usize);
        let offset = self.read_stored_tiles(offset, end, out);
        let len = end.saturating_sub(offset) as usize;
        for (at, n) in self.query_pieces(offset, len) {
            if let Err(e) = self.array.read_cells_append(ATTR_NAME, at, at + n as u64 - 1, n, out) {
                out.truncate(start);
                return Err(e.into());
            }
        }
        Ok(out.len() - start)
    }

    /// Whether reads of whole tiles go straight to the stored tiles: they
    /// were found (at the first large read) and no read of them failed.
    pub fn reads_stored_tiles(&self) -> bool {
        self.stored
            .as_ref()
            .is_some_and(|s| matches!(s.tiles.get(), Some(Some(_))) && !s.failed.load(Ordering::Relaxed))
    }

    /// Appends the whole tiles at the start of `offset..end` straight from
    /// storage when that is how this version is read (see
    /// [`STORED_MIN_TILES`]); returns where the rest starts. A failure is
    /// logged once and leaves the version to queries, which report any
    /// storage error themselves.
    fn read_stored_tiles(&self, offset: u64, end: u64, out: &mut Vec<u8>) -> u64 {
        let (Some(stored), Some(timestamp)) = (&self.stored, self.meta.timestamp) else {
            return offset;
        };
        let tile = self.tile_bytes;
        let first = offset / tile;
        let whole = self.meta.size / tile;
        let last = (end / tile).min(whole);
        if !offset.is_multiple_of(tile) || last < first + STORED_MIN_READ_TILES || stored.failed.load(Ordering::Relaxed)
        {
            return offset;
        }
        if stored.tiles.get().is_none() && !stored.finding.swap(true, Ordering::AcqRel) {
            let found = StoredTiles::find(
                self.array.context(),
                self.uri(),
                timestamp,
                // The tail is a fragment of its own.
                1 + usize::from(!self.meta.size.is_multiple_of(tile)),
                tile,
                whole,
                |first, out| {
                    let at = first * tile;
                    self.array
                        .read_cells_append(ATTR_NAME, at, at + tile - 1, tile as usize, out)
                },
            );
            let found = match found {
                Ok(tiles) => {
                    log::debug!("{}: whole tiles read as stored", self.uri());
                    Some(tiles)
                }
                Err(e) => {
                    log::warn!("{}: read by queries: {e}", self.uri());
                    None
                }
            };
            let _ = stored.tiles.set(found);
        }
        let Some(Some(tiles)) = stored.tiles.get() else {
            return offset;
        };
        match tiles.read_append(first, last - first, out) {
            Ok(()) => last * tile,
            Err(e) => {
                if !stored.failed.swap(true, Ordering::Relaxed) {
                    log::warn!("{}: read by queries from now on: {e}", self.uri());
                }
                offset
            }
        }
    }

    /// The read queries for up to `len` bytes at `offset`, as (first
    /// byte, bytes): within the file, at most [`MAX_QUERY_TILES`] tiles
    /// each.
    fn query_pieces(&self, offset: u64, len: usize) -> impl Iterator<Item = (u64, usize)> {
        let end = offset.saturating_add(len as u64).min(self.meta.size);
        let per = self.tile_bytes.max(1).saturating_mul(MAX_QUERY_TILES);
        (offset..end)
            .step_by(usize::try_from(per).unwrap_or(usize::MAX))
            .map(move |at| (at, per.min(end - at) as usize))
    }
}

/// Refuses a tile extent over [`MAX_TILE_BYTES`].
pub fn check_tile_bytes(uri: &str, tile_bytes: u64) -> Result<()> {
    if tile_bytes > MAX_TILE_BYTES {
        return Err(Error::Corrupt {
            uri: uri.to_string(),
            reason: format!("tile extent {tile_bytes} is over the {MAX_TILE_BYTES}-byte limit"),
        });
    }
    Ok(())
}

/// Refuses a `file_size` the array's cells do not hold: `[0, size)` must
/// lie inside the non-empty domain `written` (`None` when no cell is
/// written), or the bytes past it would read as fill.
fn check_size_written(uri: &str, size: u64, written: Option<(u64, u64)>) -> Result<()> {
    if covers(size, written) {
        return Ok(());
    }
    let cells = written.map_or_else(|| "no cells".to_string(), |(lo, hi)| format!("cells [{lo}, {hi}]"));
    Err(Error::Corrupt {
        uri: uri.to_string(),
        reason: format!("`{KEY_FILE_SIZE}` is {size} bytes but the array holds {cells}"),
    })
}

/// Whether cells `written` (a non-empty domain, `None` when no cell is
/// written) hold all of a file of `size` bytes.
pub fn covers(size: u64, written: Option<(u64, u64)>) -> bool {
    match written {
        _ if size == 0 => true,
        None => false,
        Some((lo, hi)) => lo == 0 && size - 1 <= hi,
    }
}

/// Creates an empty file array at `uri` with the layout above.
pub fn create(ctx: &Context, uri: &str) -> Result<()> {
    create_filtered(ctx, uri, vec![])
}

/// [`create`] with `filters` on the attribute, as other tools may write
/// file arrays (readers accept any filters).
pub fn create_filtered(ctx: &Context, uri: &str, filters: Vec<tiledb::Filter>) -> Result<()> {
    let schema = Schema::dense(
        ctx,
        &[DimensionSpec {
            name: DIM_NAME.into(),
            lo: 0,
            hi: DOMAIN_MAX,
            extent: TILE_BYTES,
            filters: vec![],
        }],
        &[AttributeSpec {
            name: ATTR_NAME.into(),
            datatype: Datatype::BLOB,
            filters,
        }],
    )?;
    schema.create_array(uri)?;
    Ok(())
}

/// A timestamp for a new version of the array at `uri`: now, or later than
/// every fragment and metadata write already there when clocks disagree.
pub(crate) fn next_timestamp(ctx: &Context, uri: &str) -> Result<u64> {
    let latest_fragment = tiledb::fragments(ctx, uri)?
        .iter()
        .map(|f| f.timestamp_range.1)
        .max()
        .unwrap_or(0);
    let latest_meta = match Array::open_latest(ctx, uri) {
        Ok(mut a) => parse_meta(uri, &a.metadata()?)
            .ok()
            .map_or(0, |m| m.timestamp.unwrap_or(0).max(m.attrs.written_ms())),
        Err(_) => 0,
    };
    let after = |t: u64| {
        t.checked_add(1).ok_or_else(|| Error::Corrupt {
            uri: uri.to_string(),
            reason: format!("a version is timestamped {t} ms, the last one TileDB can name"),
        })
    };
    Ok(tiledb::now_ms().max(after(latest_fragment)?).max(after(latest_meta)?))
}

/// Stores `change` in the metadata of the file array at `uri` without a new
/// data version, stamped after every version and attribute write there so
/// it is the latest; `ctime_ns` is set to that moment. Returns what it
/// stored.
pub fn set_attrs(ctx: &Context, uri: &str, change: &Attrs) -> Result<Attrs> {
    let at = next_timestamp(ctx, uri)?;
    let now_ns = now_ns();
    let change = Attrs {
        ctime_ns: Some(now_ns.max(at.saturating_mul(1_000_000))),
        ..*change
    };
    let mut array = Array::open_at(ctx, uri, Mode::Write, Some(at))?;
    for (key, value) in change.entries() {
        array.put_metadata(key, &value)?;
    }
    array.close()?;
    Ok(change)
}

/// Nanoseconds since the epoch, now.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Milliseconds since the epoch, now: the unit of version and change
/// stamps.
pub fn now_ms() -> u64 {
    now_ns() / 1_000_000
}

/// Where whole tiles go: a global-order write when there is at least one.
enum Target {
    Tiles(GlobalWrite),
    TailOnly(Array),
}

/// Writes one new version of a file of a size known up front, streaming:
/// bytes go to TileDB as they arrive, with memory bounded by one tile.
/// Nothing is visible to readers until [`FileWriter::commit`] succeeds.
pub struct FileWriter {
    uri: String,
    name: String,
    size: u64,
    /// Bytes covered by whole tiles, written in global order.
    aligned: u64,
    timestamp: u64,
    /// The array's first version: its metadata will be this commit's alone.
    first: bool,
    target: Target,
    /// The bytes after the last whole tile.
    tail: Vec<u8>,
    /// Whole-tile bytes gathered for the next submit.
    pending: Vec<u8>,
    written: u64,
    /// Attributes committed with the version (times unset: the commit's).
    attrs: Attrs,
}

impl FileWriter {
    /// Starts a version of `size` bytes of the file named `name` in the
    /// existing file array at `uri`.
    pub fn begin(ctx: &Context, uri: &str, name: &str, size: u64) -> Result<Self> {
        let schema = Schema::load(ctx, uri)?;
        check_schema(&schema).map_err(|reason| Error::NotAFileArray {
            uri: uri.to_string(),
            reason,
        })?;
        let (_, _, extent) =
            schema
                .dimensions()?
                .first()
                .and_then(|d| d.as_u64())
                .ok_or_else(|| Error::NotAFileArray {
                    uri: uri.to_string(),
                    reason: "no UINT64 dimension".into(),
                })?;
        check_tile_bytes(uri, extent)?;
        let timestamp = next_timestamp(ctx, uri)?;
        Self::start(ctx, uri, name, size, extent, timestamp, false)
    }

    /// Starts the first version of the file array [`create`] just made at
    /// `uri`: its schema and its empty history are known, so neither is
    /// read (on S3 that is about 15 requests of a small file's 50).
    pub fn begin_first(ctx: &Context, uri: &str, name: &str, size: u64) -> Result<Self> {
        Self::start(ctx, uri, name, size, TILE_BYTES, tiledb::now_ms(), true)
    }

    fn start(
        ctx: &Context,
        uri: &str,
        name: &str,
        size: u64,
        extent: u64,
        timestamp: u64,
        first: bool,
    ) -> Result<Self> {
        let array = Array::open_at(ctx, uri, Mode::Write, Some(timestamp))?;
        let aligned = size / extent * extent;
        let target = if aligned > 0 {
            Target::Tiles(GlobalWrite::new(array, ATTR_NAME, 0, aligned - 1)?)
        } else {
            Target::TailOnly(array)
        };
        Ok(FileWriter {
            uri: uri.to_string(),
            name: name.to_string(),
            size,
            aligned,
            timestamp,
            first,
            target,
            tail: Vec::new(),
            pending: Vec::new(),
            written: 0,
            attrs: Attrs::default(),
        })
    }

    /// The timestamp this version will carry.
    pub fn timestamp(&self) -> u64 {
        self.timestamp
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Attributes to commit with this version: the mode and owner stay for
    /// later versions; times not set here become the commit's.
    pub fn set_attrs(&mut self, attrs: Attrs) {
        self.attrs = attrs;
    }

    /// Appends the next bytes of the file.
    pub fn write(&mut self, mut data: &[u8]) -> Result<()> {
        if self.written + data.len() as u64 > self.size {
            return Err(Error::SizeMismatch {
                uri: self.uri.clone(),
                written: self.written + data.len() as u64,
                expected: self.size,
            });
        }
        if self.written < self.aligned {
            let n = ((self.aligned - self.written) as usize).min(data.len());
            if let Target::Tiles(g) = &mut self.target {
                if self.pending.is_empty() && n >= SUBMIT_BYTES {
                    g.submit(&data[..n])?;
                } else {
                    self.pending.extend_from_slice(&data[..n]);
                    let last = self.written + n as u64 == self.aligned;
                    if self.pending.len() >= SUBMIT_BYTES || last {
                        g.submit(&self.pending)?;
                        self.pending.clear();
                    }
                }
            }
            self.written += n as u64;
            data = &data[n..];
        }
        self.tail.extend_from_slice(data);
        self.written += data.len() as u64;
        Ok(())
    }

    /// Commits the version: data fragments, then the metadata, the commit
    /// point. On error nothing new becomes visible.
    pub fn commit(self, kind: &FileKind) -> Result<Committed> {
        if self.written != self.size {
            return Err(Error::SizeMismatch {
                uri: self.uri.clone(),
                written: self.written,
                expected: self.size,
            });
        }
        let mut array = match self.target {
            Target::Tiles(g) => g.finalize()?,
            Target::TailOnly(a) => a,
        };
        if !self.tail.is_empty() {
            array.write_cells(ATTR_NAME, self.aligned, self.size - 1, &self.tail)?;
        }
        let (stem, ext) = split_extension(&self.name);
        // The version's ctime: its commit, unless its writer gave one (a new
        // file closed untouched keeps its creation time).
        let attrs = Attrs {
            ctime_ns: Some(self.attrs.ctime_ns.unwrap_or(self.timestamp.saturating_mul(1_000_000))),
            ..self.attrs
        };
        let mut put = vec![
            (KEY_FILE_SIZE.to_string(), MetaValue::u64(self.size)),
            (KEY_ORIGINAL_NAME.to_string(), MetaValue::text(stem)),
            (KEY_EXTENSION.to_string(), MetaValue::text(ext)),
            (KEY_MIME_TYPE.to_string(), MetaValue::text(mime_type(ext))),
            (KEY_FORMAT.to_string(), MetaValue::u64(FORMAT_VERSION)),
            (KEY_KIND.to_string(), MetaValue::text(kind.name())),
            (KEY_TIMESTAMP.to_string(), MetaValue::u64(self.timestamp)),
        ];
        let set = attrs.entries();
        let mut deleted: Vec<&str> = [attrs::KEY_MTIME_NS, attrs::KEY_ATIME_NS]
            .into_iter()
            .filter(|key| !set.iter().any(|(k, _)| k == key))
            .collect();
        put.extend(set.iter().map(|(k, v)| (k.to_string(), v.clone())));
        match kind {
            FileKind::Safetensors(index) => {
                let json = serde_json::to_string(index).map_err(|e| Error::Corrupt {
                    uri: self.uri.clone(),
                    reason: format!("tensor index does not serialize: {e}"),
                })?;
                put.push((KEY_TENSORS.to_string(), MetaValue::text(&json)));
                put.push((KEY_HEADER_SIZE.to_string(), MetaValue::u64(index.header_len)));
            }
            FileKind::Plain => deleted.extend([KEY_TENSORS, KEY_HEADER_SIZE]),
        }
        // A first version's array has no metadata to delete.
        if !self.first {
            for key in deleted {
                array.delete_metadata(key)?;
            }
        }
        for (key, value) in &put {
            array.put_metadata(key, value)?;
        }
        array.close()?;
        let meta = if self.first {
            Some(parse_meta(&self.uri, &put)?)
        } else {
            None
        };
        Ok(Committed {
            timestamp: self.timestamp,
            meta,
        })
    }
}

/// What a commit made.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The version's timestamp (ms).
    pub timestamp: u64,
    /// The file's metadata now, when the commit alone says it (a first
    /// version): no read is needed to learn it.
    pub meta: Option<FileMeta>,
}

/// A MIME type for a file extension, as the filestore records it.
pub fn mime_type(ext: &str) -> &'static str {
    match ext.to_ascii_lowercase().as_str() {
        "json" => "application/json",
        "txt" | "md" => "text/plain",
        "py" => "text/x-python",
        "yaml" | "yml" => "application/yaml",
        _ => "application/octet-stream",
    }
}
