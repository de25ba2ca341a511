//! The write path: one [`Writer`] per file open for writing.
//!
//! A writer is a small state machine:
//!
//! ```text
//! Buffering ──(.safetensors header complete)──> Streaming ──┐
//!     │  └──(past the memory limit, or a write out of order)─> Staging ──┤
//!     └────────────────────────────────────────────────────────────────┴─> commit ─> Clean
//! any state ──(error)──> Failed(errno)   (kept: every later call returns it)
//! ```
//!
//! - `Buffering`: bytes held in memory, up to [`MEMORY_LIMIT_BYTES`]; small
//!   files (configs, tokenizers) never touch the disk.
//! - `Streaming`: a `.safetensors` file whose header is in: the header gives
//!   the final size, so bytes go straight into one global-order TileDB
//!   write as they arrive, with memory bounded by TileDB's tile buffers.
//! - `Staging`: anything else (out-of-order writes, a seek back to patch a
//!   header, files of unknown size past the memory limit, and opens of an
//!   existing file without `O_TRUNC`): a local file under the staging
//!   directory, copied into TileDB at commit.
//!
//! Commit (at `flush` or `fsync`) validates `.safetensors` files and writes
//! one new version; nothing is visible before it succeeds. Errors stick.

mod staging;

use std::sync::Arc;

use log::{info, warn};

use super::store::{Store, StoredVersion, VersionWriter};
use crate::registry::safetensors_index::{self, header_len};
use crate::registry::transfer::is_safetensors_name;
use crate::registry::{self, Attrs, Committed, Entry, FileKind, Node};

use super::error::{CoreError, Error, Result};
pub use staging::{StagingArea, StagingFile};

/// Bytes a writer holds in memory before it stages to disk.
pub const MEMORY_LIMIT_BYTES: usize = 8 << 20;

/// Where a writer's bytes go when committed.
#[derive(Debug, Clone)]
pub struct Target {
    /// The directory holding the file.
    pub dir: Entry,
    /// The file's entry: for a new file, its name and the storage URI it
    /// will get; the array is made at the first commit.
    pub entry: Entry,
    /// Whether the array exists (a committed version is there).
    pub exists: bool,
}

/// A file held in memory: `bytes` (its whole content, zero-filled where
/// nothing was written) and how long a prefix was written in order from 0,
/// which decides whether it can still be streamed.
#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    in_order: usize,
    /// The header turned out invalid: keep the bytes, refuse at commit.
    no_stream: bool,
}

enum State {
    Buffering(Buffer),
    Streaming(Box<Stream>),
    Staging(StagingFile),
    /// Committed, nothing new since.
    Clean {
        size: u64,
    },
    Failed {
        errno: i32,
        message: String,
    },
}

struct Stream {
    writer: Box<dyn VersionWriter>,
    kind: FileKind,
    size: u64,
}

/// One file open for writing.
pub struct Writer {
    /// Open handles sharing this writer (kept by the file system core).
    pub handles: usize,
    /// Changed by path, through no handle (the kernel truncates for
    /// `O_TRUNC` without naming one): the next handle's close commits it.
    pub changed_by_path: bool,
    target: Target,
    /// An existing file this one takes the place of at commit (a file
    /// streamed to its own array, then renamed over another).
    replaces: Option<Entry>,
    state: State,
    staging: Arc<StagingArea>,
    /// Bytes changed since the last commit.
    dirty: bool,
    /// Attributes set while open (the mode of a new file, `fchmod`,
    /// `futimens`), stored with the next commit.
    attrs: Attrs,
    /// A new file unlinked before its first commit: nothing is committed,
    /// the bytes stay readable through its handles.
    discarded: bool,
    /// The timestamp of this writer's last commit.
    committed_ts: Option<u64>,
    /// When a new file was created (ns), until its first commit: closed
    /// without a change, it keeps that as its mtime and ctime (POSIX).
    created_ns: Option<u64>,
    /// A write or truncation came since the writer was made.
    changed: bool,
    /// The timestamp of a commit whose version the inode's node does not
    /// show yet: until [`Writer::settle`] with it, readers following this
    /// writer read the committed bytes through it. (Commits of handles
    /// sharing the writer may overlap: only the last one's settle counts.)
    unsettled: Option<u64>,
}

/// The latest committed version of the file `entry`.
fn open_committed(store: &dyn Store, entry: &Entry) -> Result<Box<dyn StoredVersion>> {
    match store.node(entry)? {
        Node::File(meta) => Ok(store.open_version(&entry.uri, meta)?),
        _ => Err(CoreError::NotAFileAnyMore { uri: entry.uri.clone() }.into()),
    }
}

impl Writer {
    /// A writer for `target`. With `truncate` (or for a new file) it starts
    /// empty; otherwise it starts from the committed bytes, which are copied
    /// to a staging file at the first change.
    pub fn new(target: Target, truncate: bool, staging: Arc<StagingArea>, committed_size: u64) -> Self {
        let fresh = truncate || !target.exists;
        Writer {
            state: if fresh {
                State::Buffering(Buffer::default())
            } else {
                State::Clean { size: committed_size }
            },
            // A new file is committed even if nothing is written to it; so is
            // a truncation.
            dirty: fresh,
            target,
            replaces: None,
            staging,
            attrs: Attrs::default(),
            discarded: false,
            committed_ts: None,
            created_ns: None,
            changed: false,
            handles: 0,
            changed_by_path: false,
            unsettled: None,
        }
    }

    /// A new file created at `ns` (since the epoch).
    pub fn set_created(&mut self, ns: u64) {
        self.created_ns = Some(ns);
    }

    /// When the new file was created (ns since the epoch), until its first
    /// commit.
    pub fn created_ns(&self) -> Option<u64> {
        self.created_ns
    }

    /// Never commit (the file was removed before it existed in storage).
    pub fn discard(&mut self) {
        self.discarded = true;
    }

    /// Whether its file was unlinked before its first commit: it commits
    /// nothing, and its bytes are the only copy.
    pub fn is_discarded(&self) -> bool {
        self.discarded
    }

    /// At the first change after a commit: when another handle committed
    /// a version since (a truncation by path, say), the staged bytes are
    /// dropped and the next change starts from that version, as it would on
    /// a local file.
    fn follow_other_commits(&mut self, store: &dyn Store) -> Result<()> {
        let Some(ours) = self.committed_ts.filter(|_| !self.dirty) else {
            return Ok(());
        };
        if !matches!(self.state, State::Staging(_)) {
            return Ok(());
        }
        if let Node::File(meta) = store.node(&self.target.entry)?
            && meta.timestamp != Some(ours)
        {
            self.state = State::Clean { size: meta.size };
        }
        Ok(())
    }

    /// Adds `change` to the attributes the next commit stores.
    pub fn set_attrs(&mut self, change: Attrs) {
        self.attrs = self.attrs.with(&change);
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Whether the bytes are going into a new array of their own (streaming
    /// a new file), so a rename cannot redirect them into another array.
    pub fn has_own_array(&self) -> bool {
        !self.target.exists && matches!(self.state, State::Streaming(_))
    }

    /// Points the writer at a new place after a rename: `entry` in `dir`,
    /// which exists when it is a committed file the bytes become a new
    /// version of. `replaces` names a file to take the place of at commit.
    pub fn retarget(&mut self, dir: Entry, entry: Entry, exists: bool, replaces: Option<Entry>) {
        self.target = Target { dir, entry, exists };
        self.replaces = replaces;
    }

    /// Follows a rename that moved storage from `from` to `to` (out of or
    /// into a plain directory): the places it commits to that lay there.
    pub fn storage_moved(&mut self, from: &str, to: &str) {
        let entries = [&mut self.target.dir, &mut self.target.entry]
            .into_iter()
            .chain(self.replaces.as_mut());
        for e in entries {
            if let Some(uri) = crate::registry::uri::rebase(&e.uri, from, to) {
                e.uri = uri;
            }
        }
    }

    /// The file's size as written so far.
    pub fn size(&self) -> u64 {
        match &self.state {
            State::Buffering(b) => b.bytes.len() as u64,
            State::Streaming(s) => s.writer.written(),
            State::Staging(f) => f.size(),
            State::Clean { size } => *size,
            State::Failed { .. } => 0,
        }
    }

    fn check(&self) -> Result<()> {
        match &self.state {
            State::Failed { errno, message } => Err(CoreError::FailedEarlier {
                errno: *errno,
                message: message.clone(),
            }
            .into()),
            _ => Ok(()),
        }
    }

    fn fail(&mut self, e: Error) -> Error {
        self.state = State::Failed {
            errno: e.errno,
            message: e.to_string(),
        };
        e
    }

    fn name(&self) -> &str {
        &self.target.entry.name
    }

    /// Writes `data` at `offset`; returns the bytes taken.
    pub fn write(&mut self, store: &dyn Store, offset: u64, data: &[u8]) -> Result<usize> {
        self.check()?;
        let r = self.write_inner(store, offset, data);
        r.map_err(|e| self.fail(e))
    }

    fn write_inner(&mut self, store: &dyn Store, offset: u64, data: &[u8]) -> Result<usize> {
        self.follow_other_commits(store)?;
        self.changed = true;
        self.dirty = true;
        if let State::Clean { .. } = self.state {
            self.stage_committed(store)?;
        }
        match &mut self.state {
            State::Buffering(buf) if (offset as usize).saturating_add(data.len()) <= MEMORY_LIMIT_BYTES => {
                let (start, end) = (offset as usize, offset as usize + data.len());
                if buf.bytes.len() < end {
                    buf.bytes.resize(end, 0);
                }
                buf.bytes[start..end].copy_from_slice(data);
                if start == buf.in_order {
                    buf.in_order = end;
                }
                if is_safetensors_name(&self.target.entry.name) {
                    self.try_start_stream(store)?;
                }
                return Ok(data.len());
            }
            State::Buffering(_) => {
                self.spill_to_staging()?;
            }
            State::Streaming(s) if offset == s.writer.written() => {
                if s.writer.written() + data.len() as u64 > s.size {
                    return Err(CoreError::PastDeclaredSize {
                        name: self.target.entry.name.clone(),
                        size: s.size,
                    }
                    .into());
                }
                s.writer.write(data)?;
                return Ok(data.len());
            }
            State::Streaming(s) => {
                return Err(CoreError::StreamOutOfOrder {
                    name: self.target.entry.name.clone(),
                    offset,
                    written: s.writer.written(),
                }
                .into());
            }
            _ => {}
        }
        match &mut self.state {
            State::Staging(f) => {
                f.write_at(offset, data)?;
                Ok(data.len())
            }
            _ => Err(CoreError::UnexpectedWriterState {
                name: self.name().to_string(),
            }
            .into()),
        }
    }

    /// Copies the committed version into a staging file, for changes to an
    /// existing file opened without `O_TRUNC`.
    fn stage_committed(&mut self, store: &dyn Store) -> Result<()> {
        let mut f = self.staging.create(&self.target.entry.name)?;
        let file = open_committed(store, &self.target.entry)?;
        let mut buf = vec![0u8; registry::transfer::COPY_CHUNK_BYTES.min(file.size().max(1) as usize)];
        let mut offset = 0;
        while offset < file.size() {
            let n = file.read_at(offset, &mut buf)?;
            f.write_at(offset, &buf[..n])?;
            offset += n as u64;
        }
        self.state = State::Staging(f);
        Ok(())
    }

    fn spill_to_staging(&mut self) -> Result<()> {
        let mut f = self.staging.create(&self.target.entry.name)?;
        if let State::Buffering(buf) = &self.state {
            f.write_at(0, &buf.bytes)?;
        }
        self.state = State::Staging(f);
        Ok(())
    }

    /// Once a buffered `.safetensors` header is complete, validates it and
    /// starts streaming the file into TileDB.
    fn try_start_stream(&mut self, store: &dyn Store) -> Result<()> {
        let (size, index) = match self.complete_header() {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(()),
            Err(e) => {
                // An invalid file is refused at close (EINVAL from close());
                // until then its bytes are taken like any other file's.
                log::debug!("{}: not streamed: {e}", self.name());
                if let State::Buffering(buf) = &mut self.state {
                    buf.no_stream = true;
                }
                return Ok(());
            }
        };
        let mut writer = self.begin_version(store, size)?;
        if let State::Buffering(buf) = &self.state {
            writer.write(&buf.bytes)?;
        }
        self.state = State::Streaming(Box::new(Stream {
            writer,
            kind: FileKind::Safetensors(index),
            size,
        }));
        Ok(())
    }

    /// The declared size and the index of a buffered `.safetensors` file once
    /// its header is complete; `None` before that.
    fn complete_header(&self) -> Result<Option<(u64, safetensors_index::TensorIndex)>> {
        let State::Buffering(buf) = &self.state else {
            return Ok(None);
        };
        // Only a file written in order from 0, with nothing past that, can
        // stream; anything else stays in memory or is staged.
        if buf.no_stream || buf.in_order < 8 || buf.bytes.len() != buf.in_order {
            return Ok(None);
        }
        let n = header_len(&buf.bytes[..8], u64::MAX).map_err(|p| self.invalid(p))?;
        if (buf.in_order as u64) < 8 + n {
            return Ok(None);
        }
        let index = safetensors_index::index_header(&buf.bytes[8..8 + n as usize]).map_err(|p| self.invalid(p))?;
        Ok(Some((index.file_size(), index)))
    }

    /// Starts a version of `size` bytes; of a new file, makes its array
    /// first.
    fn begin_version(&mut self, store: &dyn Store, size: u64) -> Result<Box<dyn VersionWriter>> {
        if self.target.exists {
            let e = &self.target.entry;
            return Ok(store.begin_version(&e.uri, &e.name, size)?);
        }
        let e = store.create_file(&self.target.entry.name, &self.target.entry.uri)?;
        let writer = store.begin_first_version(&e.uri, &e.name, size);
        self.target.entry = e;
        Ok(writer?)
    }

    /// Sets the size to `size`, cutting or zero-extending.
    pub fn truncate(&mut self, store: &dyn Store, size: u64) -> Result<()> {
        self.check()?;
        self.follow_other_commits(store)?;
        self.changed = true;
        if size == self.size() && !matches!(self.state, State::Clean { .. }) {
            return Ok(());
        }
        let r = (|| {
            self.dirty = true;
            match &mut self.state {
                State::Buffering(buf) if size <= MEMORY_LIMIT_BYTES as u64 => {
                    buf.bytes.resize(size as usize, 0);
                    buf.in_order = buf.in_order.min(size as usize);
                    return Ok(());
                }
                State::Clean { .. } if size == 0 => {
                    self.state = State::Buffering(Buffer::default());
                    return Ok(());
                }
                State::Clean { .. } => self.stage_committed(store)?,
                State::Buffering(_) => self.spill_to_staging()?,
                State::Streaming(_) => {
                    return Err(CoreError::StreamTruncate {
                        name: self.name().to_string(),
                    }
                    .into());
                }
                _ => {}
            }
            match &mut self.state {
                State::Staging(f) => f.set_size(size),
                _ => Ok(()),
            }
        })();
        r.map_err(|e| self.fail(e))
    }

    /// Whether an error stopped it (every later call returns it).
    pub fn has_failed(&self) -> bool {
        matches!(self.state, State::Failed { .. })
    }

    /// Whether the bytes are streaming into storage.
    pub fn is_streaming(&self) -> bool {
        matches!(self.state, State::Streaming(_))
    }

    /// Whether the bytes written so far are here to read back (in memory
    /// or staged), not only in storage.
    pub fn holds_bytes(&self) -> bool {
        matches!(self.state, State::Buffering(_) | State::Staging(_))
    }

    /// Whether readers must read the file through this writer: it holds
    /// the bytes, or has just committed them and the file's node does not
    /// show that version yet (the node still names the one before).
    pub fn serves_reads(&self) -> bool {
        self.holds_bytes() || (self.unsettled.is_some() && !matches!(self.state, State::Streaming(_)))
    }

    /// The file's node now shows the version committed at `timestamp`.
    pub fn settle(&mut self, timestamp: u64) {
        if self.unsettled == Some(timestamp) {
            self.unsettled = None;
        }
    }

    /// Reads back what this handle wrote (for files open read-write).
    pub fn read(&self, store: &dyn Store, offset: u64, len: u32) -> Result<Vec<u8>> {
        self.check()?;
        match &self.state {
            State::Buffering(buf) => {
                let start = (offset as usize).min(buf.bytes.len());
                let end = start.saturating_add(len as usize).min(buf.bytes.len());
                Ok(buf.bytes[start..end].to_vec())
            }
            State::Staging(f) => f.read_at(offset, len),
            State::Clean { .. } => {
                let file = open_committed(store, &self.target.entry)?;
                let mut buf = vec![0u8; len as usize];
                let n = file.read_at(offset, &mut buf)?;
                buf.truncate(n);
                Ok(buf)
            }
            State::Streaming(_) => Err(CoreError::StreamReadBack {
                name: self.name().to_string(),
            }
            .into()),
            State::Failed { .. } => Ok(Vec::new()),
        }
    }

    /// Changed since the last commit, and not failed (a failed writer has
    /// already reported its error and commits nothing).
    pub fn needs_commit(&self) -> bool {
        self.dirty && !self.discarded && !matches!(self.state, State::Failed { .. })
    }

    /// Commits what was written as a new version (nothing when clean), and
    /// links a new file into its directory. Returns what the commit made
    /// when one was written.
    pub fn commit(&mut self, store: &dyn Store) -> Result<Option<Committed>> {
        self.check()?;
        if !self.dirty || self.discarded {
            return Ok(None);
        }
        // A refused file keeps its bytes and may still be completed: shells
        // close the descriptor they opened before writing through its copy
        // (`cmd > x.safetensors`), and the close that counts comes last.
        let kind = self.validate().inspect_err(|e| {
            warn!("commit of {} refused: {e}", self.target.entry.name);
        })?;
        let r = self.commit_inner(store, kind);
        match r {
            Ok(c) => {
                self.dirty = false;
                self.unsettled = Some(c.timestamp);
                Ok(Some(c))
            }
            Err(e) => {
                warn!(
                    "commit of {} ({}) failed: {e}",
                    self.target.entry.name, self.target.entry.uri
                );
                Err(self.fail(e))
            }
        }
    }

    /// What the bytes written so far would commit as: EINVAL for a
    /// `.safetensors` file that is not (yet) valid. Changes nothing.
    fn validate(&self) -> Result<FileKind> {
        match &self.state {
            State::Streaming(s) if s.writer.written() != s.size => {
                Err(self.invalid(registry::SafetensorsProblem::SizeMismatch {
                    data_end: s.size,
                    size: s.writer.written(),
                }))
            }
            State::Streaming(s) => Ok(s.kind.clone()),
            State::Buffering(buf) => self.kind_of_bytes(&buf.bytes),
            State::Staging(f) if is_safetensors_name(self.name()) => {
                let size = f.size();
                let first8 = f.read_at(0, 8)?;
                let n = header_len(&first8, size).map_err(|p| self.invalid(p))?;
                let header = f.read_at(8, n as u32)?;
                let index = safetensors_index::validate(&header, size).map_err(|p| self.invalid(p))?;
                Ok(FileKind::Safetensors(index))
            }
            _ => Ok(FileKind::Plain),
        }
    }

    fn commit_inner(&mut self, store: &dyn Store, kind: FileKind) -> Result<Committed> {
        let was_new = !self.target.exists;
        let state = std::mem::replace(&mut self.state, State::Clean { size: 0 });
        let mut attrs = self.attrs;
        if let Some(created) = self.created_ns.filter(|_| !self.changed) {
            attrs.mtime_ns = attrs.mtime_ns.or(Some(created));
            attrs.ctime_ns = Some(created);
        }
        let (committed, size) = match state {
            State::Streaming(mut s) => {
                s.writer.set_attrs(attrs);
                (s.writer.commit(&s.kind)?, s.size)
            }
            State::Buffering(buf) => {
                let mut w = self.begin_version(store, buf.bytes.len() as u64)?;
                w.set_attrs(attrs);
                w.write(&buf.bytes)?;
                (w.commit(&kind)?, buf.bytes.len() as u64)
            }
            State::Staging(f) => {
                let size = f.size();
                let mut w = self.begin_version(store, size)?;
                w.set_attrs(attrs);
                let mut offset = 0;
                while offset < size {
                    let chunk = f.read_at(offset, registry::transfer::COPY_CHUNK_BYTES as u32)?;
                    if chunk.is_empty() {
                        break;
                    }
                    w.write(&chunk)?;
                    offset += chunk.len() as u64;
                }
                let committed = w.commit(&kind)?;
                // Kept, so later writes through this handle go on from here.
                self.state = State::Staging(f);
                (committed, size)
            }
            State::Clean { .. } => {
                return Ok(Committed {
                    timestamp: self.committed_ts.unwrap_or(0),
                    meta: None,
                });
            }
            State::Failed { errno, message } => return Err(CoreError::FailedEarlier { errno, message }.into()),
        };
        if was_new {
            match self.replaces.take() {
                Some(old) => {
                    store.replace_member(&self.target.dir, &old, &self.target.entry)?;
                    if let Err(e) = store.retire(&self.target.dir, &old) {
                        warn!("{}: deleting the replaced file's storage failed: {e}", old.uri);
                    }
                }
                None => store.link(&self.target.dir, &self.target.entry)?,
            }
            self.target.exists = true;
        }
        if let State::Clean { size: s } = &mut self.state {
            *s = size;
        }
        // Stored now; times set later apply to later versions only.
        self.attrs = Attrs::default();
        self.committed_ts = Some(committed.timestamp);
        self.created_ns = None;
        info!(
            "committed {} ({size} bytes, version {})",
            self.target.entry.uri, committed.timestamp
        );
        Ok(committed)
    }

    fn invalid(&self, problem: registry::SafetensorsProblem) -> Error {
        registry::Error::InvalidSafetensors {
            name: self.target.entry.name.clone(),
            problem,
        }
        .into()
    }

    fn kind_of_bytes(&self, buf: &[u8]) -> Result<FileKind> {
        if is_safetensors_name(self.name()) {
            let index = safetensors_index::validate_bytes(buf).map_err(|p| self.invalid(p))?;
            Ok(FileKind::Safetensors(index))
        } else {
            Ok(FileKind::Plain)
        }
    }
}
