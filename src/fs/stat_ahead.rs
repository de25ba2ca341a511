//! Reading subdirectories' stats ahead of a lister.
//!
//! `ls -l` of a directory looks its entries up one after another, in
//! listing order. A subdirectory's stat is a read of its group (its
//! attributes and, for the link count, its entries): a few round trips to
//! storage, so 10,000 of them one at a time took minutes on S3. Once
//! lookups go through a listing in order (one right after the other), the
//! next subdirectories of that listing are read by a small pool of
//! threads, a bounded window ahead; the lookups that follow take what was
//! read. A lone `stat` or `cd` reads nothing ahead.
//!
//! In a directory of many subdirectories, the first lookups in order also
//! ask the store for the stats one read of the directory tells (see
//! [`crate::registry::dir_stats`]: one listing on an object store, instead
//! of five per subdirectory); the window then reads only the others, and
//! leaves their stats for the next mount.
//!
//! What was read is used only within the metadata TTL of its answer, and
//! never across a change this mount made meanwhile (any change discards
//! what was read before it, so a mount always sees its own changes).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::counters::Counters;
use super::inode::{DirShape, subdirs_in};
use super::store::Store;
use crate::registry::{Attrs, DirStat, Entry, StatLabel};

/// A subdirectory's stat as read ahead.
pub(super) type DirRead = (Attrs, DirShape);

/// Subdirectories whose stats from their parent's read are kept at most,
/// over all directories (about 100 bytes each).
const SUMMARIES_KEPT: usize = 1 << 16;

/// Threads reading ahead, shared by all listers. On an object store each
/// read waits on round trips, so more threads than cores pay off.
const THREADS: usize = 16;

/// Longest a lookup waits for a read of its entry already under way
/// before reading it itself.
const WAIT_FOR_READ: Duration = Duration::from_secs(30);

pub(super) struct StatAhead {
    shared: Arc<Shared>,
    sender: Mutex<Option<Sender<Job>>>,
    workers: Vec<JoinHandle<()>>,
    /// Subdirectories kept read or being read ahead of one lister.
    window: usize,
    /// The last entry looked up in each directory, by URI.
    last: Mutex<HashMap<String, Place>>,
}

/// Where a lister is in a directory's listing.
struct Place {
    at: usize,
    /// The listing (its address) and whether it holds enough
    /// subdirectories to read the directory whole: counted once per
    /// listing, not at each of its lookups.
    listing: usize,
    large: bool,
}

/// Directories whose last lookup is remembered; past it the memory starts
/// again empty.
const DIRS_REMEMBERED: usize = 1024;

/// How far past the last lookup the next one may be and still count as
/// going through the listing in order (the kernel may skip entries it
/// still knows).
const IN_ORDER: usize = 8;

enum Job {
    /// Read one subdirectory.
    Read {
        entry: Entry,
        /// [`Shared::changes`] when the job was queued.
        generation: u64,
        /// Where to keep the stat read, for the next reads of the parent.
        label: Option<(Entry, StatLabel)>,
    },
    /// Read a directory whole for its subdirectories in `listing`.
    Whole {
        dir: Entry,
        listing: Arc<Vec<Entry>>,
        generation: u64,
    },
}

struct Shared {
    store: Arc<dyn Store>,
    counters: Arc<Counters>,
    ttl: Duration,
    /// Bumped by every change this mount makes to a directory.
    changes: AtomicU64,
    /// Set at unmount: queued reads are dropped.
    stopping: AtomicBool,
    state: Mutex<State>,
    read_done: Condvar,
    /// Most reads kept waiting for their lookup.
    keep: usize,
    /// Subdirectories a listing must hold for its directory's read.
    whole_from: usize,
    /// Stats read are kept for the next mounts (cleared on a failure).
    saving: AtomicBool,
}

#[derive(Default)]
struct State {
    /// URIs queued or being read.
    pending: HashSet<String>,
    /// Reads done, by URI, until a lookup takes them.
    ready: HashMap<String, Ready>,
    /// Subdirectories' stats from their parent's read, by URI.
    summaries: HashMap<String, Summary>,
    /// Labels of the subdirectories that read did not tell, by URI.
    labels: HashMap<String, (Entry, StatLabel)>,
    /// Directories read whole, by URI.
    whole: HashMap<String, Whole>,
}

#[derive(Default)]
struct Whole {
    /// When the newest read finished, and [`Shared::changes`] when it
    /// started.
    done: Option<(Instant, u64)>,
    /// A read is under way.
    running: bool,
    /// The newest read told at least half the subdirectories: reading
    /// again pays.
    told_most: bool,
}

/// How long after a read of a directory that told little (its
/// subdirectories changed since their stats were kept) it is read whole
/// again, in TTLs: meanwhile they are read one by one, and their stats
/// kept.
const RETRY_AFTER_TTLS: u32 = 10;

struct Summary {
    stat: DirStat,
    at: Instant,
    generation: u64,
}

impl State {
    /// Drops what no lookup took within the TTL (the lister went).
    fn drop_expired(&mut self, ttl: Duration) {
        self.ready.retain(|_, r| r.at.elapsed() < ttl);
    }

    /// Forgets the directories read whole once too many are remembered.
    fn forget_whole(&mut self) {
        if self.whole.len() >= DIRS_REMEMBERED {
            self.whole.retain(|_, w| w.running);
        }
    }
}

struct Ready {
    read: DirRead,
    at: Instant,
    generation: u64,
}

impl StatAhead {
    /// A pool keeping up to `window` subdirectories read ahead of each
    /// lister; 0 turns reading ahead off. A directory whose listing holds
    /// `whole_from` subdirectories or more (0: none) is read whole first;
    /// stats read are kept for the next mounts when `saving`.
    pub fn new(
        store: Arc<dyn Store>,
        counters: Arc<Counters>,
        ttl: Duration,
        window: usize,
        whole_from: usize,
        saving: bool,
    ) -> Self {
        let shared = Arc::new(Shared {
            store,
            counters,
            ttl,
            changes: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            state: Mutex::default(),
            read_done: Condvar::new(),
            keep: window.saturating_mul(4),
            whole_from: if window == 0 { 0 } else { whole_from },
            saving: AtomicBool::new(saving),
        });
        if window == 0 {
            return StatAhead {
                shared,
                sender: Mutex::new(None),
                workers: Vec::new(),
                window,
                last: Mutex::default(),
            };
        }
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let workers: Vec<JoinHandle<()>> = (0..THREADS.min(window))
            .filter_map(|i| {
                let (rx, shared) = (rx.clone(), shared.clone());
                let spawned = std::thread::Builder::new()
                    .name(format!("modelfs-stat-ahead-{i}"))
                    .spawn(move || worker(&rx, &shared));
                // Fewer threads, or none: lookups then read for themselves.
                spawned
                    .inspect_err(|e| log::warn!("cannot start a stat-ahead thread: {e}"))
                    .ok()
            })
            .collect();
        // Without a worker nothing may be queued: lookups would wait.
        let sender = (!workers.is_empty()).then_some(tx);
        StatAhead {
            shared,
            sender: Mutex::new(sender),
            workers,
            window,
            last: Mutex::default(),
        }
    }

    /// A lookup of `listing[at]` in directory `dir`: when it follows the
    /// last one in order, the window's worth of subdirectories after it are
    /// read ahead, less those `known` (fresh in the inode table) or already
    /// read or being read (in a large directory, first by one read of it).
    pub fn ahead(&self, dir: &Entry, listing: &Arc<Vec<Entry>>, at: usize, known: impl Fn(&Entry) -> bool) {
        let dir_uri = dir.uri.as_str();
        let address = Arc::as_ptr(listing) as usize;
        let (in_order, large) = {
            let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
            if last.len() >= DIRS_REMEMBERED && !last.contains_key(dir_uri) {
                last.clear();
            }
            let whole_from = self.shared.whole_from;
            let prev = last.get(dir_uri).map(|p| (p.at, p.listing == address, p.large));
            let large = match prev {
                Some((_, true, large)) => large,
                _ => whole_from > 0 && listing.len() >= whole_from && subdirs_in(listing) as usize >= whole_from,
            };
            let place = Place {
                at,
                listing: address,
                large,
            };
            last.insert(dir_uri.to_string(), place);
            (prev.is_some_and(|(p, ..)| p < at && at <= p + IN_ORDER), large)
        };
        if !in_order {
            return;
        }
        // Taken out of its lock: no lock is held while another is taken.
        let Some(tx) = self.sender.lock().unwrap_or_else(PoisonError::into_inner).clone() else {
            return;
        };
        if large {
            self.whole_ahead(&tx, dir, listing, &listing[at]);
        }
        let generation = self.shared.changes.load(Ordering::SeqCst);
        let (ttl, now) = (self.shared.ttl, Instant::now());
        // Those a read of the whole directory told are skipped, so the
        // window looks further, within bounds (each lookup comes here).
        let next = (listing.iter().skip(at + 1))
            .filter(|e| e.is_dir())
            .take(self.window.saturating_mul(8));
        let untold: Vec<&Entry> = {
            let mut state = self.shared.lock();
            state.drop_expired(ttl);
            let told = |e: &Entry| {
                (state.summaries.get(&e.uri))
                    .is_some_and(|s| s.generation == generation && now.duration_since(s.at) < ttl)
            };
            next.filter(|e| !told(e))
                .take(self.window)
                .filter(|e| !state.pending.contains(&e.uri) && !state.ready.contains_key(&e.uri))
                .collect()
        };
        // `known` locks inodes: not under the state's lock.
        let dirs: Vec<&Entry> = untold.into_iter().filter(|e| !known(e)).collect();
        let mut state = self.shared.lock();
        for entry in dirs {
            if state.pending.contains(&entry.uri) || state.ready.contains_key(&entry.uri) {
                continue;
            }
            state.pending.insert(entry.uri.clone());
            let job = Job::Read {
                entry: entry.clone(),
                generation,
                label: state.labels.remove(&entry.uri),
            };
            if tx.send(job).is_err() {
                state.pending.remove(&entry.uri);
                return;
            }
        }
    }

    /// What was read ahead of directory `uri`, with when it was read: it
    /// waits for a read under way. `None` when there is none, it failed,
    /// it is older than the TTL or a change was made since it started
    /// (the lookup then reads the directory itself).
    pub fn take(&self, uri: &str) -> Option<(DirRead, Instant)> {
        let deadline = Instant::now() + WAIT_FOR_READ;
        let mut state = self.shared.lock();
        while state.pending.contains(uri) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            state = self
                .shared
                .read_done
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let generation = self.shared.changes.load(Ordering::SeqCst);
        if let Some(s) = state.summaries.remove(uri)
            && s.generation == generation
            && s.at.elapsed() < self.shared.ttl
        {
            Counters::add(&self.shared.counters.stat_ahead_told, 1);
            return Some(((s.stat.attrs, DirShape::Subdirs(s.stat.subdirs)), s.at));
        }
        let ready = state.ready.remove(uri)?;
        let current = ready.generation == generation;
        if !current || ready.at.elapsed() >= self.shared.ttl {
            return None;
        }
        Counters::add(&self.shared.counters.stat_ahead_used, 1);
        Some((ready.read, ready.at))
    }

    /// A directory changed through this mount: what was read before is not
    /// used.
    pub fn changed(&self) {
        self.shared.changes.fetch_add(1, Ordering::SeqCst);
        let mut state = self.shared.lock();
        state.ready.clear();
        state.summaries.clear();
    }

    /// Keeps what one read of `dir` tells of its subdirectories fresh for
    /// the lookups going through `listing` (now at `looked_up`): the first
    /// one waits for it, and once half the TTL has passed the next one is
    /// read in the background, so that a long listing is not held up every
    /// TTL. A read that told little is not repeated for a while: the
    /// subdirectories are read one by one meanwhile.
    fn whole_ahead(&self, tx: &Sender<Job>, dir: &Entry, listing: &Arc<Vec<Entry>>, looked_up: &Entry) {
        let generation = self.shared.changes.load(Ordering::SeqCst);
        let ttl = self.shared.ttl;
        let deadline = Instant::now() + WAIT_FOR_READ;
        let mut state = self.shared.lock();
        state.forget_whole();
        loop {
            let told_before = state.summaries.contains_key(&looked_up.uri);
            let w = state.whole.entry(dir.uri.clone()).or_default();
            let last = w.done.map(|(at, _)| at.elapsed());
            let age = w.done.filter(|(_, g)| *g == generation).and(last);
            if age.is_some_and(|a| a < ttl / 2) {
                return;
            }
            if age.is_some_and(|a| a < ttl) {
                if !w.running && w.told_most {
                    w.running = true;
                    let job = Job::Whole {
                        dir: dir.clone(),
                        listing: listing.clone(),
                        generation,
                    };
                    if tx.send(job).is_err() {
                        state.whole.entry(dir.uri.clone()).or_default().running = false;
                    }
                }
                return;
            }
            if !w.running {
                // A change here makes what was told stale, not the verdict
                // that the directory's stats were mostly unknown.
                let again = w.told_most || last.is_none_or(|a| a >= ttl.saturating_mul(RETRY_AFTER_TTLS));
                if again {
                    w.running = true;
                    drop(state);
                    self.shared.read_whole(dir, listing, generation);
                }
                return;
            }
            // Nothing fresh, and a read under way that will likely tell
            // this lookup's entry again: wait for it.
            let left = deadline.saturating_duration_since(Instant::now());
            if !told_before || left.is_zero() {
                return;
            }
            state = (self.shared.read_done.wait_timeout(state, left))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Drop for StatAhead {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.sender.lock().unwrap_or_else(PoisonError::into_inner).take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the store for the stats one read of `dir` tells of the
    /// subdirectories in `listing` (its [`Whole`] is marked running), and
    /// keeps them for the lookups.
    fn read_whole(&self, dir: &Entry, listing: &[Entry], generation: u64) {
        // The TTL counts from the start: the listing's first pages are
        // that old.
        let started = Instant::now();
        let read = self.store.dir_stats(dir, listing);
        Counters::add(&self.counters.stat_ahead_whole_reads, 1);
        let summaries = match read {
            Ok(Some(s)) if generation == self.changes.load(Ordering::SeqCst) => Some(s),
            Ok(_) => None,
            Err(e) => {
                log::debug!("{}: subdirectories read one by one: {e}", dir.uri);
                None
            }
        };
        let asked = subdirs_in(listing) as usize;
        let told_most = summaries.as_ref().is_some_and(|s| s.known.len() * 2 >= asked);
        let mut state = self.lock();
        let done = Some((started, generation));
        state.whole.insert(
            dir.uri.clone(),
            Whole {
                done,
                running: false,
                told_most,
            },
        );
        self.read_done.notify_all();
        let Some(summaries) = summaries else { return };
        log::debug!(
            "{}: {} subdirectories told, {} to read",
            dir.uri,
            summaries.known.len(),
            summaries.unknown.len()
        );
        // Once per read, not per lookup: a lookup must not walk them all.
        state.summaries.retain(|_, s| s.at.elapsed() < self.ttl);
        for (uri, stat) in summaries.known {
            if state.summaries.len() >= SUMMARIES_KEPT && !state.summaries.contains_key(&uri) {
                continue;
            }
            state.summaries.insert(
                uri,
                Summary {
                    stat,
                    at: started,
                    generation,
                },
            );
        }
        if self.saving.load(Ordering::SeqCst) {
            if state.labels.len() >= SUMMARIES_KEPT {
                state.labels.clear();
            }
            for (uri, label) in summaries.unknown {
                state.labels.insert(uri, (dir.clone(), label));
            }
        }
    }

    fn run(&self, job: Job) {
        match job {
            Job::Read {
                entry,
                generation,
                label,
            } => self.read(entry, generation, label),
            Job::Whole {
                dir,
                listing,
                generation,
            } => self.read_whole(&dir, &listing, generation),
        }
    }

    fn read(&self, entry: Entry, generation: u64, label: Option<(Entry, StatLabel)>) {
        let read = self.store.dir_with_entries(&entry);
        // As for a lookup's own read, the TTL counts from the answer: a
        // slow store must not expire what it just answered.
        let done = Instant::now();
        Counters::add(&self.counters.stat_ahead_reads, 1);
        // Kept for later mounts once the lookup has it.
        let to_save = match (&read, label) {
            (Ok((attrs, list)), Some((dir, label))) => Some((dir, label, *attrs, subdirs_in(list))),
            _ => None,
        };
        let mut state = self.lock();
        state.pending.remove(&entry.uri);
        match read {
            Ok((attrs, list)) if generation == self.changes.load(Ordering::SeqCst) => {
                if state.ready.len() >= self.keep {
                    state.drop_expired(self.ttl);
                }
                if state.ready.len() < self.keep {
                    let ready = Ready {
                        read: (attrs, DirShape::Entries(Arc::new(list))),
                        at: done,
                        generation,
                    };
                    state.ready.insert(entry.uri, ready);
                }
            }
            // The lookup reads it again and reports the error itself.
            Ok(_) | Err(_) => {}
        }
        drop(state);
        self.read_done.notify_all();
        if let Some((dir, label, attrs, subdirs)) = to_save {
            self.save(&dir, &label, DirStat { attrs, subdirs });
        }
    }

    /// Keeps a stat read after the parent's read that gave `label`; the
    /// first failure (a read-only store, say) stops that for this mount.
    fn save(&self, dir: &Entry, label: &StatLabel, stat: DirStat) {
        if !self.saving.load(Ordering::SeqCst) {
            return;
        }
        match self.store.save_dir_stat(dir, label, &stat) {
            Ok(()) => Counters::add(&self.counters.stat_ahead_saved, 1),
            Err(e) => {
                if self.saving.swap(false, Ordering::SeqCst) {
                    log::warn!(
                        "{}: cannot keep subdirectories' stats for later listings ({e}); not tried again in this mount",
                        dir.uri
                    );
                }
            }
        }
    }
}

fn worker(rx: &Mutex<Receiver<Job>>, shared: &Shared) {
    loop {
        let job = match rx.lock().unwrap_or_else(PoisonError::into_inner).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        shared.run(job);
    }
}
