//! Layer compression. Settings are pinned so the same tar always gives the same blob.

use std::io::{self, Write};

use crate::image::media_types;
use crate::store::BlobWriter;

/// gzip level used for every layer. Changing it changes every digest.
pub const GZIP_LEVEL: u32 = 6;

/// How layers are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Compression {
    /// gzip (`tar+gzip`), the default every client reads.
    #[default]
    Gzip,
}

impl Compression {
    /// The OCI layer media type for this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Self::Gzip => media_types::OCI_LAYER_GZIP,
        }
    }

    pub(super) fn encoder(self, out: BlobWriter) -> io::Result<Encoder> {
        match self {
            // No file name, mtime 0 and the "unknown" OS byte: the header never varies.
            Self::Gzip => Ok(Encoder::Gzip(
                flate2::GzBuilder::new()
                    .mtime(0)
                    .operating_system(255)
                    .write(out, flate2::Compression::new(GZIP_LEVEL)),
            )),
        }
    }
}

/// A running compressor writing into a store blob.
pub(super) enum Encoder {
    Gzip(flate2::write::GzEncoder<BlobWriter>),
}

impl Encoder {
    pub(super) fn finish(self) -> io::Result<BlobWriter> {
        match self {
            Self::Gzip(e) => e.finish(),
        }
    }
}

impl Write for Encoder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Gzip(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Gzip(e) => e.flush(),
        }
    }
}
