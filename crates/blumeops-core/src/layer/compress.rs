//! Layer compression. Settings are pinned so the same tar always gives the same blob.

use std::io::{self, Write};

use super::pgzip::ParallelGzip;
use crate::image::media_types;
use crate::store::BlobWriter;

/// gzip level used for every layer. Changing it changes every digest.
pub const GZIP_LEVEL: u32 = 6;

/// How layers are written (tar and compression settings). Part of every step cache key:
/// change it with anything that changes the bytes of a layer, so cached layers written the
/// old way are not reused as if a clean build had made them.
pub const LAYER_FORMAT: &str =
    "tar-gnu gzip-6 pgzip-1MiB stored-if-incompressible zstd-3-mt parents-from-image";

/// Most threads one layer's gzip uses: as many as it keeps blocks in flight, a fixed number
/// (see [`super::pgzip::MAX_IN_FLIGHT`]), so its memory is the same on any machine.
pub const MAX_GZIP_THREADS: usize = super::pgzip::MAX_IN_FLIGHT;

/// zstd level used for every zstd layer. Changing it changes every digest.
pub const ZSTD_LEVEL: i32 = 3;

/// Most zstd worker threads per layer. zstd's multi-threaded output does not depend on the
/// number of workers (as long as there is at least one), so digests are the same anywhere.
/// Each worker holds a job of input and its output (several MiB at level 3): a fixed
/// number keeps a layer's memory the same on any machine.
const MAX_ZSTD_WORKERS: u32 = 2;

/// How layers are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Compression {
    /// gzip (`tar+gzip`), the default every client reads.
    #[default]
    Gzip,
    /// zstd (`tar+zstd`): faster to compress and decompress; newer clients only.
    Zstd,
}

impl Compression {
    /// The OCI layer media type for this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Self::Gzip => media_types::OCI_LAYER_GZIP,
            Self::Zstd => media_types::OCI_LAYER_ZSTD,
        }
    }

    pub(crate) fn encoder(self, out: BlobWriter) -> io::Result<Encoder> {
        match self {
            // Blocks compressed on every core; the bytes do not depend on the core count.
            Self::Gzip => Ok(Encoder::Gzip(ParallelGzip::new(
                out,
                GZIP_LEVEL,
                cores().min(MAX_GZIP_THREADS),
            )?)),
            Self::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
                // Always multi-threaded (one worker at least): single-threaded zstd frames
                // differ from multi-threaded ones, and digests must not depend on the host.
                e.multithread(cores().min(MAX_ZSTD_WORKERS as usize) as u32)?;
                e.include_checksum(false)?;
                e.include_contentsize(false)?;
                Ok(Encoder::Zstd(e))
            }
        }
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// A running compressor writing into a store blob.
pub(crate) enum Encoder {
    Gzip(ParallelGzip<BlobWriter>),
    Zstd(zstd::stream::write::Encoder<'static, BlobWriter>),
}

impl Encoder {
    pub(crate) fn finish(self) -> io::Result<BlobWriter> {
        match self {
            Self::Gzip(e) => e.finish(),
            Self::Zstd(e) => e.finish(),
        }
    }
}

impl Write for Encoder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Gzip(e) => e.write(buf),
            Self::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Gzip(e) => e.flush(),
            Self::Zstd(e) => e.flush(),
        }
    }
}
