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

use modelfs::fs::disk_cache::DiskCacheConfig;
use modelfs::fs::{Config, ModelFs};
use modelfs::fuse::{MountOptions, Mounted};
use modelfs::registry::Registry;

/// Set in the child's environment: report readiness on stdout.
const READY_ENV: &str = "MODELFS_REPORT_READY";
const READY_LINE: &str = "modelfs-mounted";
/// glibc's limit on malloc arenas, set for the daemon.
const ARENA_ENV: &str = "MALLOC_ARENA_MAX";

pub struct Args {
    pub tiledb_config: Vec<String>,
    pub registry: String,
    pub mountpoint: PathBuf,
    pub read_only: bool,
    pub foreground: bool,
    pub threads: usize,
    pub cache_bytes: u64,
    pub metadata_ttl: std::time::Duration,
    pub listing_cache_entries: usize,
    pub stat_ahead: usize,
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
        None if args.registry.contains("://") && !args.registry.starts_with("file://") => {
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
        cache_bytes: args.cache_bytes,
        metadata_ttl: args.metadata_ttl,
        stat_ahead: args.stat_ahead,
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
    // glibc gives each thread that allocates an arena of its own; the
    // daemon's read-ahead, TileDB and FUSE threads then hold freed query
    // buffers in many arenas: two keep the peak of a cold 1 GiB read near
    // 160-180 MiB instead of ~186-225 MiB, at no cost in time measured.
    if std::env::var_os(ARENA_ENV).is_none() {
        cmd.env(ARENA_ENV, "2");
    }
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
