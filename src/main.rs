//! The `modelfs` command line: a thin layer over the library that parses
//! arguments, reports progress and prints `modelfs: <cause chain>` once on
//! failure.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use modelfs::registry::tiledb_ml::{TileDbMlModel, ViewEntry};
use modelfs::registry::{self, Entry, Node, Registry, transfer};
use modelfs::tiledb::{self, Context};

/// Files at least this large get a progress bar on a terminal.
const PROGRESS_MIN_BYTES: u64 = 16 << 20;

#[derive(Parser)]
#[command(
    name = "modelfs",
    version,
    about = "A registry of machine-learning models stored in TileDB arrays, shown as ordinary files",
    long_about = "modelfs keeps models in TileDB arrays (on a local disk or any object store TileDB \
                  reaches) and shows them as ordinary files. URIs are local paths or any TileDB URI \
                  (s3://bucket/prefix, azure://..., gcs://...).\n\nSet RUST_LOG=info (or debug) for \
                  more detail on stderr."
)]
struct Cli {
    /// Set a TileDB configuration parameter (repeatable), e.g.
    /// `--tiledb-config vfs.s3.region=eu-west-1` or
    /// `--tiledb-config sm.memory_budget=1073741824`.
    #[arg(long = "tiledb-config", value_name = "KEY=VALUE", global = true)]
    tiledb_config: Vec<String>,
    /// Read TileDB configuration parameters from a file: one `KEY VALUE` or
    /// `KEY=VALUE` per line, `#` starts a comment. `--tiledb-config` wins.
    #[arg(long = "tiledb-config-file", value_name = "PATH", global = true)]
    tiledb_config_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Copy local files or directory trees into the registry.
    ///
    /// With one SRC, DEST is the URI of the new entry (`modelfs import ./bert
    /// s3://team/registry/bert`). With several, DEST is a directory, created
    /// when missing, that receives each SRC under its own name. Missing
    /// parent directories are created as TileDB groups. `.safetensors` files
    /// are validated first; an invalid one is refused and nothing of it is
    /// written. Symbolic links are followed.
    Import {
        /// Local files or directories to copy.
        #[arg(required = true, num_args = 1..)]
        src: Vec<PathBuf>,
        /// Registry URI of the new entry (one SRC) or of the directory receiving them (several).
        dest: String,
        /// Write a new version of files that already exist (older versions stay readable by timestamp).
        #[arg(long)]
        force: bool,
        /// Print nothing but errors.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Copy a file or directory out of the registry, byte for byte.
    ///
    /// DEST is the local path to create. Files are written to a temporary
    /// name and renamed into place, so DEST never holds a partial copy. A
    /// TileDB-ML model array becomes a folder of the pickle-free files it
    /// shows (metadata.json, model.safetensors, ...); a field that cannot be
    /// shown (say, a pickle calling a forbidden global) is reported after
    /// everything else is written, with a non-zero exit.
    Export {
        /// Registry URI of a file or directory.
        src: String,
        /// Local path to create.
        dest: PathBuf,
        /// Overwrite files that already exist at DEST.
        #[arg(long)]
        force: bool,
        /// Print nothing but errors.
        #[arg(short, long)]
        quiet: bool,
    },
    /// List a directory of the registry.
    Ls {
        /// Registry URI of a directory (or a file, to list just it).
        uri: String,
        /// Long format: kind, size in bytes, version time (UTC) and name.
        #[arg(short, long)]
        long: bool,
    },
    /// Mount a registry as a directory tree.
    ///
    /// Files are read from TileDB on demand, through a chunk cache shared by
    /// all open files, with read-ahead for sequential readers. Files written
    /// are committed to TileDB as a new version when closed (or fsync'd);
    /// `.safetensors` files are validated then. Without
    /// --foreground the command returns once the mount is up (or fails with
    /// the reason and a non-zero exit). SIGINT or SIGTERM unmount. The root
    /// holds a hidden file `.modelfs-stats` with the mount's counters (JSON),
    /// and every directory a hidden, read-only `.versions/<file>/` listing
    /// each version of its files by commit time, and their tags.
    Mount {
        /// Registry URI: a directory (TileDB group or plain directory) holding models.
        registry: String,
        /// An existing, empty directory.
        mountpoint: PathBuf,
        /// Refuse every change (EROFS).
        #[arg(long)]
        read_only: bool,
        /// Stay in the foreground and log to stderr.
        #[arg(short, long)]
        foreground: bool,
        /// Threads serving FUSE requests.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
        threads: u16,
        /// Memory for file data (e.g. 512M, 2G): the chunk cache shared by
        /// all open files and the read-ahead queries in flight, which take
        /// at most half of it [default: 112M, or 384M for a registry on an
        /// object store].
        #[arg(long, value_parser = parse_size)]
        cache_size: Option<u64>,
        /// Most bytes read ahead of one sequential reader, at most half the
        /// chunk cache, at least one chunk [default: 32M, or 96M for a
        /// registry on an object store, or half the chunk cache if less].
        #[arg(long, value_parser = parse_size)]
        read_ahead: Option<u64>,
        /// How long attributes and listings are trusted before the registry
        /// is asked again, in seconds (also the kernel's attribute and entry
        /// cache time). Changes made by other writers show after this.
        #[arg(long, default_value_t = 1.0, value_parser = parse_seconds)]
        metadata_ttl: f64,
        /// Most directory members kept in memory over all directories, so
        /// that a change or a name check in a large directory does not read
        /// its whole member list again (about 100 bytes each; 0 keeps none).
        #[arg(long, default_value_t = modelfs::registry::DEFAULT_LISTING_CACHE_ENTRIES)]
        listing_cache_entries: usize,
        /// Subdirectories read ahead, 16 at a time, of a program that stats
        /// a directory's entries one after another (`ls -l`); 0 reads none
        /// ahead.
        #[arg(long, default_value_t = 64)]
        stat_ahead: usize,
        /// A directory whose listing holds this many subdirectories or more
        /// is first read whole for their stats when a program stats its
        /// entries one after another: one listing of all its files (one
        /// request per 1,000 on an object store) tells the stats kept from
        /// earlier listings; 0 never [default: 16 for a registry on an
        /// object store, 0 for a local one].
        #[arg(long)]
        stat_whole_from: Option<usize>,
        /// Let other users see the mount (needs user_allow_other in /etc/fuse.conf for non-root).
        #[arg(long)]
        allow_other: bool,
        /// Directory for staging files written out of order (default: a
        /// `modelfs-staging` directory under $TMPDIR or /tmp).
        #[arg(long)]
        staging_dir: Option<PathBuf>,
        /// Most bytes staged at once over all files being written; past it
        /// writes fail with ENOSPC.
        #[arg(long, default_value = "64G", value_parser = parse_size)]
        staging_limit: u64,
        /// Most bytes the TileDB-ML views of all decoded models may
        /// materialise (strided or byte-swapped tensors, JSON, headers; each
        /// reference to a shared object counted). Past it the view reads as
        /// EIO with a log line naming the array, the field and the limit.
        #[arg(long, default_value = "2G", value_parser = parse_size)]
        view_memory: u64,
        /// Append the log to this file. Without it a background mount logs to
        /// stderr only until the mount is up.
        #[arg(long)]
        log_file: Option<PathBuf>,
        /// Keep whole file versions in this directory, across remounts and
        /// shared by the user's mounts on this host (default: `modelfs`
        /// under the user's cache directory, used for object-store
        /// registries; local registries use it only when this is given).
        /// Versions complete in it are read from local disk, through FUSE
        /// passthrough when the kernel allows it.
        #[arg(long, conflicts_with = "no_disk_cache")]
        disk_cache: Option<PathBuf>,
        /// Most bytes the disk cache keeps, over all mounts sharing it;
        /// least recently used versions are evicted first.
        #[arg(long, default_value = "32G", value_parser = parse_size)]
        disk_cache_size: u64,
        /// No disk cache (and so no passthrough).
        #[arg(long)]
        no_disk_cache: bool,
        /// Serve reads of cached versions through the daemon instead of
        /// FUSE passthrough.
        #[arg(long)]
        no_passthrough: bool,
        /// Mount a read-only snapshot: the whole registry as it was at TIME
        /// (ISO 8601 like 2026-12-01T21:28:59.119Z, as `modelfs log`
        /// prints it; `2026-12-01` is midnight UTC; `ms:<milliseconds>`), or
        /// at the version a tag names (searched in every file's tags).
        #[arg(long, value_name = "TIME|TAG")]
        at: Option<String>,
    },
    /// Unmount a modelfs mount.
    ///
    /// Fails with "busy" while files in it are open, unless --lazy, which
    /// detaches the mount at once; the daemon then exits when the last open
    /// file is closed.
    Unmount {
        mountpoint: PathBuf,
        /// Detach now even if files are open.
        #[arg(long)]
        lazy: bool,
    },
    /// List the versions of a file, or of every file under a directory.
    ///
    /// One line per version, oldest first: its time (the name it has under
    /// `.versions/` in a mount, and what `--at` takes), size, kind and tags;
    /// for safetensors files, the tensors it added (+), removed (-) and
    /// changed (~: dtype, shape or values) against the version before.
    Log {
        /// Registry URI of a file or directory.
        uri: String,
        /// Compare tensors by dtype and shape only, not by their bytes.
        #[arg(long)]
        quick: bool,
    },
    /// Name a version of a file (the current one, or the one current at
    /// --at), or delete a name with --delete.
    ///
    /// Tags are stored in the file's metadata in the registry: every mount
    /// shows them within its --metadata-ttl, as files under
    /// `.versions/<file>/` beside the version times, and `mount --at TAG`
    /// mounts the registry as of the tagged version. Pruning keeps tagged
    /// versions.
    Tag {
        /// Registry URI of a file.
        uri: String,
        /// The tag, e.g. `production` or `v1.2` (not a time, no `/`, not
        /// starting with `.`).
        name: String,
        /// Tag the version current at this time (or the version this tag or
        /// version time names) instead of the current one.
        #[arg(long, value_name = "TIME|TAG", conflicts_with = "delete")]
        at: Option<String>,
        /// Delete the tag.
        #[arg(long)]
        delete: bool,
    },
    /// Free the storage of old versions of a file, or of every file under a
    /// directory.
    ///
    /// Keeps the current version always, the newest N with --keep N, those
    /// younger than DURATION with --older-than DURATION (with both, a
    /// version either keeps is kept), and every tagged version unless its
    /// tags are named with --untag. Under a directory, also frees files and
    /// directories deleted through a mount (kept for snapshot mounts) that
    /// were deleted before DURATION ago (all of them with --keep alone).
    /// Prints each version pruned, each deleted entry freed and the bytes
    /// freed. Reading a pruned version through a mount gives EIO.
    Prune {
        /// Registry URI of a file or directory.
        uri: String,
        /// Keep the newest N versions.
        #[arg(long, value_name = "N")]
        keep: Option<usize>,
        /// Prune versions older than this (90s, 12h, 7d, 2w, 1d12h).
        #[arg(long, value_name = "DURATION")]
        older_than: Option<String>,
        /// Let versions with this tag be pruned too, deleting the tag
        /// (repeatable).
        #[arg(long, value_name = "TAG")]
        untag: Vec<String>,
    },
    /// Describe a file, directory or any TileDB array.
    ///
    /// For a file: its size, kind, version timestamp and, for safetensors,
    /// the tensor table. For a TileDB-ML model array: its framework, fields
    /// and the files it shows, with their tensor tables. For any array: its
    /// schema, fragments and metadata.
    Info {
        /// Registry URI, or the URI of any TileDB array or group.
        uri: String,
    },
    /// Shrink directories' own storage: the member list and metadata files.
    ///
    /// TileDB writes a directory's whole member list at every change, and an
    /// open reads each list not yet retired, so a directory changed N times
    /// by another tool opens ever slower and holds N lists. This writes each
    /// directory's list once, merges its metadata files, waits GRACE for
    /// readers that listed the old files just before, and deletes them.
    /// Mounts do the same as they go. Safe beside mounts and readers: the
    /// entries shown never change.
    Compact {
        /// Registry URI of a directory.
        uri: String,
        /// Every directory below too.
        #[arg(short, long)]
        recursive: bool,
        /// Seconds to wait before deleting the replaced files.
        #[arg(long, default_value_t = 5.0, value_parser = parse_seconds)]
        grace: f64,
    },
}

/// `println!` that returns an error instead of panicking when stdout is
/// closed (`modelfs info ... | head`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?
    }};
}

mod mount;
mod versions_cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // fuser warns when unmounting a mount that is already gone; that is routine here.
    let default_level = if matches!(cli.command, Command::Mount { .. }) {
        "info,fuser=error"
    } else {
        "warn"
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level)).init();
    // Before any thread starts (see `allocator::configure`).
    tiledb::allocator::configure(if matches!(cli.command, Command::Mount { .. }) {
        tiledb::allocator::Use::Daemon
    } else {
        tiledb::allocator::Use::Command
    });
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            // The reader of our output went away (`| head`): not an error.
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("modelfs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A TileDB context with modelfs's settings and the user's `--tiledb-config`.
pub fn tiledb_context(overrides: &[String]) -> Result<Context> {
    let config = tiledb_config(overrides)?;
    Context::with_config(&config).context("creating a TileDB context")
}

/// The S3 endpoint the settings name, if any (part of what tells one
/// registry's versions from another's in a shared disk cache).
pub fn storage_endpoint(overrides: &[String]) -> Result<Option<String>> {
    let config = tiledb_config(overrides)?;
    Ok(config.get("vfs.s3.endpoint_override")?.filter(|e| !e.is_empty()))
}

/// modelfs's TileDB settings and the user's `--tiledb-config`.
pub fn tiledb_config(overrides: &[String]) -> Result<tiledb::Config> {
    let mut config = tiledb::Config::tuned().context("creating a TileDB configuration")?;
    config
        .apply_aws_environment()
        .context("applying the AWS environment variables")?;
    for kv in overrides {
        let (key, value) = kv
            .split_once('=')
            .with_context(|| format!("--tiledb-config {kv:?}: expected KEY=VALUE"))?;
        config
            .set(key.trim(), value.trim())
            .with_context(|| format!("--tiledb-config {}", key.trim()))?;
    }
    Ok(config)
}

fn registry(overrides: &[String]) -> Result<Registry> {
    Ok(Registry::new(tiledb_context(overrides)?)?)
}

fn run(cli: Cli) -> Result<()> {
    let config = tiledb_settings(cli.tiledb_config_file.as_deref(), cli.tiledb_config)?;
    match cli.command {
        Command::Import {
            src,
            dest,
            force,
            quiet,
        } => {
            let mut reg = registry(&config)?;
            // New entries are recorded, merged in the background and the
            // rest when the registry goes, below: adding one costs the same
            // in a directory of any size.
            reg.retire_in_background();
            let dest = registry::uri::normalize(&dest);
            let mut progress = Bar::new(quiet);
            let totals = transfer::import(&reg, &src, &dest, force, &mut progress)
                .with_context(|| format!("import into {dest}"))?;
            drop(reg);
            if !quiet {
                eprintln!("imported {} files ({} bytes) into {dest}", totals.files, totals.bytes);
            }
            Ok(())
        }
        Command::Export {
            src,
            dest,
            force,
            quiet,
        } => {
            let reg = registry(&config)?;
            let src = registry::uri::normalize(&src);
            let mut progress = Bar::new(quiet);
            let totals = transfer::export(&reg, &src, &dest, force, &mut progress)
                .with_context(|| format!("export of {src}"))?;
            if !quiet {
                eprintln!(
                    "exported {} files ({} bytes) to {}",
                    totals.files,
                    totals.bytes,
                    dest.display()
                );
            }
            Ok(())
        }
        Command::Ls { uri, long } => ls(&config, &registry::uri::normalize(&uri), long),
        Command::Mount {
            registry,
            mountpoint,
            read_only,
            foreground,
            threads,
            cache_size,
            read_ahead,
            metadata_ttl,
            listing_cache_entries,
            stat_ahead,
            stat_whole_from,
            allow_other,
            staging_dir,
            staging_limit,
            view_memory,
            log_file,
            disk_cache,
            disk_cache_size,
            no_disk_cache,
            no_passthrough,
            at,
        } => mount::run(mount::Args {
            tiledb_config: config,
            registry: registry::uri::normalize(&registry),
            mountpoint,
            read_only,
            foreground,
            threads: threads as usize,
            cache_bytes: cache_size,
            read_ahead,
            metadata_ttl: std::time::Duration::from_secs_f64(metadata_ttl),
            listing_cache_entries,
            stat_ahead,
            stat_whole_from,
            allow_other,
            staging_dir,
            staging_limit,
            view_memory,
            log_file,
            disk_cache,
            disk_cache_size,
            no_disk_cache,
            passthrough: !no_passthrough,
            at,
        }),
        Command::Log { uri, quick } => {
            let reg = registry(&config)?;
            let entry = resolve(&reg, &registry::uri::normalize(&uri))?;
            versions_cli::log(&reg, &entry, !quick)
        }
        Command::Tag { uri, name, at, delete } => {
            let reg = registry(&config)?;
            let entry = resolve(&reg, &registry::uri::normalize(&uri))?;
            versions_cli::tag(&reg, &entry, &name, at.as_deref(), delete)
        }
        Command::Prune {
            uri,
            keep,
            older_than,
            untag,
        } => {
            let reg = registry(&config)?;
            let entry = resolve(&reg, &registry::uri::normalize(&uri))?;
            versions_cli::prune(&reg, &entry, keep, older_than.as_deref(), untag)
        }
        Command::Unmount { mountpoint, lazy } => mount::unmount(&mountpoint, lazy),
        Command::Info { uri } => info(&config, &registry::uri::normalize(&uri)),
        Command::Compact { uri, recursive, grace } => compact(
            &config,
            &registry::uri::normalize(&uri),
            recursive,
            std::time::Duration::from_secs_f64(grace),
        ),
    }
}

fn resolve(reg: &Registry, uri: &str) -> Result<Entry> {
    match reg.resolve(uri).with_context(|| uri.to_string())? {
        Some(e) => Ok(e),
        None => bail!("{uri}: no such file or directory"),
    }
}

fn ls(config: &[String], uri: &str, long: bool) -> Result<()> {
    let reg = registry(config)?;
    let entry = resolve(&reg, uri)?;
    let entries = if entry.is_dir() { reg.list(&entry)? } else { vec![entry] };
    for e in entries {
        if !long {
            out!("{}{}", e.name, if e.is_dir() { "/" } else { "" });
            continue;
        }
        let (kind, size, version) = match reg.node(&e) {
            Ok(Node::Dir(_)) => ("dir".to_string(), String::from("-"), String::from("-")),
            Ok(Node::File(m)) => (
                m.kind.clone().unwrap_or_else(|| "file".into()),
                m.size.to_string(),
                m.timestamp.map(format_utc_ms).unwrap_or_else(|| "-".into()),
            ),
            Ok(Node::TileDbMl { framework }) => (format!("tiledb-ml:{framework}"), "-".into(), "-".into()),
            Ok(Node::Other { .. }) => ("array".into(), "-".into(), "-".into()),
            Err(err) => {
                eprintln!("modelfs: {}: {err}", e.uri);
                ("error".into(), "-".into(), "-".into())
            }
        };
        let name = if e.is_dir() {
            format!("{}/", e.name)
        } else {
            e.name.clone()
        };
        out!("{kind:<12} {size:>14} {version:<24} {name}");
    }
    Ok(())
}

fn compact(config: &[String], uri: &str, recursive: bool, grace: std::time::Duration) -> Result<()> {
    let reg = registry(config)?;
    let top = resolve(&reg, uri)?;
    if !top.is_dir() {
        bail!("{uri}: not a directory");
    }
    let mut dirs = vec![top];
    let mut i = 0;
    while recursive && i < dirs.len() {
        let below: Vec<Entry> = reg.list(&dirs[i])?.into_iter().filter(Entry::is_dir).collect();
        dirs.extend(below);
        i += 1;
    }
    let mut before = Vec::with_capacity(dirs.len());
    for d in &dirs {
        let bytes = reg.dir_own_bytes(d).with_context(|| d.uri.clone())?;
        let c = reg.compact_dir(d).with_context(|| d.uri.clone())?;
        before.push((bytes, c));
    }
    std::thread::sleep(grace);
    let (mut total_before, mut total_after) = (0u64, 0u64);
    for (d, (bytes, c)) in dirs.iter().zip(before) {
        reg.vacuum_dir(d, grace).with_context(|| d.uri.clone())?;
        let after = reg.dir_own_bytes(d).with_context(|| d.uri.clone())?;
        total_before += bytes;
        total_after += after;
        if c.merged > 0 {
            out!("{}: {} new entries merged into its member list", d.uri, c.merged);
        }
        if c.replaced > 0 || after < bytes {
            out!(
                "{}: {} member-list files to 1, {bytes} to {after} bytes",
                d.uri,
                c.list_files_before.max(1)
            );
        }
    }
    out!(
        "{} directories: {total_before} to {total_after} bytes of member lists and metadata",
        dirs.len()
    );
    Ok(())
}

fn info(config: &[String], uri: &str) -> Result<()> {
    let reg = registry(config)?;
    let entry = resolve(&reg, uri)?;
    out!("uri:        {}", entry.uri);
    match reg.node(&entry)? {
        Node::Dir(attrs) => {
            let kind = if entry.storage == registry::Storage::Group {
                "directory (TileDB group)"
            } else {
                "directory"
            };
            out!("kind:       {kind}");
            out!("entries:    {}", reg.list(&entry)?.len());
            print_attrs(&attrs, true)?;
            return Ok(());
        }
        Node::File(meta) => {
            out!(
                "kind:       {}",
                meta.kind.as_deref().unwrap_or("file (written by another tool)")
            );
            out!("size:       {} bytes", meta.size);
            if let Some(ts) = meta.timestamp {
                out!("version:    {ts} ({})", format_utc_ms(ts));
            }
            print_attrs(&meta.attrs, false)?;
            if let Some(index) = &meta.tensors {
                print_tensors(index)?;
            }
        }
        Node::TileDbMl { framework } => {
            out!("kind:       TileDB-ML model array ({framework})");
            match TileDbMlModel::open(reg.context(), &entry.uri) {
                Ok(model) => print_tiledb_ml(&model)?,
                Err(e) => out!("files:      none shown: {e}"),
            }
        }
        Node::Other { reason } => out!("kind:       TileDB array, not a modelfs file ({reason})"),
    }
    print_array(reg.context(), &entry.uri, &reg)
}

/// The modes, owners and times tools stored (a version's own time is its
/// `version` line).
/// The mode, owner and mtime stored for an entry. A file's mtime shows
/// only when a tool set one (its version's time is printed apart); a
/// directory's is the last change of its entries unless a tool set one
/// since.
fn print_attrs(attrs: &registry::Attrs, dir: bool) -> Result<()> {
    if let Some(m) = attrs.mode {
        out!("mode:       {m:04o}");
    }
    if attrs.uid.is_some() || attrs.gid.is_some() {
        let show = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
        out!("owner:      {}:{}", show(attrs.uid), show(attrs.gid));
    }
    match attrs.mtime_ns {
        Some(ns) if dir => out!("mtime:      {}", format_utc_ms(ns / 1_000_000)),
        Some(ns) => out!("mtime:      {} (set by a tool)", format_utc_ms(ns / 1_000_000)),
        None => {}
    }
    Ok(())
}

fn print_tensors(index: &registry::TensorIndex) -> Result<()> {
    out!("header:     {} bytes", index.header_len);
    if let Some(m) = &index.metadata {
        out!("__metadata__: {}", serde_json::to_string(m).unwrap_or_default());
    }
    out!("tensors:    {}", index.tensors.len());
    let width = index.tensors.iter().map(|t| t.name.len()).max().unwrap_or(4).max(4);
    out!(
        "  {:<width$}  {:<7} {:<20} {:>14} {:>14}",
        "NAME",
        "DTYPE",
        "SHAPE",
        "BEGIN",
        "END"
    );
    for t in &index.tensors {
        let shape = format!("{:?}", t.shape);
        out!(
            "  {:<width$}  {:<7} {:<20} {:>14} {:>14}",
            t.name,
            t.dtype,
            shape,
            t.range[0],
            t.range[1]
        );
    }
    Ok(())
}

fn print_tiledb_ml(model: &TileDbMlModel) -> Result<()> {
    out!("read as of: {} ({})", model.version(), format_utc_ms(model.version()));
    out!("fields:     {}", model.fields().len());
    for f in model.fields() {
        let size = match (f.size, f.stale) {
            (0, _) => "empty".to_string(),
            (n, false) => format!("{n} bytes"),
            (n, true) => format!("empty (`{}_size` = {n} is left from an older save)", f.name),
        };
        out!("  {:<12} {size}", f.name);
    }
    out!("files:      {}", model.entries().len());
    let width = model.entries().iter().map(|(p, _)| p.len()).max().unwrap_or(4);
    for (path, entry) in model.entries() {
        match entry {
            ViewEntry::Ready(file) => {
                out!("  {path:<width$}  {:>14} bytes", file.len());
                if let Some(tensors) = file.tensors() {
                    let w = tensors.iter().map(|t| t.name.len()).max().unwrap_or(4).max(4);
                    out!("      {:<w$}  {:<5} SHAPE", "NAME", "DTYPE");
                    for t in tensors {
                        out!("      {:<w$}  {:<5} {:?}", t.name, t.dtype, t.shape);
                    }
                }
            }
            ViewEntry::Failed(e) => out!("  {path:<width$}  not shown: {}", e.problem),
        }
    }
    Ok(())
}

fn print_array(ctx: &Context, uri: &str, reg: &Registry) -> Result<()> {
    let schema = tiledb::Schema::load(ctx, uri)?;
    out!("schema:     {:?} array", schema.array_type()?);
    for d in schema.dimensions()? {
        let dom = tiledb::format_values(d.datatype, &d.domain);
        let ext = tiledb::format_values(d.datatype, &d.tile_extent);
        out!("  dimension {} {} domain {dom} tile extent {ext}", d.name, d.datatype);
    }
    for a in schema.attributes()? {
        let filters: Vec<String> = a.filters.iter().map(|f| f.name()).collect();
        let cells = if a.cell_val_num == u32::MAX {
            "var".to_string()
        } else {
            a.cell_val_num.to_string()
        };
        out!(
            "  attribute {} {} x{cells}{} filters [{}]",
            a.name,
            a.datatype,
            if a.nullable { " nullable" } else { "" },
            filters.join(", ")
        );
    }
    let fragments = tiledb::fragments(ctx, uri)?;
    out!("fragments:  {}", fragments.len());
    for f in &fragments {
        out!(
            "  [{}, {}] {} cells",
            f.timestamp_range.0,
            f.timestamp_range.1,
            f.cell_num
        );
    }
    out!("metadata:");
    for (k, v) in reg.array_metadata(uri)? {
        let text = tiledb::format_values(v.datatype, &v.bytes);
        let text = if text.len() > 200 {
            format!("({} bytes of {})", v.bytes.len(), v.datatype)
        } else {
            text
        };
        out!("  {k} ({}) = {text}", v.datatype);
    }
    Ok(())
}

/// The `KEY=VALUE` settings from `--tiledb-config-file` (first) and
/// `--tiledb-config` (last, so they win).
fn tiledb_settings(file: Option<&std::path::Path>, flags: Vec<String>) -> Result<Vec<String>> {
    let mut out = Vec::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).with_context(|| format!("--tiledb-config-file {}", path.display()))?;
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .or_else(|| line.split_once(char::is_whitespace))
                .with_context(|| format!("{}:{}: expected KEY VALUE", path.display(), i + 1))?;
            out.push(format!("{}={}", key.trim(), value.trim()));
        }
    }
    out.extend(flags);
    Ok(out)
}

/// Parses a non-negative number of seconds.
fn parse_seconds(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds from 0 to 86400")),
    }
}

/// Parses a size like `4096`, `512K`, `128M`, `2G` or `1T` (powers of 1024).
fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("unknown size suffix in {s:?} (use K, M, G or T)")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| format!("{s:?} is not a size"))?;
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

/// `ms` since the Unix epoch as `YYYY-MM-DD HH:MM:SS.mmm UTC`.
fn format_utc_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = registry::version_time::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// A progress bar on a terminal for large files; silent otherwise.
struct Bar {
    enabled: bool,
    bar: Option<ProgressBar>,
}

impl Bar {
    fn new(quiet: bool) -> Self {
        Bar {
            enabled: !quiet && std::io::stderr().is_terminal(),
            bar: None,
        }
    }
}

impl transfer::Progress for Bar {
    fn start(&mut self, name: &str, size: u64) {
        if !self.enabled || size < PROGRESS_MIN_BYTES {
            return;
        }
        let bar = ProgressBar::new(size);
        if let Ok(style) =
            ProgressStyle::with_template("{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(name.to_string());
        self.bar = Some(bar);
    }

    fn advance(&mut self, bytes: u64) {
        if let Some(b) = &self.bar {
            b.inc(bytes);
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
