//! One dense fragment's tiles read straight from its attribute file when
//! they are stored unfiltered: one ranged read and one copy per read, where
//! a query also fills TileDB's tile buffers and copies twice more.
//!
//! The layout read here is TileDB's documented format (format versions 12
//! to 22, the one libtiledb 2.30 writes): a fragment is the folder
//! `__fragments/__<t1>_<t2>_<uuid>_<version>`, and attribute `i`'s tiles lie
//! back to back in its file `a<i>.tdb`, in the fragment's tile order. Each
//! tile is stored as a `u64` chunk count, then per chunk a `u32` unfiltered
//! size, a `u32` stored size and a `u32` metadata size, the metadata and the
//! data (little-endian). Filters (compression, checksums, encryption)
//! change the sizes or add metadata: such tiles are refused, never misread.
//! Every tile read is checked against that layout, so a file that does not
//! hold it gives an error, never other bytes.

use std::sync::atomic::{AtomicU64, Ordering};

use super::context::Context;
use super::error::{Error, Result};
use super::vfs::{ReadFile, Vfs};

/// The fragment format versions whose layout is known (see above).
const FORMAT_VERSIONS: std::ops::RangeInclusive<u32> = 12..=22;

/// A tile's chunk count and one chunk's sizes, in bytes.
const COUNT_BYTES: usize = 8;
const CHUNK_HEADER_BYTES: usize = 12;

const OP: &str = "stored tiles";

/// Bytes read as stored tiles over the life of the process.
static BYTES_READ: AtomicU64 = AtomicU64::new(0);

/// Bytes read as stored tiles, without a query, over the life of the
/// process.
pub fn stored_tile_bytes() -> u64 {
    BYTES_READ.load(Ordering::Relaxed)
}

/// The first `tiles` tiles of one attribute of one dense fragment, stored
/// unfiltered, `tile_bytes` each.
pub struct StoredTiles {
    file: ReadFile,
    tile_bytes: u64,
    /// Bytes one tile takes in the file (its data and chunk headers).
    stride: u64,
    tiles: u64,
}

impl StoredTiles {
    /// The fragment of the array at `array_uri` written at `timestamp`
    /// (both ends of its range) whose only attribute holds exactly `tiles`
    /// unfiltered tiles of `tile_bytes`, when the array has `fragments`
    /// fragments at that timestamp and exactly one of them is such. Lists
    /// the fragments and sizes their attribute files; then reads the first,
    /// a middle and the last tile both as stored and through `query` (tile
    /// index, buffer to append its bytes to), which must agree: a fragment
    /// not where the layout puts it (another domain, another attribute's
    /// file) is refused, not read.
    ///
    /// # Errors
    /// Why the tiles cannot be read this way (the fragments, their format
    /// version, their sizes, a filtered or disagreeing tile) or the
    /// storage error.
    pub fn find(
        ctx: &Context,
        array_uri: &str,
        timestamp: u64,
        fragments: usize,
        tile_bytes: u64,
        tiles: u64,
        query: impl Fn(u64, &mut Vec<u8>) -> Result<()>,
    ) -> Result<Self> {
        let refuse = |why: String| Error::new(OP, format!("{array_uri}: {why}"));
        if tiles == 0 || tile_bytes == 0 {
            return Err(refuse("no whole tile".into()));
        }
        let vfs = Vfs::new(ctx)?;
        let folder = format!("{}/__fragments", array_uri.trim_end_matches('/'));
        let mut at_t = Vec::new();
        for uri in vfs.ls(&folder)? {
            let name = uri.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
            if let Some((range, version)) = parse_fragment_name(name)
                && range == (timestamp, timestamp)
            {
                if !FORMAT_VERSIONS.contains(&version) {
                    return Err(refuse(format!(
                        "fragment {name}: format version {version} is not known here"
                    )));
                }
                at_t.push(uri);
            }
        }
        if at_t.len() != fragments {
            return Err(refuse(format!(
                "{} fragments at {timestamp}, {fragments} expected",
                at_t.len()
            )));
        }
        let mut found = None;
        for uri in at_t {
            let file = format!("{}/a0.tdb", uri.trim_end_matches('/'));
            let size = vfs.file_size(&file)?;
            let stride = size / tiles;
            let fits = size.is_multiple_of(tiles)
                && stride >= tile_bytes + (COUNT_BYTES + CHUNK_HEADER_BYTES) as u64
                && stride - tile_bytes <= max_header_bytes(tile_bytes);
            if fits {
                if found.is_some() {
                    return Err(refuse(format!("two fragments at {timestamp} hold {tiles} tiles")));
                }
                found = Some((file, stride));
            }
        }
        let (file, stride) =
            found.ok_or_else(|| refuse(format!("no fragment at {timestamp} holds {tiles} unfiltered tiles")))?;
        let stored = StoredTiles {
            file: vfs.open_read(&file)?,
            tile_bytes,
            stride,
            tiles,
        };
        for k in [0, tiles / 2, tiles - 1] {
            let (mut as_stored, mut queried) = (Vec::new(), Vec::new());
            stored.read_append(k, 1, &mut as_stored)?;
            query(k, &mut queried)?;
            if as_stored != queried {
                return Err(refuse(format!("{file}: tile {k} is not the array's tile {k}")));
            }
        }
        Ok(stored)
    }

    /// How many tiles there are.
    pub fn tiles(&self) -> u64 {
        self.tiles
    }

    /// Appends the data of tiles `first..first + count` to `out`: all of
    /// it, or an error and `out` as it was.
    pub fn read_append(&self, first: u64, count: u64, out: &mut Vec<u8>) -> Result<()> {
        if first.saturating_add(count) > self.tiles {
            return Err(Error::new(
                OP,
                format!(
                    "{}: tiles {first}..{} of {}",
                    self.file.uri(),
                    first + count,
                    self.tiles
                ),
            ));
        }
        let start = out.len();
        let stored = usize::try_from(count * self.stride)
            .map_err(|_| Error::new(OP, format!("{}: {count} tiles", self.file.uri())))?;
        self.file.read_append(first * self.stride, stored, out)?;
        match unfilter_in_place(&mut out[start..], self.stride as usize, self.tile_bytes as usize) {
            Ok(n) => {
                out.truncate(start + n);
                BYTES_READ.fetch_add(n as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(why) => {
                out.truncate(start);
                Err(Error::new(
                    OP,
                    format!("{}: tile {}: {why}", self.file.uri(), first + why.tile as u64),
                ))
            }
        }
    }
}

/// Smallest chunk taken: TileDB cuts tiles into chunks of 64 KiB unless a
/// filter list asks otherwise (such arrays are read by queries). The bound
/// keeps a read's buffer within 0.02% of the bytes it returns, whatever an
/// array's files claim.
const MIN_CHUNK_BYTES: u64 = 64 * 1024;

/// The most header bytes a tile of `tile_bytes` may carry here.
fn max_header_bytes(tile_bytes: u64) -> u64 {
    COUNT_BYTES as u64 + CHUNK_HEADER_BYTES as u64 * tile_bytes.div_ceil(MIN_CHUNK_BYTES)
}

/// `(timestamp range, format version)` of a fragment folder name
/// `__<t1>_<t2>_<uuid>_<version>`.
fn parse_fragment_name(name: &str) -> Option<((u64, u64), u32)> {
    let mut parts = name.strip_prefix("__")?.split('_');
    let t1 = parts.next()?.parse().ok()?;
    let t2 = parts.next()?.parse().ok()?;
    let _uuid = parts.next()?;
    let version = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some(((t1, t2), version))
}

/// Where a stored tile departs from the unfiltered layout.
#[derive(Debug, PartialEq, Eq)]
struct Malformed {
    /// The tile, counted from the start of the buffer.
    tile: usize,
    why: &'static str,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.why)
    }
}

/// Turns `buf`, whole stored tiles of `stride` bytes each, into their data
/// (`tile_bytes` per tile) at its start; returns the data's length.
fn unfilter_in_place(buf: &mut [u8], stride: usize, tile_bytes: usize) -> std::result::Result<usize, Malformed> {
    let mut out = 0;
    for (tile, at) in (0..buf.len()).step_by(stride.max(1)).enumerate() {
        let bad = |why| Malformed { tile, why };
        let end = at + stride;
        if end > buf.len() {
            return Err(bad("cut short"));
        }
        let count = u64::from_le_bytes(buf[at..at + COUNT_BYTES].try_into().expect("8 bytes"));
        let mut pos = at + COUNT_BYTES;
        let mut data = 0;
        for _ in 0..count {
            if pos + CHUNK_HEADER_BYTES > end {
                return Err(bad("chunk headers run past the tile"));
            }
            let word = |k: usize| u32::from_le_bytes(buf[pos + 4 * k..pos + 4 * k + 4].try_into().expect("4 bytes"));
            let (unfiltered, stored, metadata) = (word(0) as usize, word(1) as usize, word(2));
            if metadata != 0 || unfiltered != stored {
                return Err(bad("filtered (a chunk with metadata or of another stored size)"));
            }
            pos += CHUNK_HEADER_BYTES;
            if pos + stored > end || data + stored > tile_bytes {
                return Err(bad("a chunk runs past the tile"));
            }
            buf.copy_within(pos..pos + stored, out + data);
            pos += stored;
            data += stored;
        }
        if pos != end || data != tile_bytes {
            return Err(bad("the chunks do not fill the tile"));
        }
        out += data;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tiles` stored as TileDB stores them unfiltered, in chunks of `chunk`.
    fn stored(tiles: &[&[u8]], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for t in tiles {
            out.extend_from_slice(&(t.len().div_ceil(chunk) as u64).to_le_bytes());
            for c in t.chunks(chunk) {
                for v in [c.len() as u32, c.len() as u32, 0] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out.extend_from_slice(c);
            }
        }
        out
    }

    #[test]
    fn unfiltered_tiles_become_their_data() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
        let tiles: Vec<&[u8]> = data.chunks(1024).collect();
        let mut buf = stored(&tiles, 256);
        let stride = buf.len() / 4;
        assert_eq!(stride, 1024 + 8 + 4 * 12);
        let n = unfilter_in_place(&mut buf, stride, 1024).unwrap();
        assert_eq!(&buf[..n], &data[..]);
    }

    #[test]
    fn filtered_or_foreign_tiles_are_refused() {
        let data = vec![9u8; 2048];
        let good = stored(&[&data[..1024], &data[1024..]], 512);
        let stride = good.len() / 2;
        let word = |tile: usize, chunk: usize, k: usize| tile * stride + 8 + chunk * (12 + 512) + 4 * k;
        type Spoil<'a> = Box<dyn Fn(&mut Vec<u8>) + 'a>;
        let cases: [(&str, Spoil); 5] = [
            ("compressed", Box::new(|b| b[word(1, 0, 1)] = 7)),
            ("checksummed", Box::new(|b| b[word(0, 1, 2)] = 32)),
            ("a chunk too many", Box::new(|b| b[stride] = 3)),
            ("a chunk too few", Box::new(|b| b[0] = 1)),
            ("cut short", Box::new(|b| b.truncate(stride + 100))),
        ];
        for (what, spoil) in cases {
            let mut buf = good.clone();
            spoil(&mut buf);
            assert!(unfilter_in_place(&mut buf, stride, 1024).is_err(), "{what} was read");
        }
        let mut buf = good.clone();
        assert_eq!(unfilter_in_place(&mut buf, stride, 1024), Ok(2048));
    }

    #[test]
    fn fragment_names_give_their_range_and_format_version() {
        assert_eq!(
            parse_fragment_name("__1796398711789_1796398711789_5c1382fee5a0fd98b19d24155f9491d0_22"),
            Some(((1796398711789, 1796398711789), 22))
        );
        assert_eq!(parse_fragment_name("__1_2_abc_22_x"), None);
        assert_eq!(parse_fragment_name("__commits"), None);
        assert_eq!(parse_fragment_name("a0.tdb"), None);
    }
}
