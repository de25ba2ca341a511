//! `modelfs mount` and `modelfs unmount`: checks, daemonizing, signals.
//!
//! Without `--foreground` the command re-runs itself in the foreground as a
//! child in its own session and waits until the child reports the mount is
//! up (one line on a pipe) or fails, so mount errors reach the caller with a
//! non-zero exit before it detaches.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use log::{info, warn};

use modelfs::fs::disk_cache::{BOUNCE_BYTES, DiskCacheConfig, WRITES_BEHIND};
use modelfs::fs::read::source::MIN_CHUNK_BYTES;
use modelfs::fs::{Config, ModelFs};
use modelfs::fuse::{MountOptions, Mounted};
use modelfs::registry::Registry;
use modelfs::registry::uri::is_local;

/// Set in the child's environment: report readiness on stdout.
const READY_ENV: &str = "MODELFS_REPORT_READY";
const READY_LINE: &str = "modelfs-mounted";

pub struct Args {
    pub tiledb_config: Vec<String>,
    pub registry: String,
    pub mountpoint: PathBuf,
    pub read_only: bool,
    pub foreground: bool,
    pub threads: usize,
    pub cache_bytes: Option<u64>,
    pub read_ahead: Option<u64>,
    pub metadata_ttl: std::time::Duration,
    pub listing_cache_entries: usize,
    pub stat_ahead: usize,
    /// `None`: the default for the registry's kind.
    pub stat_whole_from: Option<usize>,
    pub allow_other: bool,
    pub staging_dir: Option<PathBuf>,
    pub staging_limit: u64,
    pub view_memory: u64,
    pub log_file: Option<PathBuf>,
    pub disk_cache: Option<PathBuf>,
    pub disk_cache_size: u64,
    pub no_disk_cache: bool,
    pub passthrough: bool,
    /// A snapshot mount's time or tag (`--at`).
    pub at: Option<String>,
}

/// How a mount reads file data by default, by where the registry lives.
struct ReadDefaults {
    /// `--cache-size`: the chunk cache and the read-ahead queries in flight.
    budget: u64,
    /// Read-ahead queries in flight at most.
    queries: usize,
    /// Bytes one read-ahead query asks for.
    query_bytes: u64,
    /// `--read-ahead`: the window of one sequential reader.
    window: u64,
}

/// A local registry: 4 queries of 4 MiB, a 32 MiB window, a 64 MiB chunk
/// cache (a 1 GiB cold read is CPU-bound here; more in flight did not help).
const LOCAL_READS: ReadDefaults = ReadDefaults {
    budget: 112 << 20,
    queries: 4,
    query_bytes: 4 << 20,
    window: 32 << 20,
};

/// An object store, where each query waits on the network: 8 queries of 8
/// MiB, a 96 MiB window, a 192 MiB chunk cache. Cold 1 GiB reads from
/// Garage on loopback, alternated in the same runs: 8 queries of 8 MiB
/// 2.5-2.9 s against 3.5 s with the local settings (s3fs 2.3-2.6 s); a
/// 96 MiB window 3.0 s against 3.25 s with 64 MiB (s3fs 2.8 s).
const OBJECT_STORE_READS: ReadDefaults = ReadDefaults {
    budget: 384 << 20,
    queries: 8,
    query_bytes: 8 << 20,
    window: 96 << 20,
};

/// What one query in flight costs in memory, in multiples of its size:
/// TileDB's tiles, the result, and what the allocator keeps between
/// queries. Measured: the peak RSS of a cold 1 GiB read rose by 2.8 times
/// the bytes of queries in flight (4 of 4 MiB against 8 of 8 MiB).
const QUERY_MEMORY_FACTOR: u64 = 3;

/// The chunk cache and read-ahead: `--cache-size` bounds the chunk cache
/// together with the read-ahead queries in flight, which take at most half
/// of it (smaller, then fewer queries under a small budget; one query of
/// one chunk at least, even when that is more); the read-ahead window is
/// at most half the chunk cache, so chunks read ahead stay cached until
/// the reader gets to them. Arrays whose tiles are larger than a query
/// are read a tile at a time, one such query in flight at once.
fn read_settings(args: &Args, config: Config) -> Result<Config> {
    let defaults = if is_local(&args.registry) {
        &LOCAL_READS
    } else {
        &OBJECT_STORE_READS
    };
    let budget = args.cache_bytes.unwrap_or(defaults.budget);
    // Under a smaller budget the queries shrink first (to one chunk at
    // least), then they get fewer (one at least).
    let fair = (budget / 2) / (defaults.queries as u64 * QUERY_MEMORY_FACTOR);
    let query_bytes = fair.clamp(MIN_CHUNK_BYTES, defaults.query_bytes);
    let per_query = query_bytes * QUERY_MEMORY_FACTOR;
    let queries = defaults.queries.min(((budget / 2) / per_query).max(1) as usize);
    // A disk cache's buffers: its aligned ones for direct writes, and the
    // query buffers waiting for its writer thread (or being written),
    // which the chunk cache may have let go.
    let fill_buffers = if config.disk_cache.is_some() {
        BOUNCE_BYTES + (WRITES_BEHIND as u64 + 1) * query_bytes
    } else {
        0
    };
    let cache_bytes = budget.saturating_sub(queries as u64 * per_query + fill_buffers);
    let most = cache_bytes / 2;
    let window = match args.read_ahead {
        Some(bytes) if bytes > most => bail!(
            "--read-ahead {} is more than half the chunk cache ({} of --cache-size {}): raise --cache-size",
            mib(bytes),
            mib(cache_bytes),
            mib(budget)
        ),
        Some(bytes) => bytes,
        None => defaults.window.min(most),
    };
    info!(
        "--cache-size {} MiB: a {} MiB chunk cache, {queries} read-ahead queries of {} MiB{}; read-ahead up to {} MiB per reader",
        budget >> 20,
        cache_bytes >> 20,
        query_bytes >> 20,
        if fill_buffers > 0 {
            format!(
                " and {} MiB of disk cache write buffers",
                fill_buffers.div_ceil(1 << 20)
            )
        } else {
            String::new()
        },
        window >> 20
    );
    Ok(Config {
        cache_bytes,
        prefetch_threads: queries,
        prefetch_fetch_bytes: query_bytes,
        prefetch_window_bytes: window,
        ..config
    })
}

/// A size for messages, in MiB.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// The disk cache a mount uses: the one asked for, else the default one
/// for registries on object stores. A local registry is already on local
/// disk: a copy only pays for passthrough (see the README's figures), so
/// it takes one only when asked.
fn disk_cache(args: &Args) -> Option<DiskCacheConfig> {
    if args.no_disk_cache {
        return None;
    }
    let dir = match &args.disk_cache {
        Some(dir) => dir.clone(),
        None if !is_local(&args.registry) => {
            let dir = modelfs::fs::disk_cache::default_dir();
            // Asked for, a cache that cannot be made fails the mount; the
            // default one is left out, with a warning.
            if let Err(e) = std::fs::create_dir_all(&dir) {
                warn!("disk cache {}: {e}; mounting without one", dir.display());
                return None;
            }
            dir
        }
        None => return None,
    };
    Some(DiskCacheConfig {
        dir,
        limit_bytes: args.disk_cache_size,
    })
}

fn check_mountpoint(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("mountpoint {}", path.display()))?;
    if !meta.is_dir() {
        bail!("mountpoint {}: not a directory", path.display());
    }
    let mut entries = std::fs::read_dir(path).with_context(|| format!("mountpoint {}", path.display()))?;
    if entries.next().is_some() {
        bail!("mountpoint {}: not empty", path.display());
    }
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    check_mountpoint(&args.mountpoint)?;
    if !args.foreground {
        return spawn_daemon();
    }
    if let Some(path) = &args.log_file {
        redirect_stderr(path)?;
    }
    let ctx = crate::tiledb_context(&args.tiledb_config)?;
    if !crate::tiledb::yield_interposed() {
        warn!("TileDB's waits spin on sched_yield in this build: reads from object stores cost more CPU");
    }
    let mut registry = Registry::new(ctx)?;
    let read_only = args.read_only || args.at.is_some();
    if let Some(at) = &args.at {
        let t = crate::versions_cli::snapshot_time(&registry, &args.registry, at)?;
        info!(
            "snapshot of {} as of {}, read-only",
            args.registry,
            modelfs::registry::version_time::format_ms(t)
        );
        registry = Registry::snapshot(crate::tiledb_config(&args.tiledb_config)?, t)
            .with_context(|| format!("snapshot of {}", args.registry))?;
    }
    registry.set_listing_cache_entries(args.listing_cache_entries);
    if !read_only {
        registry.tidy_directories_when_listed();
        registry.retire_in_background();
    }
    let config = Config {
        read_only,
        metadata_ttl: args.metadata_ttl,
        stat_ahead: args.stat_ahead,
        stat_whole_from: (args.stat_whole_from).unwrap_or(if is_local(&args.registry) { 0 } else { 16 }),
        staging_dir: args
            .staging_dir
            .clone()
            .unwrap_or_else(|| Config::default().staging_dir),
        staging_limit_bytes: args.staging_limit,
        view_memory_bytes: args.view_memory,
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        disk_cache: disk_cache(&args),
        disk_cache_namespace: format!(
            "{}\n{}",
            args.registry,
            crate::storage_endpoint(&args.tiledb_config)?.unwrap_or_default()
        ),
        passthrough: args.passthrough,
        ..Config::default()
    };
    let config = read_settings(&args, config)?;
    let core = Arc::new(
        ModelFs::new(std::sync::Arc::new(registry), &args.registry, config)
            .with_context(|| format!("mount of {}", args.registry))?,
    );
    let options = MountOptions {
        fs_name: args.registry.clone(),
        read_only,
        allow_other: args.allow_other,
        threads: args.threads,
    };
    let mut mounted = Mounted::new(core.clone(), &args.mountpoint, &options)
        .with_context(|| format!("mount at {}", args.mountpoint.display()))?;
    let mut unmounter = mounted.unmounter();
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])
        .context("installing signal handlers")?;
    let mountpoint = args.mountpoint.clone();
    std::thread::Builder::new()
        .name("modelfs-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                info!("signal {sig}: unmounting {}", mountpoint.display());
                if let Err(e) = unmounter.unmount() {
                    warn!("unmount of {} failed: {e}", mountpoint.display());
                }
            }
        })
        .context("starting the signal thread")?;
    if std::env::var_os(READY_ENV).is_some() {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{READY_LINE}");
        let _ = out.flush();
        // The caller has what it waited for. Let go of its stdout and (unless
        // logging to a file) its stderr, so a caller capturing them sees EOF.
        if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
            let _ = nix::unistd::dup2_stdout(&null);
            if args.log_file.is_none() {
                let _ = nix::unistd::dup2_stderr(&null);
            }
        }
    }
    mounted.run().context("serving the mount")?;
    info!(
        "unmounted {}; {} handles were open",
        args.mountpoint.display(),
        core.open_handles()
    );
    Ok(())
}

fn redirect_stderr(path: &Path) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("log file {}", path.display()))?;
    nix::unistd::dup2_stderr(&f).with_context(|| format!("log file {}", path.display()))?;
    Ok(())
}

/// Runs this command again with `--foreground` as a detached child and
/// waits for it to report the mount (exit 0) or to fail (its exit code).
fn spawn_daemon() -> Result<()> {
    let exe = std::env::current_exe().context("finding the modelfs executable")?;
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    args.push("--foreground".into());
    let mut cmd = Command::new(exe);
    cmd.args(&args).env(READY_ENV, "1");
    // Its own process group, so a Ctrl-C meant for the caller's terminal
    // does not unmount it.
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).process_group(0);
    let mut child = cmd.spawn().context("starting the mount daemon")?;
    let stdout = child.stdout.take().context("daemon stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("waiting for the mount daemon")?;
    if line.trim() == READY_LINE {
        return Ok(());
    }
    let status = child.wait().context("waiting for the mount daemon")?;
    bail!("the mount daemon exited ({status}) before the mount was up");
}

pub fn unmount(mountpoint: &Path, lazy: bool) -> Result<()> {
    let path = mountpoint
        .canonicalize()
        .with_context(|| format!("{}", mountpoint.display()))?;
    if nix::unistd::geteuid().is_root() {
        use nix::errno::Errno;
        use nix::mount::{MntFlags, umount2};
        let flags = if lazy { MntFlags::MNT_DETACH } else { MntFlags::empty() };
        return match umount2(&path, flags) {
            Ok(()) => Ok(()),
            Err(Errno::EBUSY) => bail!(
                "{}: busy: files in it are open (--lazy detaches it now)",
                path.display()
            ),
            Err(Errno::EINVAL) => bail!("{}: not a mount point", path.display()),
            Err(e) => bail!("{}: {e}", path.display()),
        };
    }
    let mut cmd = Command::new("fusermount3");
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd.arg(&path).output().context("running fusermount3")?;
    if !out.status.success() {
        bail!("{}: {}", path.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(registry: &str, cache: Option<u64>, read_ahead: Option<u64>) -> Args {
        Args {
            tiledb_config: Vec::new(),
            registry: registry.to_string(),
            mountpoint: PathBuf::from("/nonexistent"),
            read_only: true,
            foreground: true,
            threads: 4,
            cache_bytes: cache,
            read_ahead,
            metadata_ttl: std::time::Duration::from_secs(1),
            listing_cache_entries: 0,
            stat_ahead: 0,
            stat_whole_from: None,
            allow_other: false,
            staging_dir: None,
            staging_limit: 0,
            view_memory: 0,
            log_file: None,
            disk_cache: None,
            disk_cache_size: 0,
            no_disk_cache: true,
            passthrough: false,
            at: None,
        }
    }

    fn settings(registry: &str, cache: Option<u64>, read_ahead: Option<u64>) -> Result<(u64, u64, usize, u64)> {
        let c = read_settings(&args(registry, cache, read_ahead), Config::default())?;
        Ok((
            c.cache_bytes >> 20,
            c.prefetch_window_bytes >> 20,
            c.prefetch_threads,
            c.prefetch_fetch_bytes >> 20,
        ))
    }

    #[test]
    fn reads_are_set_by_where_the_registry_lives() {
        assert_eq!(settings("/data/reg", None, None).unwrap(), (64, 32, 4, 4));
        assert_eq!(settings("file:///data/reg", None, None).unwrap(), (64, 32, 4, 4));
        assert_eq!(settings("s3://team/reg", None, None).unwrap(), (192, 96, 8, 8));
    }

    #[test]
    fn queries_in_flight_and_the_chunk_cache_share_the_budget() {
        for registry in ["/data/reg", "s3://team/reg"] {
            for mib in [2, 8, 16, 64, 100, 320, 4096] {
                let budget = mib << 20;
                let c = read_settings(&args(registry, Some(budget), None), Config::default()).unwrap();
                let per_query = c.prefetch_fetch_bytes * QUERY_MEMORY_FACTOR;
                let in_flight = c.prefetch_threads as u64 * per_query;
                assert!(c.prefetch_threads >= 1, "{registry} {mib}M");
                assert!(
                    c.cache_bytes + in_flight <= budget,
                    "{registry} {mib}M: over the budget"
                );
                assert!(
                    in_flight <= budget / 2,
                    "{registry} {mib}M: queries over half the budget"
                );
                assert!(
                    c.prefetch_window_bytes <= c.cache_bytes / 2,
                    "{registry} {mib}M: window"
                );
            }
        }
        // A smaller budget runs smaller queries, then fewer; the window
        // shrinks with the cache.
        assert_eq!(
            settings("s3://team/reg", Some(192 << 20), None).unwrap(),
            (96, 48, 8, 4)
        );
        let small = read_settings(&args("/data/reg", Some(16 << 20), None), Config::default()).unwrap();
        assert_eq!((small.prefetch_threads, small.cache_bytes >> 20), (4, 8));
        let tiny = read_settings(&args("/data/reg", Some(1 << 20), None), Config::default()).unwrap();
        assert_eq!((tiny.prefetch_threads, tiny.prefetch_fetch_bytes), (1, MIN_CHUNK_BYTES));
    }

    #[test]
    fn disk_cache_buffers_count_in_the_budget() {
        for registry in ["/data/reg", "s3://team/reg"] {
            for mib in [112, 384, 4096] {
                let a = args(registry, Some(mib << 20), None);
                let without = read_settings(&a, Config::default()).unwrap();
                let config = Config {
                    disk_cache: Some(DiskCacheConfig {
                        dir: PathBuf::from("/nonexistent/cache"),
                        limit_bytes: 1 << 30,
                    }),
                    ..Config::default()
                };
                let with = read_settings(&a, config).unwrap();
                let in_flight = with.prefetch_threads as u64 * with.prefetch_fetch_bytes * QUERY_MEMORY_FACTOR;
                let buffers = BOUNCE_BYTES + (WRITES_BEHIND as u64 + 1) * with.prefetch_fetch_bytes;
                assert!(
                    with.cache_bytes + in_flight + buffers <= mib << 20,
                    "{registry} {mib}M: over the budget"
                );
                assert_eq!(with.cache_bytes, without.cache_bytes - buffers, "{registry} {mib}M");
            }
        }
    }

    #[test]
    fn the_read_ahead_asked_for_must_fit_in_half_the_chunk_cache() {
        assert_eq!(
            settings("/data/reg", Some(1 << 30), Some(256 << 20)).unwrap(),
            (976, 256, 4, 4)
        );
        // One that does not fit is refused, saying what to raise.
        let e = settings("/data/reg", None, Some(40 << 20)).unwrap_err().to_string();
        assert!(e.contains("--cache-size"), "{e}");
    }
}
