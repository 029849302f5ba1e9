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
        let parsed = parse_reference(s).map_err(invalid)?;
        // The distribution spec's repository grammar: lowercase components separated by
        // `/`, each made of [a-z0-9] joined by `.`, `_`, `__` or runs of `-`.
        if !parsed.repository.split('/').all(is_path_component) {
            return Err(invalid(
                "repository names must be lowercase letters, digits and separators (. _ -)",
            ));
        }
        let digest = match parsed.digest {
            Some(d) => Some(
                d.parse::<Digest>()
                    .map_err(|_| invalid("only sha256 digests are supported"))?,
            ),
            None => None,
        };
        // Without a digest, no tag means `latest`.
        let tag = match (parsed.tag, &digest) {
            (Some(tag), _) => Some(tag.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_owned()),
        };
        Ok(Self {
            registry: parsed.registry,
            repository: parsed.repository,
            tag,
            digest,
        })
    }
}

/// A reference split into its parts, Docker's defaults applied to the name.
struct ParsedReference<'a> {
    registry: String,
    repository: String,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
}

/// Longest repository name accepted (Docker's limit).
const NAME_MAX: usize = 255;

/// Parse `[domain/]path[:tag][@digest]` by Docker's reference grammar (distribution's
/// `reference` package), then split the domain as Docker does: a first component with a
/// `.` or `:`, or `localhost`, is the registry; else the registry is `docker.io`, whose
/// one-component names are in `library/`. Written out by hand rather than as the grammar's
/// regular expression, which takes megabytes to compile.
fn parse_reference(s: &str) -> Result<ParsedReference<'_>, &'static str> {
    const INVALID: &str = "invalid reference format";
    let (rest, digest) = match s.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (s, None),
    };
    if let Some(digest) = digest {
        let (algorithm, hex) = digest.split_once(':').ok_or(INVALID)?;
        if !is_digest_algorithm(algorithm)
            || hex.len() < 32
            || !hex.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(INVALID);
        }
        let want = match algorithm {
            "sha256" => 64,
            "sha384" => 96,
            "sha512" => 128,
            _ => return Err("unsupported digest algorithm"),
        };
        if hex.len() != want {
            return Err("invalid checksum digest length");
        }
    }
    // A `:` after the last `/` starts the tag; one before it is a registry's port.
    let (name, tag) = match rest.rfind(':') {
        Some(i) if rest[i..].find('/').is_none() => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if let Some(tag) = tag
        && !is_tag(tag)
    {
        return Err(INVALID);
    }
    let components: Vec<&str> = name.split('/').collect();
    let (first, others) = components.split_first().ok_or(INVALID)?;
    let first_ok = is_path_component(first) || (!others.is_empty() && is_domain(first));
    if !first_ok || !others.iter().all(|c| is_path_component(c)) {
        return Err(INVALID);
    }
    let (mut registry, mut repository) = match name.split_once('/') {
        Some((left, right)) if left.contains(['.', ':']) || left == "localhost" => {
            (left.to_owned(), right.to_owned())
        }
        _ => ("docker.io".to_owned(), name.to_owned()),
    };
    if registry == "index.docker.io" {
        "docker.io".clone_into(&mut registry);
    }
    if registry == "docker.io" && !repository.contains('/') {
        repository = format!("library/{repository}");
    }
    if repository.len() > NAME_MAX {
        return Err("repository name must not be more than 255 characters");
    }
    Ok(ParsedReference {
        registry,
        repository,
        tag,
        digest,
    })
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or any run of `-`.
fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// A registry host: dot-separated labels of letters, digits and inner `-`, then an optional
/// `:port`.
fn is_domain(d: &str) -> bool {
    let (host, port) = match d.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (d, None),
    };
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
    };
    host.split('.').all(label_ok)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|x| x.is_ascii_digit()))
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn is_tag(t: &str) -> bool {
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b.iter().all(|&x| word(x) || x == b'.' || x == b'-')
}

/// `[A-Za-z][A-Za-z0-9]*` parts joined by `-`, `_`, `+` or `.`.
fn is_digest_algorithm(a: &str) -> bool {
    a.split(['-', '_', '+', '.']).all(|part| {
        let b = part.as_bytes();
        !b.is_empty() && b[0].is_ascii_alphabetic() && b.iter().all(u8::is_ascii_alphanumeric)
    })
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
    #[case("a/")]
    #[case("/a")]
    #[case("a//b")]
    #[case("a:")]
    #[case("a@")]
    #[case("a:-tag")]
    #[case("a:.tag")]
    #[case("a..b")]
    #[case("a___b")]
    #[case("a-_b")]
    #[case("-a")]
    #[case("a-")]
    #[case("_a")]
    #[case("a:tag:more")]
    #[case("a:täg")]
    #[case("host:port/a")]
    #[case("-host.com/a")]
    #[case("host.com:/a")]
    #[case("[::1]:5000/a")]
    #[case("a@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde")]
    #[case("a@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdeg")]
    #[case("a@md5:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")]
    fn rejects_bad_references(#[case] input: &str) {
        assert!(input.parse::<ImageRef>().is_err(), "{input} accepted");
    }

    /// Docker's grammar and defaults, as its `reference` package (and oci-spec) parse them.
    #[rstest]
    #[case("test.com:tag", "docker.io", "library/test.com", Some("tag"))]
    #[case("test.com:5000", "docker.io", "library/test.com", Some("5000"))]
    #[case("test.com/repo:tag", "test.com", "repo", Some("tag"))]
    #[case("test:5000/repo", "test:5000", "repo", Some("latest"))]
    #[case("localhost/app", "localhost", "app", Some("latest"))]
    #[case(
        "localhost:5000/a/b:v1.2_3-x",
        "localhost:5000",
        "a/b",
        Some("v1.2_3-x")
    )]
    #[case(
        "index.docker.io/busybox",
        "docker.io",
        "library/busybox",
        Some("latest")
    )]
    #[case(
        "docker.io/library/busybox:1",
        "docker.io",
        "library/busybox",
        Some("1")
    )]
    #[case(
        "lowercase:Uppercase",
        "docker.io",
        "library/lowercase",
        Some("Uppercase")
    )]
    #[case(
        "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
        "sub-dom1.foo.com",
        "bar/baz/quux",
        Some("some-long-tag")
    )]
    #[case(
        "b.gcr.io/test.example.com/my-app:test.example.com",
        "b.gcr.io",
        "test.example.com/my-app",
        Some("test.example.com")
    )]
    #[case(
        "xn--n3h.com/myimage:xn--n3h.com",
        "xn--n3h.com",
        "myimage",
        Some("xn--n3h.com")
    )]
    #[case("foo_bar.com:8080", "docker.io", "library/foo_bar.com", Some("8080"))]
    #[case("foo/foo_bar.com:8080", "docker.io", "foo/foo_bar.com", Some("8080"))]
    #[case("a__b/c---d/e.f_g:_", "docker.io", "a__b/c---d/e.f_g", Some("_"))]
    #[case("127.0.0.1:5000/x/y", "127.0.0.1:5000", "x/y", Some("latest"))]
    fn parses_docker_grammar(
        #[case] input: &str,
        #[case] registry: &str,
        #[case] repository: &str,
        #[case] tag: Option<&str>,
    ) {
        let r: ImageRef = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            (registry, repository, tag),
            "{input}"
        );
    }

    #[test]
    fn tags_and_names_have_length_limits() {
        let tag = "t".repeat(128);
        assert!(format!("a:{tag}").parse::<ImageRef>().is_ok());
        assert!(format!("a:{tag}x").parse::<ImageRef>().is_err());
        let name = format!("r.io/{}", "n".repeat(255));
        assert!(name.parse::<ImageRef>().is_ok());
        assert!(format!("{name}n").parse::<ImageRef>().is_err());
        // A tag and a digest together keep both.
        let d = format!("sha256:{}", "ab".repeat(32));
        let r: ImageRef = format!("r.io/a:v1@{d}").parse().unwrap();
        assert_eq!(r.tag(), Some("v1"));
        assert_eq!(r.manifest_reference(), d);
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
