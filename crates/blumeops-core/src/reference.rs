//! Image references, digests and platforms: validated newtypes used across the crate.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// Errors from parsing references, digests and platforms.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The text is not a valid image reference.
    #[error("invalid image reference `{input}`: {reason}")]
    InvalidReference {
        /// What the user gave.
        input: String,
        /// Why it was refused.
        reason: String,
    },
    /// The text is not a `sha256:<64 hex>` digest.
    #[error("invalid digest `{input}`: expected `sha256:` followed by 64 lowercase hex digits")]
    InvalidDigest {
        /// What was given.
        input: String,
    },
    /// The text is not `os/arch[/variant]`.
    #[error(
        "invalid platform `{input}`: expected `os/arch` or `os/arch/variant`, e.g. `linux/amd64`"
    )]
    InvalidPlatform {
        /// What was given.
        input: String,
    },
}

/// A content digest. Only `sha256` is produced or accepted, as zot and Docker Hub use.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_sha256(Sha256::digest(bytes).into())
    }

    /// Wrap a finished sha256 hash.
    pub fn from_sha256(hash: [u8; 32]) -> Self {
        Self {
            hex: hex::encode(hash),
        }
    }

    /// The 64 lowercase hex digits, without the `sha256:` prefix.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest(sha256:{})", self.hex)
    }
}

impl FromStr for Digest {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || Error::InvalidDigest {
            input: s.to_owned(),
        };
        let hex = s.strip_prefix("sha256:").ok_or_else(invalid)?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(invalid());
        }
        Ok(Self {
            hex: hex.to_owned(),
        })
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental sha256, for digests computed while data streams past.
#[derive(Default, Clone)]
pub struct DigestWriter {
    hasher: Sha256,
    len: u64,
}

impl DigestWriter {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was fed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        Digest::from_sha256(self.hasher.finalize().into())
    }
}

impl std::io::Write for DigestWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Docker Hub's registry name as written in references.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that actually serves Docker Hub's registry API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";

/// A fully qualified image reference: `registry/repository[:tag][@digest]`.
///
/// Parsing applies Docker's defaults: `busybox` is `docker.io/library/busybox:latest`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl ImageRef {
    /// Build a reference from parts; the repository and tag are validated.
    pub fn new(registry: &str, repository: &str, tag: &str) -> Result<Self, Error> {
        format!("{registry}/{repository}:{tag}").parse()
    }

    /// Registry host (with port if any), as written: `docker.io`, `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The host to send registry API requests to (`registry-1.docker.io` for Docker Hub).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API_HOST
        } else {
            &self.registry
        }
    }

    /// Repository path, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// Tag, if the reference has one.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// Digest, if the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// What to ask the registry for: the digest when pinned, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// The same repository with another tag and no digest.
    #[must_use]
    pub fn with_tag(&self, tag: &str) -> Self {
        Self {
            tag: Some(tag.to_owned()),
            digest: None,
            ..self.clone()
        }
    }

    /// The same reference pinned to `digest` (the tag is kept for display).
    #[must_use]
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// `registry/repository:tag` without any digest: what a publish prints before `@`.
    pub fn without_digest(&self) -> String {
        match &self.tag {
            Some(t) => format!("{}/{}:{t}", self.registry, self.repository),
            None => format!("{}/{}", self.registry, self.repository),
        }
    }

    /// Whether the registry is on loopback (`localhost`, `127.0.0.0/8`, `::1`): Docker talks
    /// plain HTTP to those.
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.registry)
    }
}

/// Whether `host[:port]` names a loopback address.
pub fn is_loopback_host(host_port: &str) -> bool {
    let host = if let Some(rest) = host_port.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        host_port.rsplit_once(':').map_or(host_port, |(h, _)| h)
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl FromStr for ImageRef {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| Error::InvalidReference {
            input: s.to_owned(),
            reason: reason.to_owned(),
        };
        if s.is_empty() {
            return Err(invalid("it is empty"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("it contains whitespace"));
        }
        let parsed: oci_client::Reference = s
            .parse()
            .map_err(|e: oci_client::ParseError| invalid(&e.to_string().to_lowercase()))?;
        // The distribution spec's repository grammar: lowercase components separated by
        // `/`, each made of [a-z0-9] joined by `.`, `_`, `__` or runs of `-`.
        let repo_ok = parsed.repository().split('/').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        });
        if !repo_ok {
            return Err(invalid(
                "repository names must be lowercase letters, digits and separators (. _ -)",
            ));
        }
        let digest = match parsed.digest() {
            Some(d) => Some(
                d.parse::<Digest>()
                    .map_err(|_| invalid("only sha256 digests are supported"))?,
            ),
            None => None,
        };
        // oci-client fills in `latest` when neither tag nor digest is given; keep the tag
        // only if there is one or the reference has no digest.
        let tag = parsed.tag().map(str::to_owned);
        let tag = if digest.is_some() && !has_explicit_tag(s) {
            None
        } else {
            tag.or_else(|| Some("latest".to_owned()))
        };
        Ok(Self {
            registry: parsed.registry().to_owned(),
            repository: parsed.repository().to_owned(),
            tag,
            digest,
        })
    }
}

/// Whether the reference text carries a `:tag` after its last path component.
fn has_explicit_tag(s: &str) -> bool {
    let name = s.split('@').next().unwrap_or(s);
    let last = name.rsplit('/').next().unwrap_or(name);
    last.contains(':')
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.without_digest())?;
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageRef({self})")
    }
}

/// An OS/architecture pair, as in an OCI index: `linux/amd64`, `linux/arm64/v8`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

impl Platform {
    /// The platform this program runs on, as a Linux platform (containers are Linux).
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "loongarch64" => "loong64",
            other => other,
        };
        Self {
            os: "linux".to_owned(),
            architecture: architecture.to_owned(),
            variant: None,
        }
    }

    /// Operating system, e.g. `linux`.
    pub fn os(&self) -> &str {
        &self.os
    }

    /// Architecture in OCI/Go naming, e.g. `amd64`.
    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    /// CPU variant, e.g. `v8`, if one was asked for.
    pub fn variant(&self) -> Option<&str> {
        self.variant.as_deref()
    }

    /// Whether an index entry with these fields is this platform. A platform without a
    /// variant matches any variant; `arm64` also matches entries that say `v8`.
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        if self.os != os || self.architecture != architecture {
            return false;
        }
        match (&self.variant, variant) {
            (None, _) => true,
            (Some(want), Some(have)) => want == have,
            (Some(want), None) => self.architecture == "arm64" && want == "v8",
        }
    }
}

impl Default for Platform {
    fn default() -> Self {
        Self::host()
    }
}

impl FromStr for Platform {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || Error::InvalidPlatform {
            input: s.to_owned(),
        };
        let parts: Vec<&str> = s.split('/').collect();
        let ok =
            |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(ok) {
            return Err(invalid());
        }
        Ok(Self {
            os: parts[0].to_owned(),
            architecture: parts[1].to_owned(),
            variant: parts.get(2).map(|v| (*v).to_owned()),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Platform({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(
        "busybox",
        "docker.io",
        "library/busybox",
        Some("latest"),
        "docker.io/library/busybox:latest"
    )]
    #[case(
        "busybox:1.37",
        "docker.io",
        "library/busybox",
        Some("1.37"),
        "docker.io/library/busybox:1.37"
    )]
    #[case(
        "docker.io/library/busybox:1.37",
        "docker.io",
        "library/busybox",
        Some("1.37"),
        "docker.io/library/busybox:1.37"
    )]
    #[case(
        "ghcr.io/org/app:v1",
        "ghcr.io",
        "org/app",
        Some("v1"),
        "ghcr.io/org/app:v1"
    )]
    #[case(
        "127.0.0.1:5000/blumeops/hello:v1.0.0-abc1234",
        "127.0.0.1:5000",
        "blumeops/hello",
        Some("v1.0.0-abc1234"),
        "127.0.0.1:5000/blumeops/hello:v1.0.0-abc1234"
    )]
    #[case(
        "localhost:5000/x",
        "localhost:5000",
        "x",
        Some("latest"),
        "localhost:5000/x:latest"
    )]
    fn parses_with_docker_defaults(
        #[case] input: &str,
        #[case] registry: &str,
        #[case] repository: &str,
        #[case] tag: Option<&str>,
        #[case] display: &str,
    ) {
        let r: ImageRef = input.parse().unwrap();
        assert_eq!(r.registry(), registry);
        assert_eq!(r.repository(), repository);
        assert_eq!(r.tag(), tag);
        assert_eq!(r.to_string(), display);
    }

    #[test]
    fn digest_only_reference_has_no_tag() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r: ImageRef = format!("alpine@{d}").parse().unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.manifest_reference(), d);
        assert_eq!(r.to_string(), format!("docker.io/library/alpine@{d}"));
    }

    #[rstest]
    #[case("")]
    #[case("UPPER/case")]
    #[case("a b")]
    #[case("busybox:bad tag")]
    #[case("busybox@sha256:short")]
    fn rejects_bad_references(#[case] input: &str) {
        assert!(input.parse::<ImageRef>().is_err(), "{input} accepted");
    }

    #[rstest]
    #[case("localhost:5000", true)]
    #[case("localhost", true)]
    #[case("127.0.0.1:5000", true)]
    #[case("127.5.6.7", true)]
    #[case("[::1]:5000", true)]
    #[case("registry.ops.eblu.me", false)]
    #[case("10.0.0.1:5000", false)]
    fn loopback_detection(#[case] host: &str, #[case] expected: bool) {
        assert_eq!(is_loopback_host(host), expected);
    }

    #[test]
    fn docker_hub_api_host() {
        let r: ImageRef = "busybox".parse().unwrap();
        assert_eq!(r.api_host(), DOCKER_HUB_API_HOST);
    }

    #[test]
    fn digest_roundtrip_and_validation() {
        let d = Digest::of(b"hello");
        assert_eq!(
            d.to_string(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        assert!("sha256:ABC".parse::<Digest>().is_err());
        assert!("md5:00".parse::<Digest>().is_err());
        let mut w = DigestWriter::new();
        w.update(b"hel");
        w.update(b"lo");
        assert_eq!(w.finish(), d);
    }

    #[rstest]
    #[case("linux/amd64", "linux", "amd64", None)]
    #[case("linux/arm64/v8", "linux", "arm64", Some("v8"))]
    fn parses_platforms(
        #[case] s: &str,
        #[case] os: &str,
        #[case] arch: &str,
        #[case] variant: Option<&str>,
    ) {
        let p: Platform = s.parse().unwrap();
        assert_eq!((p.os(), p.architecture(), p.variant()), (os, arch, variant));
        assert_eq!(p.to_string(), s);
    }

    #[rstest]
    #[case("linux")]
    #[case("linux/")]
    #[case("a/b/c/d")]
    fn rejects_bad_platforms(#[case] s: &str) {
        assert!(s.parse::<Platform>().is_err());
    }

    #[test]
    fn platform_matching() {
        let arm: Platform = "linux/arm64/v8".parse().unwrap();
        assert!(arm.matches("linux", "arm64", None));
        assert!(arm.matches("linux", "arm64", Some("v8")));
        assert!(!arm.matches("linux", "amd64", None));
        let any_arm: Platform = "linux/arm".parse().unwrap();
        assert!(any_arm.matches("linux", "arm", Some("v7")));
    }
}
