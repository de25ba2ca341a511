//! Counters of what the mount does, readable while mounted (the root's
//! hidden `.modelfs-stats` file) and by tests. Plain relaxed atomics: each
//! is exact on its own, a snapshot of several is not a transaction.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Live counters, shared by every thread of a mount.
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A copy of the counters at one moment.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
        pub struct Snapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Counters {
            pub fn snapshot(&self) -> Snapshot {
                Snapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Read requests answered.
    reads_served,
    /// Bytes returned to readers.
    bytes_served,
    /// Chunks found in the cache (or being loaded by another reader).
    cache_hits,
    /// Chunks that had to be read from TileDB for a reader.
    cache_misses,
    /// Chunks dropped from the cache to stay under its size limit.
    cache_evictions,
    /// TileDB read queries issued.
    tiledb_reads,
    /// Bytes asked of TileDB.
    tiledb_bytes,
    /// Of those, bytes read as stored tiles, without a query (a gauge, set
    /// when read).
    stored_tile_bytes,
    /// Calls of `sched_yield` in a spin during a read query (TileDB's
    /// thread pool waiting for its tasks) that slept briefly instead (see
    /// `tiledb::wait`; a gauge, set when read).
    yield_naps,
    /// 1 when libtiledb's `sched_yield` calls reach the executable's own
    /// (`tiledb::wait`), so that the naps above can happen (a gauge).
    yield_interposed,
    /// Chunks read ahead of a sequential reader.
    prefetch_chunks,
    /// Read-ahead requests dropped because the queue was full.
    prefetch_dropped,
    /// Lookups of names.
    lookups,
    /// Directory listings read from the registry (not from the TTL cache).
    registry_listings,
    /// Entries whose kind and size were read from the registry (an array
    /// open each), not taken from the TTL cache.
    registry_node_reads,
    /// Subdirectories read ahead of a lister (`ls -l`), several at a time.
    stat_ahead_reads,
    /// Lookups answered by a read made ahead of them.
    stat_ahead_used,
    /// Reads of a whole directory for its subdirectories' stats (one
    /// listing on an object store), ahead of a lister.
    stat_ahead_whole_reads,
    /// Lookups answered by such a read.
    stat_ahead_told,
    /// Subdirectories' stats read one by one and kept for such reads by
    /// later mounts.
    stat_ahead_saved,
    /// Files opened.
    opens,
    /// Bytes taken by writes.
    bytes_written,
    /// New versions committed.
    commits,
    /// Commits refused or failed (the application got the error).
    commit_failures,
    /// Staging files made (writes out of order or past the memory limit).
    staged_files,
    /// TileDB-ML models decoded.
    ml_models_decoded,
    /// Decoded TileDB-ML models the cache let go (least recently used
    /// under pressure or past the count kept, or their directory forgotten).
    ml_models_dropped,
    /// Decoded TileDB-ML models alive now (a gauge, set when read).
    ml_models_alive,
    /// Bytes of TileDB-ML fields and views written to spill files.
    view_bytes_spilled,
    /// Bytes charged to `--view-memory` now (a gauge, set when read).
    view_memory_used,
    /// Versions found complete and verified in the disk cache at open.
    disk_cache_hits,
    /// Versions written into the disk cache (read or written through the mount).
    disk_cache_fills,
    /// Bytes of the versions written into the disk cache.
    disk_cache_fill_bytes,
    /// Bytes the daemon read from disk cache files for readers.
    disk_cache_read_bytes,
    /// Versions evicted from the disk cache to stay within its size.
    disk_cache_evictions,
    /// Disk cache files found damaged (size or checksum), removed and read again.
    disk_cache_damaged,
    /// Opens handed to the kernel's FUSE passthrough (reads and mmap go to
    /// the disk cache file without the daemon).
    passthrough_opens,
    /// Opens of a version complete in the disk cache that could not use
    /// passthrough (turned off, refused by the kernel, or the file is open
    /// in another mode); the daemon serves them.
    passthrough_fallbacks,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
