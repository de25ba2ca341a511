//! glibc malloc settings for the process, tuned to how TileDB allocates.
//!
//! [`configure`] must run before any other thread starts: glibc fixes its
//! arena limit when a second thread first needs an arena, and a later call
//! would silently do nothing. A malloc setting the user gave through
//! glibc's own environment (a `glibc.malloc.*` tunable in
//! `GLIBC_TUNABLES`, `MALLOC_ARENA_MAX`, ...) is left as given.

/// How the process will use memory.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// The mount daemon: long-lived, with reads in flight on many threads.
    Daemon,
    /// A command that runs to its end (`import`, `export`, ...).
    Command,
}

/// Arenas the daemon may use. glibc gives each thread that allocates an
/// arena of its own; the daemon's read-ahead, TileDB and FUSE threads then
/// hold freed query buffers in many arenas: two keep the peak of a cold
/// 1 GiB read near 160-180 MiB instead of ~186-225 MiB, at no cost in time
/// measured.
const DAEMON_ARENAS: i32 = 2;

/// Blocks up to this size come from the heap, not from a mapping of their
/// own (glibc's default starts at 128 KiB and rises only as mapped blocks
/// are freed).
const MMAP_THRESHOLD_BYTES: i32 = 32 << 20;

/// Free memory the heap keeps before returning it to the system.
const TRIM_THRESHOLD_BYTES: i32 = 64 << 20;

/// Applies the settings for `kind`; call it first thing in `main`.
///
/// A command copying a file through TileDB allocates and frees each tile
/// (256 KiB) and each query buffer in turn. With glibc's defaults, most of
/// these went to fresh pages: a 1 GiB `modelfs export` took 170,000 page
/// faults and 0.5-0.6 s of system time, a 1 GiB `modelfs import` 106,000
/// and 0.8-4.6 s; with freed blocks kept for reuse, about 8,000 each, for
/// the same peak RSS (54 MiB for the export). The daemon's reads and
/// writes fault no less with these thresholds (its heap grows to its
/// working set once), so it keeps glibc's.
pub fn configure(kind: Use) {
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if tunables.contains("glibc.malloc.") {
        return;
    }
    let settings: &[(&str, libc::c_int, i32)] = match kind {
        Use::Daemon => &[("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, DAEMON_ARENAS)],
        Use::Command => &[
            ("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
            ("MALLOC_TRIM_THRESHOLD_", libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
        ],
    };
    for &(env, param, value) in settings {
        if std::env::var_os(env).is_some() {
            continue;
        }
        // SAFETY: mallopt only changes the allocator's parameters, and
        // takes any values (it reports the ones it refuses).
        if unsafe { libc::mallopt(param, value) } != 1 {
            log::warn!("glibc refused malloc setting {env} = {value}; its default stays");
        }
    }
}
