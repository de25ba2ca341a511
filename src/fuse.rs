//! The FUSE adapter: fuser's `Filesystem` over the core in `crate::fs`.
//! Each handler converts arguments, calls the core, and replies; failures go
//! through [`fail`], which logs once at the error's level and replies with
//! its errno. fuser's types stay in this file.

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    Config as FuseConfig, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, MountOption, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request, Session, SessionACL, SessionUnmounter,
};
use log::{debug, info, log};

use crate::fs::{Attr, Error, Fh, Ino, Kind, ModelFs};

/// Largest readahead the kernel may ask for in one request, in bytes. The
/// kernel's default (128 KiB) splits a page-cache read of a large file into
/// many small requests; 1 MiB requests cover four tiles each.
pub const MAX_READAHEAD_BYTES: u32 = 1 << 20;

/// Requests the kernel may have in flight in the background (readahead),
/// so several reads of a sequential reader overlap.
pub const MAX_BACKGROUND: u16 = 64;

/// The core behind fuser's trait.
pub struct FuseAdapter {
    core: Arc<ModelFs>,
    ttl: Duration,
}

impl FuseAdapter {
    pub fn new(core: Arc<ModelFs>) -> Self {
        let ttl = core.config().metadata_ttl;
        FuseAdapter { core, ttl }
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

error_reply!(ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen);

/// Logs `err` once, at its level, and replies with its errno.
fn fail(reply: impl ErrorReply, op: &str, err: Error) {
    log!(err.level, "{op}: {err} (errno {})", err.errno);
    reply.error(Errno::from_i32(err.errno));
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino.0),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
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

fn name_str<'a>(name: &'a OsStr, op: &str) -> Result<&'a str, Error> {
    name.to_str().ok_or_else(|| {
        Error::new(
            libc::ENOENT,
            log::Level::Debug,
            format!("{op}: name {name:?} is not UTF-8"),
        )
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
        Ok(())
    }

    fn destroy(&mut self) {
        self.core.log_summary();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let result = name_str(name, "lookup").and_then(|n| self.core.lookup(Ino(parent.0), n));
        match result {
            Ok(attr) => reply.entry(&self.ttl, &file_attr(&attr), Generation(0)),
            Err(e) => fail(reply, "lookup", e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.core.getattr(Ino(ino.0)) {
            Ok(attr) => reply.attr(&self.ttl, &file_attr(&attr)),
            Err(e) => fail(reply, "getattr", e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY);
        match self.core.open(Ino(ino.0), write) {
            Ok(o) => {
                let mut f = FopenFlags::empty();
                if o.keep_cache {
                    f |= FopenFlags::FOPEN_KEEP_CACHE;
                }
                if o.direct_io {
                    f |= FopenFlags::FOPEN_DIRECT_IO;
                }
                reply.opened(FileHandle(o.fh.0), f)
            }
            Err(e) => fail(reply, "open", e),
        }
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
        match self.core.read(Fh(fh.0), offset, size) {
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
        self.core.release(Fh(fh.0));
        reply.ok();
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // Nothing is buffered for writing on a read-only mount.
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        // Entries have no extended attributes.
        reply.error(Errno::from_i32(libc::ENODATA));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 { reply.size(0) } else { reply.data(&[]) }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.core.opendir(Ino(ino.0)) {
            Ok(fh) => reply.opened(FileHandle(fh.0), FopenFlags::empty()),
            Err(e) => fail(reply, "opendir", e),
        }
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        match self.core.readdir(Fh(fh.0), offset) {
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
        self.core.releasedir(Fh(fh.0));
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.core.statfs();
        reply.statfs(s.blocks, 0, 0, s.files, 0, s.block_size, s.name_max, s.block_size);
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
