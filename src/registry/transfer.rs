//! `import` and `export`: copying local files and directory trees into the
//! registry and back, byte for byte, with bounded memory. A TileDB-ML model
//! array exports as a folder of the files it shows (`metadata.json`,
//! `model.safetensors`, ...); a field that shows no files is reported once
//! the rest is written.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use log::{info, warn};

use super::error::{Error, Result};
use super::file_array::{FileArray, FileKind, FileWriter};
use super::names::invalid_name_reason;
use super::safetensors_index;
use super::tiledb_ml::{FieldError, TileDbMlModel, ViewEntry, ViewFile};
use super::tree::{Entry, Node, Registry};
use super::uri::split_parent;

/// Bytes moved per read or write call: large enough to keep TileDB busy,
/// small enough to bound memory (one chunk per file in flight).
pub const COPY_CHUNK_BYTES: usize = 8 << 20;

/// Told about each file as it is copied.
pub trait Progress {
    /// A file of `size` bytes starts.
    fn start(&mut self, name: &str, size: u64);
    /// `bytes` more were copied.
    fn advance(&mut self, bytes: u64);
    /// The file is done.
    fn finish(&mut self);
}

/// A [`Progress`] that reports nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn start(&mut self, _: &str, _: u64) {}
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

/// Totals of one import or export.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| Error::InvalidName {
            name: path.display().to_string(),
            reason: "no UTF-8 file name",
        })
}

/// Validates a local `.safetensors` file, reading only its header.
pub fn validate_safetensors_file(path: &Path) -> Result<FileKind> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let size = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let invalid = |problem| Error::InvalidSafetensors {
        name: path.display().to_string(),
        problem,
    };
    let mut first8 = [0u8; 8];
    let got = read_full(&mut f, &mut first8).map_err(|e| Error::io(path, e))?;
    let len = safetensors_index::header_len(&first8[..got], size).map_err(invalid)?;
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    let index = safetensors_index::validate(&header, size).map_err(invalid)?;
    Ok(FileKind::Safetensors(index))
}

fn read_full(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Whether a file of this name is validated and indexed as safetensors.
pub fn is_safetensors_name(name: &str) -> bool {
    name.to_ascii_lowercase().ends_with(".safetensors")
}

/// Imports each of `sources` into the registry. With one source, `dest` is
/// the new entry's URI; with several, `dest` is a directory (created when
/// missing) that receives each source under its own name. An existing entry
/// is refused unless `force`, which writes new versions of its files.
pub fn import(
    reg: &Registry,
    sources: &[PathBuf],
    dest: &str,
    force: bool,
    progress: &mut dyn Progress,
) -> Result<Totals> {
    let mut totals = Totals::default();
    if let [source] = sources {
        let (parent_uri, name) = split_parent(dest).ok_or_else(|| Error::InvalidName {
            name: dest.to_string(),
            reason: "a registry root cannot be the target of a single import",
        })?;
        let parent = reg.ensure_dir(&parent_uri)?;
        import_path(reg, source, &parent, &name, force, progress, &mut totals)?;
    } else {
        let dir = reg.ensure_dir(dest)?;
        for source in sources {
            let name = file_name(source)?;
            import_path(reg, source, &dir, &name, force, progress, &mut totals)?;
        }
    }
    Ok(totals)
}

fn import_path(
    reg: &Registry,
    source: &Path,
    dir: &Entry,
    name: &str,
    force: bool,
    progress: &mut dyn Progress,
    totals: &mut Totals,
) -> Result<()> {
    // Follows symlinks, as model caches link snapshots to blobs.
    let meta = std::fs::metadata(source).map_err(|e| Error::io(source, e))?;
    if meta.is_dir() {
        import_dir(reg, source, dir, name, force, progress, totals)
    } else if meta.is_file() {
        import_file(reg, source, dir, name, force, progress)?;
        totals.files += 1;
        totals.bytes += meta.len();
        Ok(())
    } else {
        warn!("{}: not a regular file or directory; skipped", source.display());
        Ok(())
    }
}

fn import_dir(
    reg: &Registry,
    source: &Path,
    parent: &Entry,
    name: &str,
    force: bool,
    progress: &mut dyn Progress,
    totals: &mut Totals,
) -> Result<()> {
    let dir = match reg.lookup(parent, name)? {
        Some(e) if !force => return Err(Error::AlreadyExists { uri: e.uri }),
        Some(e) if e.is_dir() => e,
        Some(e) => return Err(Error::NotADirectory { uri: e.uri }),
        None => reg.mkdir(parent, name, &crate::registry::Attrs::default())?,
    };
    totals.dirs += 1;
    let mut children: Vec<PathBuf> = std::fs::read_dir(source)
        .map_err(|e| Error::io(source, e))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::io(source, e))?;
    children.sort();
    for child in children {
        let child_name = file_name(&child)?;
        import_path(reg, &child, &dir, &child_name, force, progress, totals)?;
    }
    Ok(())
}

/// Imports one local file as entry `name` of `dir`: a new file array, or a
/// new version of an existing one with `force`. Leaves nothing behind on
/// failure.
pub fn import_file(
    reg: &Registry,
    source: &Path,
    dir: &Entry,
    name: &str,
    force: bool,
    progress: &mut dyn Progress,
) -> Result<u64> {
    let kind = if is_safetensors_name(name) {
        validate_safetensors_file(source)?
    } else {
        FileKind::Plain
    };
    let existing = reg.lookup(dir, name)?;
    let (entry, is_new) = match existing {
        Some(e) if !force => return Err(Error::AlreadyExists { uri: e.uri }),
        Some(e) if e.is_dir() => return Err(Error::IsADirectory { uri: e.uri }),
        Some(e) => (e, false),
        None => (reg.create_file(dir, name)?, true),
    };
    let result = write_version(reg, source, &entry, name, &kind, is_new, progress);
    match result {
        Ok(ts) => {
            if is_new && let Err(e) = reg.link(dir, &entry) {
                let _ = crate::tiledb::object_remove(reg.context(), &entry.uri);
                return Err(e);
            }
            info!(
                "imported {} as {} ({} version {ts})",
                source.display(),
                entry.uri,
                kind.name()
            );
            Ok(ts)
        }
        Err(e) => {
            if is_new && let Err(e2) = crate::tiledb::object_remove(reg.context(), &entry.uri) {
                warn!("{}: could not remove the unfinished array: {e2}", entry.uri);
            }
            Err(e)
        }
    }
}

fn write_version(
    reg: &Registry,
    source: &Path,
    entry: &Entry,
    name: &str,
    kind: &FileKind,
    first: bool,
    progress: &mut dyn Progress,
) -> Result<u64> {
    let mut f = File::open(source).map_err(|e| Error::io(source, e))?;
    let size = f.metadata().map_err(|e| Error::io(source, e))?.len();
    let mut writer = if first {
        FileWriter::begin_first(reg.context(), &entry.uri, name, size)?
    } else {
        FileWriter::begin(reg.context(), &entry.uri, name, size)?
    };
    progress.start(name, size);
    let mut buf = vec![0u8; COPY_CHUNK_BYTES.min(size.max(1) as usize)];
    loop {
        let n = read_full(&mut f, &mut buf).map_err(|e| Error::io(source, e))?;
        if n == 0 {
            break;
        }
        writer.write(&buf[..n])?;
        progress.advance(n as u64);
    }
    let ts = writer.commit(kind)?.timestamp;
    progress.finish();
    Ok(ts)
}

/// Exports the file or directory at `source` (a registry URI) to the local
/// path `dest`, byte for byte. An existing `dest` is refused unless `force`.
/// A TileDB-ML model array becomes a folder of the files it shows.
///
/// # Errors
/// The first failure that stops the export; or, after every other file was
/// written, [`Error::ExportIncomplete`] listing the TileDB-ML fields that
/// show no files (such as a pickle calling a forbidden global).
pub fn export(reg: &Registry, source: &str, dest: &Path, force: bool, progress: &mut dyn Progress) -> Result<Totals> {
    let entry = reg.resolve(source)?.ok_or_else(|| Error::NotFound {
        uri: source.to_string(),
    })?;
    let mut totals = Totals::default();
    let mut failures = Vec::new();
    export_entry(reg, &entry, dest, force, progress, &mut totals, &mut failures)?;
    if !failures.is_empty() {
        return Err(Error::ExportIncomplete { failures });
    }
    Ok(totals)
}

/// Makes `dest` a directory to export into: created when missing, refused
/// when it exists unless `force`.
fn prepare_dir(dest: &Path, force: bool) -> Result<()> {
    match std::fs::symlink_metadata(dest) {
        Ok(m) if !m.is_dir() => Err(Error::io(dest, std::io::ErrorKind::AlreadyExists.into())),
        Ok(_) if !force => Err(Error::AlreadyExists {
            uri: dest.display().to_string(),
        }),
        Ok(_) => Ok(()),
        Err(_) => std::fs::create_dir_all(dest).map_err(|e| Error::io(dest, e)),
    }
}

fn export_entry(
    reg: &Registry,
    entry: &Entry,
    dest: &Path,
    force: bool,
    progress: &mut dyn Progress,
    totals: &mut Totals,
    failures: &mut Vec<FieldError>,
) -> Result<()> {
    match reg.node(entry)? {
        Node::Dir(_) => {
            prepare_dir(dest, force)?;
            totals.dirs += 1;
            for child in reg.list(entry)? {
                export_entry(reg, &child, &dest.join(&child.name), force, progress, totals, failures)?;
            }
            Ok(())
        }
        Node::File(meta) => {
            // Devices and pipes (`/dev/null`, `/dev/stdout`) are written in
            // place; an existing regular file is replaced only with `force`.
            let special = std::fs::metadata(dest).is_ok_and(|m| !m.is_file() && !m.is_dir());
            if dest.exists() && !special && !force {
                return Err(Error::AlreadyExists {
                    uri: dest.display().to_string(),
                });
            }
            let file = FileArray::open_version(reg.context(), &entry.uri, meta)?;
            export_file(&file, &entry.name, dest, progress)?;
            totals.files += 1;
            totals.bytes += file.size();
            Ok(())
        }
        Node::TileDbMl { .. } => {
            let model = TileDbMlModel::open(reg.context(), &entry.uri)?;
            export_model(&model, dest, force, progress, totals, failures)
        }
        Node::Other { reason } => {
            warn!("{}: not a modelfs file array ({reason}); skipped", entry.uri);
            Ok(())
        }
    }
}

/// Writes the files `model` shows into the folder `dest`; a field that shows
/// no files is added to `failures` and the rest carries on.
fn export_model(
    model: &TileDbMlModel,
    dest: &Path,
    force: bool,
    progress: &mut dyn Progress,
    totals: &mut Totals,
    failures: &mut Vec<FieldError>,
) -> Result<()> {
    prepare_dir(dest, force)?;
    totals.dirs += 1;
    for (path, entry) in model.entries() {
        let file = match entry {
            ViewEntry::Ready(file) => file,
            ViewEntry::Failed(e) => {
                failures.push(e.clone());
                continue;
            }
        };
        let mut target = dest.to_path_buf();
        for part in path.split('/') {
            if let Some(reason) = invalid_name_reason(part) {
                return Err(Error::InvalidName {
                    name: path.clone(),
                    reason,
                });
            }
            target.push(part);
        }
        if let Some(parent) = target.parent()
            && parent != dest
        {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        if target.exists() && !force {
            return Err(Error::AlreadyExists {
                uri: target.display().to_string(),
            });
        }
        write_file(&target, path, file.len(), progress, |out, at, progress| {
            copy_view_out(file, out, at, progress)
        })?;
        totals.files += 1;
        totals.bytes += file.len();
    }
    Ok(())
}

/// Writes `file` to `dest`; see [`write_file`].
fn export_file(file: &FileArray, name: &str, dest: &Path, progress: &mut dyn Progress) -> Result<()> {
    write_file(dest, name, file.size(), progress, |out, at, progress| {
        copy_out(file, out, at, progress)
    })
}

/// Writes `size` bytes, produced by `fill`, to `dest` through a temporary
/// file renamed into place, so `dest` never holds a partial copy; a device
/// or pipe is written directly.
fn write_file(
    dest: &Path,
    name: &str,
    size: u64,
    progress: &mut dyn Progress,
    fill: impl FnOnce(&mut File, &Path, &mut dyn Progress) -> Result<()>,
) -> Result<()> {
    if std::fs::metadata(dest).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .open(dest)
            .map_err(|e| Error::io(dest, e))?;
        progress.start(name, size);
        fill(&mut out, dest, progress)?;
        progress.finish();
        return Ok(());
    }
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
    progress.start(name, size);
    let tmp_path = tmp.path().to_path_buf();
    fill(tmp.as_file_mut(), &tmp_path, progress)?;
    tmp.as_file().sync_all().map_err(|e| Error::io(tmp.path(), e))?;
    // Plain files get the usual mode, not the temporary file's 0600.
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(|e| Error::io(tmp.path(), e))?;
    tmp.persist(dest).map_err(|e| Error::io(dest, e.error))?;
    progress.finish();
    Ok(())
}

/// Copies all of the view `file` into `out`, a chunk at a time.
fn copy_view_out(file: &ViewFile, out: &mut impl Write, path: &Path, progress: &mut dyn Progress) -> Result<()> {
    let chunk = usize::try_from(file.len().clamp(1, COPY_CHUNK_BYTES as u64)).unwrap_or(COPY_CHUNK_BYTES);
    let mut buf = vec![0u8; chunk];
    let mut offset = 0u64;
    while offset < file.len() {
        let n = file.read_at(offset, &mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(|e| Error::io(path, e))?;
        offset += n as u64;
        progress.advance(n as u64);
    }
    Ok(())
}

/// Copies all of `file` into `out`, a chunk at a time.
fn copy_out(file: &FileArray, out: &mut impl Write, path: &Path, progress: &mut dyn Progress) -> Result<()> {
    let mut buf = vec![0u8; COPY_CHUNK_BYTES.min(file.size().max(1) as usize)];
    let mut offset = 0u64;
    while offset < file.size() {
        let n = file.read_at(offset, &mut buf)?;
        out.write_all(&buf[..n]).map_err(|e| Error::io(path, e))?;
        offset += n as u64;
        progress.advance(n as u64);
    }
    Ok(())
}
