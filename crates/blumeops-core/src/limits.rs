//! Limits on what blumeops accepts from images, archives and Dockerfiles, in one place.
//!
//! Everything blumeops reads from a registry, an archive or a build context is hostile input:
//! each size, count and depth it holds in memory or writes to disk is bounded here, and going
//! past a bound is an error naming what was too big, where, and the limit (see
//! [`LimitExceeded`]). The limits are far above what real images and Dockerfiles use.
//!
//! The layer limits can be changed with environment variables (a layer with a legitimately
//! huge sparse file, say): [`MAX_LAYER_BYTES_ENV`], [`MAX_LAYER_RATIO_ENV`] and
//! [`MAX_LAYER_ENTRIES_ENV`]. They are read when [`UnpackOptions`](crate::UnpackOptions) are
//! made; a value that is not a whole number is ignored.

use std::io::{self, Read};

/// Largest manifest or index read (zot's own limit is 4 MiB). The registry client reads at
/// most this much of a manifest response.
pub const MAX_MANIFEST_BYTES: u64 = 8 * 1024 * 1024;
/// Largest image config read (configs are held in memory).
pub const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;
/// Most layers an image may have (overlayfs stacks at most 500 lower directories; Docker
/// refuses more than 127).
pub const MAX_LAYERS: usize = 256;
/// Most manifests an index may list.
pub const MAX_INDEX_MANIFESTS: usize = 1024;

/// Default cap on a layer's uncompressed size: 64 GiB.
pub const MAX_LAYER_BYTES: u64 = 64 << 30;
/// Environment variable overriding [`MAX_LAYER_BYTES`].
pub const MAX_LAYER_BYTES_ENV: &str = "BLUMEOPS_MAX_LAYER_BYTES";
/// Default bound on how many times larger a layer may be uncompressed than compressed,
/// beyond [`LAYER_RATIO_FLOOR_BYTES`]: a decompression bomb is refused once it has expanded
/// this far, whatever the codec. `0` turns the ratio check off.
pub const MAX_LAYER_RATIO: u64 = 256;
/// Environment variable overriding [`MAX_LAYER_RATIO`].
pub const MAX_LAYER_RATIO_ENV: &str = "BLUMEOPS_MAX_LAYER_RATIO";
/// A layer may always expand to this many bytes, whatever its ratio.
pub const LAYER_RATIO_FLOOR_BYTES: u64 = 64 << 20;
/// Most tar entries in one layer (headers of every kind, whiteouts included).
pub const MAX_LAYER_ENTRIES: u64 = 1_000_000;
/// Environment variable overriding [`MAX_LAYER_ENTRIES`].
pub const MAX_LAYER_ENTRIES_ENV: &str = "BLUMEOPS_MAX_LAYER_ENTRIES";
/// Most components in a path inside a layer.
pub const MAX_PATH_DEPTH: usize = 256;
/// Longest path (or link target) inside a layer, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Most bytes of tar metadata (GNU long names and links, PAX records, sparse maps) read for
/// one entry; the tar reader holds them in memory.
pub const MAX_TAR_HEADER_BYTES: u64 = 1024 * 1024;

/// Largest Dockerfile read.
pub const MAX_DOCKERFILE_BYTES: u64 = 4 * 1024 * 1024;
/// Longest Dockerfile instruction, continuation lines joined.
pub const MAX_DOCKERFILE_LINE_BYTES: usize = 1024 * 1024;
/// Most instructions in a Dockerfile.
pub const MAX_DOCKERFILE_INSTRUCTIONS: usize = 10_000;
/// Largest heredoc body in a Dockerfile.
pub const MAX_HEREDOC_BYTES: usize = 1024 * 1024;
/// Longest word after variable substitution (build args, `ARG`, `ENV`): `ARG A=${A}${A}`
/// repeated doubles each time and would otherwise grow without bound.
pub const MAX_EXPANDED_BYTES: usize = 1024 * 1024;
/// Most bytes produced by variable substitution in one Dockerfile, all words together.
pub const MAX_EXPANDED_TOTAL_BYTES: usize = 64 * 1024 * 1024;
/// Most work spent matching the patterns of `${VAR#pattern}`, `${VAR%pattern}` and
/// `${VAR/pattern/string}` in one Dockerfile (and in one value finished at evaluation). A step
/// checks one character against up to 64 of the pattern's; real patterns take thousands, a
/// hostile one (long pattern, long value, many times) would otherwise take minutes.
pub const MAX_PATTERN_STEPS: u64 = 1 << 28;

/// A value from the environment variable `name`, else `default`.
pub(crate) fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Something was bigger (or more numerous) than blumeops accepts. Carried as the source of
/// the error that names the file, layer or image it was found in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitExceeded {
    /// What was too big, e.g. "the layer's tar entries".
    pub what: String,
    /// The limit, in `unit`.
    pub limit: u64,
    /// e.g. "bytes", "entries".
    pub unit: &'static str,
    /// The environment variable that raises the limit, when there is one.
    pub env: Option<&'static str>,
}

impl LimitExceeded {
    /// `what` exceeds `limit` `unit`.
    pub(crate) fn new(what: impl Into<String>, limit: u64, unit: &'static str) -> Self {
        Self {
            what: what.into(),
            limit,
            unit,
            env: None,
        }
    }

    /// Name the environment variable that raises the limit.
    #[must_use]
    pub(crate) fn with_env(mut self, env: &'static str) -> Self {
        self.env = Some(env);
        self
    }

    /// As an I/O error (for readers), recoverable with [`LimitExceeded::find`].
    pub(crate) fn into_io(self) -> io::Error {
        io::Error::other(self)
    }

    /// The [`LimitExceeded`] an I/O error carries, if any.
    pub(crate) fn find(e: &io::Error) -> Option<&LimitExceeded> {
        e.get_ref().and_then(|inner| inner.downcast_ref::<Self>())
    }
}

impl std::fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} exceeds the limit of {} {}",
            self.what, self.limit, self.unit
        )?;
        if let Some(env) = self.env {
            write!(f, " (set {env} to change it)")?;
        }
        Ok(())
    }
}

impl std::error::Error for LimitExceeded {}

/// The uncompressed-size bound for a layer of `compressed` bytes: at most `max_bytes`, and
/// at most `ratio` times `compressed` beyond [`LAYER_RATIO_FLOOR_BYTES`] (`ratio` 0: no
/// ratio bound). Returns the bound and whether the ratio is what set it.
pub(crate) fn expansion_bound(compressed: u64, max_bytes: u64, ratio: u64) -> (u64, bool) {
    if ratio == 0 {
        return (max_bytes, false);
    }
    let by_ratio = compressed
        .saturating_mul(ratio)
        .max(LAYER_RATIO_FLOOR_BYTES);
    if by_ratio < max_bytes {
        (by_ratio, true)
    } else {
        (max_bytes, false)
    }
}

/// [`expansion_bound`] for a stream of `compressed` bytes with the limits as configured
/// ([`MAX_LAYER_BYTES_ENV`], [`MAX_LAYER_RATIO_ENV`], else the defaults).
pub(crate) fn configured_expansion_bound(compressed: u64) -> u64 {
    expansion_bound(
        compressed,
        env_u64(MAX_LAYER_BYTES_ENV, MAX_LAYER_BYTES),
        env_u64(MAX_LAYER_RATIO_ENV, MAX_LAYER_RATIO),
    )
    .0
}

/// The failure of a guarded archive decompression (an archive as a whole, e.g. `ADD` or a
/// compressed docker archive).
pub(crate) fn archive_too_large(limit: u64) -> LimitExceeded {
    LimitExceeded::new("the archive's uncompressed size", limit, "bytes")
        .with_env(MAX_LAYER_RATIO_ENV)
}

/// Counts what a decompressor (any codec) produces and fails with [`LimitExceeded`] once it
/// passes a bound: the guard against decompression bombs.
pub(crate) struct ExpansionGuard<R> {
    inner: R,
    produced: u64,
    bound: u64,
    exceeded: fn(u64) -> LimitExceeded,
}

impl<R: Read> ExpansionGuard<R> {
    /// Wrap `inner`; `exceeded(bound)` describes the failure.
    pub(crate) fn new(inner: R, bound: u64, exceeded: fn(u64) -> LimitExceeded) -> Self {
        Self {
            inner,
            produced: 0,
            bound,
            exceeded,
        }
    }
}

impl<R: Read> Read for ExpansionGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.produced > self.bound {
            return Err((self.exceeded)(self.bound).into_io());
        }
        // Never hand out more than one byte past the bound.
        let room = usize::try_from(self.bound - self.produced + 1).unwrap_or(usize::MAX);
        let take = buf.len().min(room);
        let n = self.inner.read(&mut buf[..take])?;
        self.produced += n as u64;
        if self.produced > self.bound {
            return Err((self.exceeded)(self.bound).into_io());
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_uses_the_ratio_above_the_floor() {
        assert_eq!(
            expansion_bound(1, 1 << 40, 256),
            (LAYER_RATIO_FLOOR_BYTES, true)
        );
        assert_eq!(expansion_bound(1 << 30, 1 << 40, 256), (1 << 38, true));
        assert_eq!(expansion_bound(1 << 40, 1 << 40, 256), (1 << 40, false));
        assert_eq!(expansion_bound(1, 1000, 256), (1000, false));
        assert_eq!(expansion_bound(1, 1 << 40, 0), (1 << 40, false));
    }

    #[test]
    fn guard_stops_a_stream_past_its_bound() {
        let data = vec![0u8; 10_000];
        let mut g = ExpansionGuard::new(&data[..], 4096, |l| {
            LimitExceeded::new("the test stream", l, "bytes")
        });
        let mut out = Vec::new();
        let err = g.read_to_end(&mut out).unwrap_err();
        assert!(out.len() <= 4097, "{}", out.len());
        let found = LimitExceeded::find(&err).unwrap();
        assert_eq!(found.limit, 4096);
        assert_eq!(
            err.to_string(),
            "the test stream exceeds the limit of 4096 bytes"
        );
        let mut ok =
            ExpansionGuard::new(&data[..], 10_000, |l| LimitExceeded::new("x", l, "bytes"));
        assert_eq!(ok.read_to_end(&mut Vec::new()).unwrap(), 10_000);
    }
}
