//! The FUSE adapter: fuser's `Filesystem` over the core in `crate::fs`.
//! Each handler converts arguments, calls the core, and replies; failures go
//! through [`fail`], which logs once at the error's level and replies with
//! its errno. Every call into the core runs under [`guard::guarded`], so a
//! panic there is that request's `EIO`, not a request left unanswered.
//! fuser's types stay in this file.

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use std::time::SystemTime;

use fuser::{
    BsdFileFlags, Config as FuseConfig, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, Session, SessionACL, SessionUnmounter, TimeOrNow, WriteFlags,
};
use log::{debug, info, log, warn};

use crate::fs::{Attr, CoreError, CreateFlags, Error, Fh, Ino, Kind, ModelFs, Opened, Owner, SetAttr};

mod guard;
mod passthrough;
use guard::guarded;
use passthrough::{IoModes, Mode};

/// Largest readahead the kernel may ask for in one request, in bytes. The
/// kernel's default (128 KiB) splits a page-cache read of a large file into
/// many small requests; 1 MiB requests cover four tiles each.
pub const MAX_READAHEAD_BYTES: u32 = 1 << 20;

/// Requests the kernel may have in flight in the background (readahead),
/// so several reads of a sequential reader overlap.
pub const MAX_BACKGROUND: u16 = 64;

/// Largest write request, in bytes: `cp` and Python write in 128 KiB to
/// 1 MiB pieces; larger requests mean fewer round trips per byte.
pub const MAX_WRITE_BYTES: u32 = 1 << 20;

/// The core behind fuser's trait.
pub struct FuseAdapter {
    core: Arc<ModelFs>,
    ttl: Duration,
    io: IoModes,
}

impl FuseAdapter {
    pub fn new(core: Arc<ModelFs>) -> Self {
        let ttl = core.config().metadata_ttl;
        FuseAdapter {
            core,
            ttl,
            io: IoModes::default(),
        }
    }

    /// Picks the I/O mode of an open the core answered (see
    /// [`passthrough`]) and adds it to `flags`; the backing file to name
    /// when it is passthrough.
    fn io_mode(
        &self,
        ino: INodeNo,
        o: &Opened,
        writing: bool,
        open_backing: impl FnOnce(&std::fs::File) -> io::Result<fuser::BackingId>,
    ) -> Result<(FopenFlags, Option<Arc<fuser::BackingId>>), Error> {
        let mut flags = fopen_flags(o);
        let offer = o.passthrough.as_ref();
        let (mode, refused) = self
            .io
            .open(ino.0, o.fh.0, offer.map(|b| b.version), writing, || match offer {
                Some(b) => open_backing(&b.file),
                None => Err(io::Error::other("nothing to pass through")),
            });
        if let Some(e) = refused {
            warn!(
                "FUSE passthrough off for this mount: the kernel refused a backing file ({e}); the daemon serves reads"
            );
        }
        let passed = matches!(mode, Mode::Passthrough(_));
        if offer.is_some() {
            self.core.count_passthrough(passed);
            if !passed {
                self.core.passthrough_declined(o.fh);
            }
        }
        match mode {
            Mode::Passthrough(id) => {
                // The kernel refuses passthrough opens with other flags.
                flags.remove(FopenFlags::FOPEN_KEEP_CACHE);
                Ok((flags, Some(id)))
            }
            Mode::Cached => Ok((flags, None)),
            Mode::Refused => Err(self.core.abandon_writer(o.fh, ino.0)),
        }
    }
}

trait ErrorReply {
    fn error(self, err: Errno);
}

macro_rules! error_reply {
    ($($t:ty),*) => {
        $(impl ErrorReply for $t {
            fn error(self, err: Errno) {
                <$t>::error(self, err)
            }
        })*
    };
}

error_reply!(
    ReplyAttr,
    ReplyCreate,
    ReplyData,
    ReplyDirectory,
    ReplyEmpty,
    ReplyEntry,
    ReplyOpen,
    ReplyStatfs,
    ReplyWrite,
    ReplyXattr
);

/// Logs `err` once, at its level, and replies with its errno.
fn fail(reply: impl ErrorReply, op: &str, err: Error) {
    log!(err.level, "{op}: {err} (errno {})", err.errno);
    reply.error(Errno::from_i32(err.errno));
}

impl FuseAdapter {
    /// How long the kernel may keep `attr`: not at all while the file is
    /// being written (a `stat` after `close()` must see the commit's size
    /// and mtime), the metadata TTL otherwise.
    fn attr_ttl(&self, attr: &Attr) -> Duration {
        if attr.changing { Duration::ZERO } else { self.ttl }
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino.0),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.mtime,
        kind: match a.kind {
            Kind::Dir => FileType::Directory,
            Kind::File => FileType::RegularFile,
        },
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn owner(req: &Request) -> Owner {
    Owner {
        uid: req.uid(),
        gid: req.gid(),
    }
}

/// The process (thread group) a request's thread belongs to, from
/// `/proc/<tid>/status`; `None` when it cannot be told.
fn process_of(tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

fn fopen_flags(o: &Opened) -> FopenFlags {
    let mut f = FopenFlags::empty();
    if o.keep_cache {
        f |= FopenFlags::FOPEN_KEEP_CACHE;
    }
    if o.direct_io {
        f |= FopenFlags::FOPEN_DIRECT_IO;
    }
    f
}

/// EPERM: the registry stores regular files and directories only.
fn special_file(name: &OsStr) -> Error {
    CoreError::SpecialFile { name: name.to_owned() }.into()
}

/// ENOTSUP for what the registry cannot store.
fn unsupported(what: &'static str, name: &OsStr) -> Error {
    CoreError::Unsupported {
        what,
        name: name.to_owned(),
    }
    .into()
}

fn name_str<'a>(name: &'a OsStr, op: &'static str) -> Result<&'a str, Error> {
    name.to_str().ok_or_else(|| {
        CoreError::NotUtf8 {
            op,
            name: name.to_owned(),
        }
        .into()
    })
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        if let Err(max) = config.set_max_readahead(MAX_READAHEAD_BYTES) {
            let _ = config.set_max_readahead(max);
        }
        if let Err(max) = config.set_max_background(MAX_BACKGROUND) {
            let _ = config.set_max_background(max);
        }
        if let Err(max) = config.set_max_write(MAX_WRITE_BYTES) {
            let _ = config.set_max_write(max);
        }
        // Opens made direct while another handle reads an older version
        // must still map shared, as loaders do: without it (before Linux
        // 6.6) none is made direct.
        match config.add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP) {
            Ok(()) => self.core.set_direct_io_mmap(true),
            Err(_) => warn!(
                "the kernel cannot map files opened with direct I/O (Linux 6.6+): a file's newer version opened while a descriptor reads an older one may read that one's bytes from the page cache"
            ),
        }
        if self.core.config().passthrough && self.core.config().disk_cache.is_some() {
            match config.add_capabilities(InitFlags::FUSE_PASSTHROUGH) {
                // Depth 2: the cache may itself be on a stacked filesystem
                // (overlayfs in containers); the price is that the mount
                // cannot be stacked under one.
                Ok(()) => match config.set_max_stack_depth(2) {
                    Ok(_) => self.io.set_available(true),
                    Err(max) => warn!("FUSE passthrough off: stack depth 2 refused (at most {max})"),
                },
                Err(_) => warn!(
                    "FUSE passthrough off: the kernel does not offer it (Linux 6.9+ with CONFIG_FUSE_PASSTHROUGH); the daemon serves reads from the disk cache"
                ),
            }
        }
        Ok(())
    }

    fn destroy(&mut self) {
        let _ = guarded("destroy", || {
            self.core.log_summary();
            Ok(())
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let forgot = guarded("forget", || {
            self.core.forget(Ino(ino.0), nlookup);
            Ok(())
        });
        if let Err(e) = forgot {
            log!(e.level, "forget: {e}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let result = guarded("lookup", || {
            name_str(name, "lookup").and_then(|n| self.core.lookup(Ino(parent.0), n))
        });
        match result {
            Ok(attr) => reply.entry(&self.attr_ttl(&attr), &file_attr(&attr), Generation(0)),
            Err(e) => fail(reply, "lookup", e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match guarded("getattr", || self.core.getattr(Ino(ino.0))) {
            Ok(attr) => reply.attr(&self.attr_ttl(&attr), &file_attr(&attr)),
            Err(e) => fail(reply, "getattr", e),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY);
        let truncate = flags.0 & libc::O_TRUNC != 0;
        let opener = if write { process_of(req.pid()) } else { None };
        match guarded("open", || self.core.open(Ino(ino.0), write, truncate, opener)) {
            Ok(o) => match self.io_mode(ino, &o, write, |f| reply.open_backing(f)) {
                Ok((flags, Some(id))) => reply.opened_passthrough(FileHandle(o.fh.0), flags, &id),
                Ok((flags, None)) => reply.opened(FileHandle(o.fh.0), flags),
                Err(e) => fail(reply, "open", e),
            },
            Err(e) => fail(reply, "open", e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        if mode & libc::S_IFMT != 0 && mode & libc::S_IFMT != libc::S_IFREG {
            return fail(reply, "create", special_file(name));
        }
        let how = CreateFlags {
            exclusive: flags & libc::O_EXCL != 0,
            truncate: flags & libc::O_TRUNC != 0,
        };
        let opener = process_of(req.pid());
        let who = owner(req);
        let result = guarded("create", || {
            name_str(name, "create").and_then(|n| self.core.create(Ino(parent.0), n, how, opener, mode & !umask, who))
        });
        match result {
            // Not cached by the kernel: the file exists only if its first
            // commit succeeds.
            Ok((attr, o)) => {
                match self.io_mode(INodeNo(attr.ino.0), &o, true, |_| Err(io::Error::other("not offered"))) {
                    Ok((flags, _)) => reply.created(
                        &Duration::ZERO,
                        &file_attr(&attr),
                        Generation(0),
                        FileHandle(o.fh.0),
                        flags,
                    ),
                    Err(e) => fail(reply, "create", e),
                }
            }
            Err(e) => fail(reply, "create", e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match guarded("write", || self.core.write(Fh(fh.0), offset, data)) {
            Ok(n) => reply.written(n),
            Err(e) => fail(reply, "write", e),
        }
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match guarded("fsync", || self.core.fsync(Fh(fh.0))) {
            Ok(()) => reply.ok(),
            Err(e) => fail(reply, "fsync", e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let time = |t: TimeOrNow| match t {
            TimeOrNow::SpecificTime(t) => t,
            TimeOrNow::Now => SystemTime::now(),
        };
        // A truncation comes with "mtime = now": its commit sets the mtime.
        let mtime = mtime.filter(|t| size.is_none() || !matches!(t, TimeOrNow::Now));
        let change = SetAttr {
            size,
            mode,
            uid,
            gid,
            atime: atime.map(time),
            mtime: mtime.map(time),
            fh: fh.map(|f| Fh(f.0)),
        };
        match guarded("setattr", || self.core.setattr(Ino(ino.0), change)) {
            Ok(attr) => reply.attr(&self.attr_ttl(&attr), &file_attr(&attr)),
            Err(e) => fail(reply, "setattr", e),
        }
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let who = owner(req);
        match guarded("mkdir", || {
            name_str(name, "mkdir").and_then(|n| self.core.mkdir(Ino(parent.0), n, mode & !umask, who))
        }) {
            Ok(attr) => reply.entry(&self.attr_ttl(&attr), &file_attr(&attr), Generation(0)),
            Err(e) => fail(reply, "mkdir", e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match guarded("unlink", || {
            name_str(name, "unlink").and_then(|n| self.core.unlink(Ino(parent.0), n))
        }) {
            Ok(()) => reply.ok(),
            Err(e) => fail(reply, "unlink", e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match guarded("rmdir", || {
            name_str(name, "rmdir").and_then(|n| self.core.rmdir(Ino(parent.0), n))
        }) {
            Ok(()) => reply.ok(),
            Err(e) => fail(reply, "rmdir", e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !flags.is_empty() {
            let e = CoreError::RenameFlags {
                flags: format!("{flags:?}"),
            }
            .into();
            return fail(reply, "rename", e);
        }
        let result = guarded("rename", || {
            let from = name_str(name, "rename")?;
            let to = name_str(newname, "rename")?;
            self.core.rename(Ino(parent.0), from, Ino(newparent.0), to)
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => fail(reply, "rename", e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        fail(reply, "mknod", special_file(name));
    }

    fn symlink(&self, _req: &Request, _parent: INodeNo, link_name: &OsStr, _target: &Path, reply: ReplyEntry) {
        fail(reply, "symlink", unsupported("symbolic links", link_name));
    }

    fn link(&self, _req: &Request, _ino: INodeNo, _newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        fail(reply, "link", unsupported("hard links", newname));
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        fail(reply, "setxattr", unsupported("extended attributes", name));
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        fail(reply, "removexattr", unsupported("extended attributes", name));
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match guarded("read", || self.core.read(Fh(fh.0), offset, size)) {
            Ok(data) => reply.data(&data),
            Err(e) => fail(reply, "read", e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.io.release(fh.0);
        let released = guarded("release", || {
            self.core.release(Fh(fh.0));
            Ok(())
        });
        match released {
            Ok(()) => reply.ok(),
            Err(e) => fail(reply, "release", e),
        }
    }

    fn flush(&self, req: &Request, _ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // A writing handle commits here, so `close()` returns its errors.
        match guarded("flush", || self.core.flush(Fh(fh.0), process_of(req.pid()))) {
            Ok(()) => reply.ok(),
            Err(e) => fail(reply, "flush", e),
        }
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        // Entries have no extended attributes. ENOSYS makes the kernel
        // answer every later getxattr itself (EOPNOTSUPP): `ls -l` asks for
        // two per entry, and the kernel for `security.capability` at every
        // write, each a round trip through the daemon otherwise.
        reply.error(Errno::from_i32(libc::ENOSYS));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 { reply.size(0) } else { reply.data(&[]) }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match guarded("opendir", || self.core.opendir(Ino(ino.0))) {
            Ok(fh) => reply.opened(FileHandle(fh.0), FopenFlags::empty()),
            Err(e) => fail(reply, "opendir", e),
        }
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        match guarded("readdir", || self.core.readdir(Fh(fh.0), offset)) {
            Ok(items) => {
                for item in items {
                    let kind = match item.kind {
                        Kind::Dir => FileType::Directory,
                        Kind::File => FileType::RegularFile,
                    };
                    if reply.add(INodeNo(item.ino.0), item.next_offset, kind, &item.name) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => fail(reply, "readdir", e),
        }
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        let released = guarded("releasedir", || {
            self.core.releasedir(Fh(fh.0));
            Ok(())
        });
        match released {
            Ok(()) => reply.ok(),
            Err(e) => fail(reply, "releasedir", e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = match guarded("statfs", || Ok(self.core.statfs())) {
            Ok(s) => s,
            Err(e) => return fail(reply, "statfs", e),
        };
        reply.statfs(
            s.blocks,
            s.blocks_free,
            s.blocks_available,
            s.files,
            s.files_free,
            s.block_size,
            s.name_max,
            s.block_size,
        );
    }
}

/// Lets the kernel read ahead [`MAX_READAHEAD_BYTES`] per request: it caps
/// FUSE readahead at the mount's `read_ahead_kb` (128 by default), and
/// 128 KiB requests cost the daemon a quarter more CPU per byte than 1 MiB
/// ones (measured on a 1 GiB cold read). Needs root; otherwise the kernel's
/// default stays.
fn raise_readahead(mountpoint: &Path) {
    // The device number comes from the mount table: a stat of the mount
    // would wait for this daemon, which is not serving yet.
    let Ok(target) = mountpoint.canonicalize() else { return };
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let Some(dev) = table.lines().rev().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        (fields.get(4).copied() == target.to_str())
            .then(|| fields.get(2).copied())
            .flatten()
    }) else {
        return;
    };
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    match std::fs::write(&path, (MAX_READAHEAD_BYTES / 1024).to_string()) {
        Ok(()) => debug!("{path} set to {}", MAX_READAHEAD_BYTES / 1024),
        Err(e) => debug!("{path}: {e}; the kernel's readahead stays"),
    }
}

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Shown as the source in the mount table.
    pub fs_name: String,
    pub read_only: bool,
    pub allow_other: bool,
    /// FUSE request threads.
    pub threads: usize,
}

/// A mounted filesystem, served until unmounted.
pub struct Mounted {
    session: Session<FuseAdapter>,
}

impl Mounted {
    /// Mounts `core` at `mountpoint`; the mount exists when this returns.
    pub fn new(core: Arc<ModelFs>, mountpoint: &Path, options: &MountOptions) -> io::Result<Self> {
        let mut mount_options = vec![
            MountOption::FSName(options.fs_name.clone()),
            MountOption::Subtype("modelfs".into()),
            MountOption::DefaultPermissions,
            MountOption::NoAtime,
            MountOption::NoDev,
            MountOption::NoSuid,
        ];
        if options.read_only {
            mount_options.push(MountOption::RO);
        }
        let mut config = FuseConfig::default();
        config.mount_options = mount_options;
        config.acl = if options.allow_other {
            SessionACL::All
        } else {
            SessionACL::Owner
        };
        config.n_threads = Some(options.threads.max(1));
        config.clone_fd = true;
        let session = Session::new(FuseAdapter::new(core), mountpoint, &config)?;
        raise_readahead(mountpoint);
        info!("mounted {} at {}", options.fs_name, mountpoint.display());
        Ok(Mounted { session })
    }

    /// Something that unmounts from another thread (signal handling).
    pub fn unmounter(&mut self) -> SessionUnmounter {
        self.session.unmount_callable()
    }

    /// Serves requests until the filesystem is unmounted.
    pub fn run(self) -> io::Result<()> {
        let r = self.session.run();
        debug!("session ended: {r:?}");
        r
    }
}
