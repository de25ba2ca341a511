//! glibc malloc settings for this process, set in `main` before any thread
//! starts. A setting the user gave through glibc's own environment
//! (`GLIBC_TUNABLES`, `MALLOC_ARENA_MAX`, ...) is left as given.

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
const MMAP_THRESHOLD: i32 = 32 << 20;

/// Free memory the heap keeps before returning it to the system.
const TRIM_THRESHOLD: i32 = 64 << 20;

/// Applies the settings for `kind`.
///
/// A command copying a file through TileDB allocates and frees each tile
/// (256 KiB) and each query buffer in turn. With glibc's defaults, most of
/// these went to fresh pages: a 1 GiB `modelfs export` took 170,000 page
/// faults and 0.5-0.6 s of system time, `modelfs import` 106,000 and 4.6
/// s; with freed blocks kept for reuse, about 8,000 each, for the same
/// peak RSS (54 MiB for the export). The daemon's reads and writes fault
/// little (its heap has grown to its working set), so it keeps glibc's
/// thresholds.
pub fn configure(kind: Use) {
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        return;
    }
    let settings: &[(&str, libc::c_int, i32)] = match kind {
        Use::Daemon => &[("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, DAEMON_ARENAS)],
        Use::Command => &[
            ("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            ("MALLOC_TRIM_THRESHOLD_", libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        ],
    };
    for &(env, param, value) in settings {
        if std::env::var_os(env).is_some() {
            continue;
        }
        // SAFETY: mallopt only changes the allocator's parameters; it is
        // called before any other thread exists.
        if unsafe { libc::mallopt(param, value) } != 1 {
            log::debug!("mallopt({param}, {value}) refused");
        }
    }
}
