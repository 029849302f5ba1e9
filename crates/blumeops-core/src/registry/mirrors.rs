//! Where base images are pulled from: registry mirrors from `--registry-mirror` and from
//! containers-registries.conf(5) version 2, the file podman, buildah and skopeo read.
//!
//! For a reference (fully qualified, `docker.io/library/node:22`), the sources are tried in
//! this order, the first that serves the image winning:
//! 1. the `--registry-mirror SOURCE=MIRROR` mirrors of the longest matching SOURCE, in the
//!    order given;
//! 2. the `[[registry.mirror]]` entries of the registries.conf `[[registry]]` with the longest
//!    matching `prefix`, in file order (`pull-from-mirror` may restrict one to references by
//!    digest or by tag);
//! 3. that `[[registry]]`'s `location` (the reference as written when nothing matched or the
//!    location is the prefix).
//!
//! A source's reference is its location followed by what comes after the matched prefix:
//! `docker.io/library/node:22` through mirror `zot.example/docker.io` of prefix `docker.io` is
//! `zot.example/docker.io/library/node:22`. A prefix matches at a boundary: the end of the
//! reference, `/`, `@`, or `:` once the prefix has a path (so `localhost` does not match
//! `localhost:5000/x`). `*.example.com` matches the whole `host[:port]` of any subdomain of
//! example.com. The longest prefix wins, an exact one over a wildcard of the same length.
//!
//! Files: `$CONTAINERS_REGISTRIES_CONF` alone when set, else `/etc/containers/registries.conf`
//! then `/etc/containers/registries.conf.d/*.conf` in name order; a `[[registry]]` replaces an
//! earlier one with the same prefix (in the same file too). A missing file is skipped. The
//! version 1 tables (`[registries.search]`, ...), `unqualified-search-registries`, `[aliases]`
//! and other keys are ignored: blumeops references are always fully qualified.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::Error;
use crate::reference::ImageRef;

/// The variable naming the one registries.conf to read instead of the system's.
pub const REGISTRIES_CONF_ENV: &str = "CONTAINERS_REGISTRIES_CONF";
/// The system's registries.conf.
pub const SYSTEM_REGISTRIES_CONF: &str = "/etc/containers/registries.conf";
/// The directory of drop-in files read after it.
pub const SYSTEM_REGISTRIES_CONF_DIR: &str = "/etc/containers/registries.conf.d";

/// Which references a mirror is used for (`pull-from-mirror`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum PullFrom {
    #[default]
    All,
    DigestOnly,
    TagOnly,
}

impl PullFrom {
    fn allows(self, reference: &ImageRef) -> bool {
        match self {
            Self::All => true,
            Self::DigestOnly => reference.digest().is_some(),
            Self::TagOnly => reference.digest().is_none(),
        }
    }
}

/// A `[[registry]]` table as written.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawRegistry {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    prefix: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    location: String,
    #[serde(default, skip_serializing_if = "is_false")]
    insecure: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    blocked: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    mirror_by_digest_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pull_from_mirror: Option<PullFrom>,
    #[serde(default, rename = "mirror", skip_serializing_if = "Vec::is_empty")]
    mirrors: Vec<RawMirror>,
    /// Where the entry came from, when the client forwards its registries.conf to the
    /// docker executor's engine (not part of the file format; ignored in files).
    #[serde(
        default,
        rename = "blumeops-origin",
        skip_serializing_if = "Option::is_none"
    )]
    origin: Option<String>,
}

/// A `[[registry.mirror]]` table as written.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawMirror {
    #[serde(default)]
    location: String,
    #[serde(default, skip_serializing_if = "is_false")]
    insecure: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pull_from_mirror: Option<PullFrom>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A registries.conf file: only its `[[registry]]` tables matter here.
#[derive(Debug, Default, Serialize, Deserialize)]
struct RawFile {
    #[serde(default, rename = "registry")]
    registries: Vec<RawRegistry>,
}

/// One mirror of a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mirror {
    location: String,
    insecure: bool,
    pull_from: PullFrom,
}

/// One `[[registry]]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Registry {
    prefix: String,
    /// Empty for a wildcard prefix without a location: the reference's own host.
    location: String,
    insecure: bool,
    blocked: bool,
    mirrors: Vec<Mirror>,
    /// The file it came from, for messages.
    origin: String,
}

/// The registries.conf files read, merged: each `[[registry]]` by its prefix.
#[derive(Debug, Clone, Default)]
pub struct RegistriesConf {
    files: Vec<PathBuf>,
    registries: BTreeMap<String, Registry>,
}

impl RegistriesConf {
    /// `$CONTAINERS_REGISTRIES_CONF` if set, else the system's file and its drop-in
    /// directory. Missing files are skipped; an unreadable or malformed one is an error
    /// naming it.
    pub fn load() -> Result<Self, Error> {
        match std::env::var_os(REGISTRIES_CONF_ENV).filter(|v| !v.is_empty()) {
            Some(file) => Self::load_files(Path::new(&file), None),
            None => Self::load_files(
                Path::new(SYSTEM_REGISTRIES_CONF),
                Some(Path::new(SYSTEM_REGISTRIES_CONF_DIR)),
            ),
        }
    }

    /// `main`, then the `*.conf` files of `drop_in` in name order.
    pub fn load_files(main: &Path, drop_in: Option<&Path>) -> Result<Self, Error> {
        let mut conf = Self::default();
        conf.add_file(main)?;
        let Some(dir) = drop_in else {
            return Ok(conf);
        };
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(conf),
            Err(source) => {
                return Err(Error::ReadRegistriesConf {
                    path: dir.to_owned(),
                    source,
                });
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "conf"))
            .collect();
        files.sort();
        for file in files {
            conf.add_file(&file)?;
        }
        Ok(conf)
    }

    /// A registries.conf given as text (`origin` names it in messages).
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, Error> {
        let mut conf = Self::default();
        conf.add_text(text, origin, true)?;
        Ok(conf)
    }

    /// The merged `[[registry]]` tables as a registries.conf, each marked with the file it
    /// came from: what the docker executor's engine, which cannot read this machine's files,
    /// is given.
    pub fn to_toml(&self) -> String {
        let raw = RawFile {
            registries: self
                .registries
                .values()
                .map(|r| RawRegistry {
                    prefix: r.prefix.clone(),
                    location: r.location.clone(),
                    insecure: r.insecure,
                    blocked: r.blocked,
                    mirrors: r
                        .mirrors
                        .iter()
                        .map(|m| RawMirror {
                            location: m.location.clone(),
                            insecure: m.insecure,
                            pull_from_mirror: (m.pull_from != PullFrom::All).then_some(m.pull_from),
                        })
                        .collect(),
                    origin: Some(r.origin.clone()),
                    ..RawRegistry::default()
                })
                .collect(),
        };
        toml::to_string(&raw).expect("plain strings and booleans serialize")
    }

    /// The files that were read (those that exist).
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// How many `[[registry]]` entries have mirrors.
    pub fn mirror_rules(&self) -> usize {
        self.registries
            .values()
            .filter(|r| !r.mirrors.is_empty())
            .count()
    }

    /// How many `[[registry]]` entries block their prefix.
    pub fn blocked_rules(&self) -> usize {
        self.registries.values().filter(|r| r.blocked).count()
    }

    fn add_file(&mut self, path: &Path) -> Result<(), Error> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(Error::ReadRegistriesConf {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        self.add_text(&text, &path.display().to_string(), false)?;
        self.files.push(path.to_owned());
        Ok(())
    }

    fn add_text(&mut self, text: &str, origin: &str, forwarded: bool) -> Result<(), Error> {
        let invalid = |reason: String| Error::RegistriesConf {
            origin: origin.to_owned(),
            reason,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| invalid(toml_message(text, &e)))?;
        for (n, raw) in raw.registries.into_iter().enumerate() {
            let origin = match raw.origin.as_ref().filter(|_| forwarded) {
                Some(o) => o.clone(),
                None => origin.to_owned(),
            };
            let registry = check_registry(raw, origin)
                .map_err(|reason| invalid(format!("[[registry]] number {}: {reason}", n + 1)))?;
            self.registries.insert(registry.prefix.clone(), registry);
        }
        Ok(())
    }
}

/// `line L, column C: what` for a TOML error.
fn toml_message(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim_end();
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message.to_owned(),
    }
}

/// Check one `[[registry]]` as containers-registries.conf(5) requires.
fn check_registry(raw: RawRegistry, origin: String) -> Result<Registry, String> {
    let location = check_location(&raw.location, "location")?;
    let prefix = if raw.prefix.is_empty() {
        if location.is_empty() {
            return Err("it has neither `prefix` nor `location`".to_owned());
        }
        location.clone()
    } else {
        check_prefix(&raw.prefix)?
    };
    if raw.pull_from_mirror.is_some() {
        return Err(format!(
            "`pull-from-mirror` belongs in a [[registry.mirror]], not in `{prefix}`'s [[registry]]"
        ));
    }
    // A non-wildcard prefix without a location stays where it is.
    let location = if location.is_empty() && !prefix.starts_with("*.") {
        prefix.clone()
    } else {
        location
    };
    let mut mirrors = Vec::new();
    for m in raw.mirrors {
        let mirror_location = check_location(&m.location, "mirror location")?;
        if mirror_location.is_empty() {
            return Err(format!("a mirror of `{prefix}` has no `location`"));
        }
        if raw.mirror_by_digest_only && m.pull_from_mirror.is_some() {
            return Err(format!(
                "`{prefix}` sets `mirror-by-digest-only` and its mirror `{mirror_location}` sets \
                 `pull-from-mirror`: use one"
            ));
        }
        let pull_from = if raw.mirror_by_digest_only {
            PullFrom::DigestOnly
        } else {
            m.pull_from_mirror.unwrap_or_default()
        };
        mirrors.push(Mirror {
            location: mirror_location,
            insecure: m.insecure,
            pull_from,
        });
    }
    Ok(Registry {
        prefix,
        location,
        insecure: raw.insecure,
        blocked: raw.blocked,
        mirrors,
        origin,
    })
}

/// A location without its trailing `/`; no scheme (plain HTTP is `insecure = true`), no
/// wildcard, no whitespace. May be empty (the caller decides whether that is allowed).
fn check_location(text: &str, what: &str) -> Result<String, String> {
    let trimmed = text.trim_end_matches('/');
    if trimmed.contains("://") {
        return Err(format!(
            "{what} `{text}` has a URI scheme; write the host (and path) only, with \
             `insecure = true` for plain HTTP"
        ));
    }
    if trimmed.contains('*') {
        return Err(format!("{what} `{text}` has a wildcard; only a prefix may"));
    }
    if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{what} `{text}` contains whitespace"));
    }
    Ok(trimmed.to_owned())
}

/// A prefix: like a location, or `*.domain` (a wildcard over subdomains, nothing after it).
fn check_prefix(text: &str) -> Result<String, String> {
    if let Some(domain) = text.strip_prefix("*.") {
        let ok = !domain.is_empty()
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
        if !ok {
            return Err(format!(
                "prefix `{text}` is not a valid wildcard: it must be `*.` followed by a domain, \
                 e.g. `*.example.com`, with no port or path"
            ));
        }
        return Ok(text.to_owned());
    }
    let prefix = check_location(text, "prefix")?;
    if prefix.is_empty() {
        return Err(format!("prefix `{text}` is empty"));
    }
    Ok(prefix)
}

/// How much of `reference` (`registry/repository[:tag][@digest]`) `prefix` matches: its
/// length, or for a wildcard the length of the reference's `host[:port]`.
fn matched_len(reference: &str, prefix: &str) -> Option<usize> {
    if let Some(domain) = prefix.strip_prefix("*.") {
        let host_port = reference.split('/').next().unwrap_or(reference);
        let host = host_port.split(':').next().unwrap_or(host_port);
        let subdomain = host
            .strip_suffix(domain)
            .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.'));
        return subdomain.then_some(host_port.len());
    }
    let rest = reference.strip_prefix(prefix)?;
    let boundary = match rest.chars().next() {
        None | Some('/' | '@') => true,
        // After a host, `:` starts a port, which is part of the registry's name.
        Some(':') => prefix.contains('/'),
        Some(_) => false,
    };
    boundary.then_some(prefix.len())
}

/// The prefix among `prefixes` that matches `reference` best (longest; exact over
/// wildcard), with the length it matched.
fn best_match<'a, T>(
    reference: &str,
    items: impl IntoIterator<Item = (&'a str, T)>,
) -> Option<(usize, T)> {
    items
        .into_iter()
        .filter_map(|(prefix, item)| {
            let len = matched_len(reference, prefix)?;
            Some(((prefix.len(), !prefix.starts_with("*.")), len, item))
        })
        .max_by_key(|(rank, _, _)| *rank)
        .map(|(_, len, item)| (len, item))
}

/// One `--registry-mirror SOURCE=MIRROR`: pulls of references under SOURCE try MIRROR first
/// (`http://MIRROR`: over plain HTTP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorFlag {
    source: String,
    mirror: String,
    insecure: bool,
}

impl FromStr for MirrorFlag {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidMirrorFlag {
            input: input.to_owned(),
            reason,
        };
        let (source, mirror) = input.split_once('=').ok_or_else(|| {
            invalid("expected SOURCE=MIRROR, e.g. docker.io=registry.example/docker.io".to_owned())
        })?;
        let source = check_prefix(source.trim()).map_err(invalid)?;
        let mirror = mirror.trim();
        let (mirror, insecure) = match mirror.strip_prefix("http://") {
            Some(rest) => (rest, true),
            None => (mirror.strip_prefix("https://").unwrap_or(mirror), false),
        };
        let mirror = check_location(mirror, "mirror").map_err(invalid)?;
        if mirror.is_empty() {
            return Err(invalid("the mirror is empty".to_owned()));
        }
        Ok(Self {
            source,
            mirror,
            insecure,
        })
    }
}

impl fmt::Display for MirrorFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.insecure { "http://" } else { "" };
        write!(f, "{}={scheme}{}", self.source, self.mirror)
    }
}

/// A place to try pulling from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// What to pull there.
    pub(crate) reference: ImageRef,
    /// Plain HTTP (`insecure`).
    pub(crate) plain_http: bool,
    /// The mirror (or rewritten location) as configured; `None` for the reference as
    /// written.
    pub(crate) mirror: Option<String>,
}

/// A mirror that did not serve an image, and why (no secrets: registry errors carry none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorFailure {
    /// The mirror as configured, e.g. `registry.ops.eblu.me/docker.io`.
    pub mirror: String,
    /// What went wrong.
    pub error: String,
}

impl fmt::Display for MirrorFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.mirror, self.error)
    }
}

/// The sources of a pull, in order; the last is the registry's location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sources {
    pub(crate) candidates: Vec<Candidate>,
    /// Mirrors already known not to serve it (their reference is not valid).
    pub(crate) failures: Vec<MirrorFailure>,
}

/// Mirror settings for pulls: `--registry-mirror` flags, then registries.conf.
#[derive(Debug, Clone, Default)]
pub struct Mirrors {
    flags: Vec<MirrorFlag>,
    conf: RegistriesConf,
}

impl Mirrors {
    /// Flag mirrors (tried first, in this order) and a registries.conf.
    pub fn new(flags: Vec<MirrorFlag>, conf: RegistriesConf) -> Self {
        Self { flags, conf }
    }

    /// The `--registry-mirror` flags.
    pub fn flags(&self) -> &[MirrorFlag] {
        &self.flags
    }

    /// The registries.conf.
    pub fn conf(&self) -> &RegistriesConf {
        &self.conf
    }

    /// Where to pull `reference` from, in order; `None` when nothing applies (pull it as
    /// written, with no extra request). A blocked prefix is an error.
    pub(crate) fn sources(&self, reference: &ImageRef) -> Result<Option<Sources>, Error> {
        if self.flags.is_empty() && self.conf.registries.is_empty() {
            return Ok(None);
        }
        let text = reference.to_string();
        let mut sources = Sources {
            candidates: Vec::new(),
            failures: Vec::new(),
        };
        let add = |sources: &mut Sources, location: &str, rest: &str, insecure: bool| {
            let target = format!("{location}{rest}");
            match target.parse::<ImageRef>() {
                Ok(r) => sources.candidates.push(Candidate {
                    reference: r,
                    plain_http: insecure,
                    mirror: Some(location.to_owned()),
                }),
                Err(e) => sources.failures.push(MirrorFailure {
                    mirror: location.to_owned(),
                    error: e.to_string(),
                }),
            }
        };

        let flag_prefixes = self.flags.iter().map(|f| (f.source.as_str(), &f.source));
        if let Some((len, source)) = best_match(&text, flag_prefixes) {
            for flag in self.flags.iter().filter(|f| &f.source == source) {
                add(&mut sources, &flag.mirror, &text[len..], flag.insecure);
            }
        }

        let rules = self
            .conf
            .registries
            .values()
            .map(|r| (r.prefix.as_str(), r));
        let registry = best_match(&text, rules);
        if let Some((len, registry)) = registry {
            if registry.blocked {
                return Err(Error::Blocked {
                    reference: text,
                    prefix: registry.prefix.clone(),
                    origin: registry.origin.clone(),
                });
            }
            for m in registry
                .mirrors
                .iter()
                .filter(|m| m.pull_from.allows(reference))
            {
                add(&mut sources, &m.location, &text[len..], m.insecure);
            }
            let rewritten = !registry.location.is_empty() && registry.location != text[..len];
            if rewritten {
                let target = format!("{}{}", registry.location, &text[len..]);
                let rewritten_ref =
                    target
                        .parse::<ImageRef>()
                        .map_err(|e| Error::RegistriesConf {
                            origin: registry.origin.clone(),
                            reason: format!(
                                "location `{}` of `{}` makes `{target}` of {text}: {e}",
                                registry.location, registry.prefix
                            ),
                        })?;
                sources.candidates.push(Candidate {
                    reference: rewritten_ref,
                    plain_http: registry.insecure,
                    mirror: Some(registry.location.clone()),
                });
            } else {
                sources.candidates.push(Candidate {
                    reference: reference.clone(),
                    plain_http: registry.insecure,
                    mirror: None,
                });
            }
        } else {
            sources.candidates.push(Candidate {
                reference: reference.clone(),
                plain_http: false,
                mirror: None,
            });
        }
        let as_written = [Candidate {
            reference: reference.clone(),
            plain_http: false,
            mirror: None,
        }];
        if sources.candidates == as_written && sources.failures.is_empty() {
            return Ok(None);
        }
        Ok(Some(sources))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn conf(text: &str) -> RegistriesConf {
        RegistriesConf::from_toml(text, "test.conf").unwrap()
    }

    fn flags(list: &[&str]) -> Vec<MirrorFlag> {
        list.iter().map(|f| f.parse().unwrap()).collect()
    }

    /// The sources of `reference` as `[http://]REF (via MIRROR)` lines.
    fn tried(mirrors: &Mirrors, reference: &str) -> Vec<String> {
        let reference: ImageRef = reference.parse().unwrap();
        let Some(sources) = mirrors.sources(&reference).unwrap() else {
            return vec!["as written".to_owned()];
        };
        sources
            .candidates
            .iter()
            .map(|c| {
                let scheme = if c.plain_http { "http://" } else { "" };
                match &c.mirror {
                    Some(m) => format!("{scheme}{} via {m}", c.reference),
                    None => format!("{scheme}{}", c.reference),
                }
            })
            .collect()
    }

    const HOMELAB: &str = r#"
unqualified-search-registries = ["docker.io"]

[[registry]]
location = "docker.io"
[[registry.mirror]]
location = "registry.ops.eblu.me/docker.io"
[[registry.mirror]]
location = "10.0.0.5:5000/hub"
insecure = true

[[registry]]
prefix = "docker.io/library/postgres"
location = "docker.io/library/postgres"
[[registry.mirror]]
location = "pg.example/postgres"

[[registry]]
prefix = "quay.io"
location = "quay.io"
blocked = true

[[registry]]
prefix = "*.corp.example"
[[registry.mirror]]
location = "cache.corp.example/corp"

[[registry]]
prefix = "corp.example/team"
location = "internal.example/team-images"
insecure = true

[[registry]]
location = "ghcr.io"
[[registry.mirror]]
location = "registry.ops.eblu.me/ghcr.io"
pull-from-mirror = "digest-only"
[[registry.mirror]]
location = "tags.example/ghcr.io"
pull-from-mirror = "tag-only"

[aliases]
"node" = "docker.io/library/node"
"#;

    const D: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[rstest]
    // Docker Hub normalisation: `node` is docker.io/library/node.
    #[case("node:22", &[
        "registry.ops.eblu.me/docker.io/library/node:22 via registry.ops.eblu.me/docker.io",
        "http://10.0.0.5:5000/hub/library/node:22 via 10.0.0.5:5000/hub",
        "docker.io/library/node:22",
    ])]
    // The longest prefix wins; its mirrors only.
    #[case("postgres:16", &[
        "pg.example/postgres:16 via pg.example/postgres",
        "docker.io/library/postgres:16",
    ])]
    // A prefix matches at a path boundary only.
    #[case("docker.io/library/postgresql:1", &[
        "registry.ops.eblu.me/docker.io/library/postgresql:1 via registry.ops.eblu.me/docker.io",
        "http://10.0.0.5:5000/hub/library/postgresql:1 via 10.0.0.5:5000/hub",
        "docker.io/library/postgresql:1",
    ])]
    // Nothing matches: pulled as written, no extra request.
    #[case("registry.example/x/y:1", &["as written"])]
    #[case("docker.iox/a:1", &["as written"])]
    // A wildcard covers subdomains (host and port), not the domain itself.
    #[case("a.corp.example:5000/app:1", &[
        "cache.corp.example/corp/app:1 via cache.corp.example/corp",
        "a.corp.example:5000/app:1",
    ])]
    #[case("corp.example/app:1", &["as written"])]
    // A location other than the prefix rewrites the reference; insecure means plain HTTP.
    #[case("corp.example/team/app:2", &[
        "http://internal.example/team-images/app:2 via internal.example/team-images",
    ])]
    // pull-from-mirror: digest-only and tag-only mirrors.
    #[case("ghcr.io/org/app:1", &[
        "tags.example/ghcr.io/org/app:1 via tags.example/ghcr.io",
        "ghcr.io/org/app:1",
    ])]
    #[case(&format!("ghcr.io/org/app@{D}"), &[
        &*format!("registry.ops.eblu.me/ghcr.io/org/app@{D} via registry.ops.eblu.me/ghcr.io"),
        &*format!("ghcr.io/org/app@{D}"),
    ])]
    fn registries_conf_sources(#[case] reference: &str, #[case] want: &[&str]) {
        let mirrors = Mirrors::new(Vec::new(), conf(HOMELAB));
        assert_eq!(tried(&mirrors, reference), want);
    }

    #[test]
    fn blocked_prefix_is_refused_naming_the_file() {
        let mirrors = Mirrors::new(Vec::new(), conf(HOMELAB));
        let err = mirrors
            .sources(&"quay.io/podman/stable:latest".parse().unwrap())
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("quay.io/podman/stable:latest"), "{msg}");
        assert!(
            msg.contains("blocked") && msg.contains("test.conf"),
            "{msg}"
        );
        assert_eq!(err.kind(), super::super::ErrorKind::Invalid);
    }

    #[test]
    fn flag_mirrors_come_first_in_order_then_the_files() {
        let mirrors = Mirrors::new(
            flags(&[
                "docker.io=first.example/hub",
                "docker.io=http://second.example/hub",
                "ghcr.io=other.example",
            ]),
            conf(HOMELAB),
        );
        assert_eq!(
            tried(&mirrors, "busybox:1"),
            [
                "first.example/hub/library/busybox:1 via first.example/hub",
                "http://second.example/hub/library/busybox:1 via second.example/hub",
                "registry.ops.eblu.me/docker.io/library/busybox:1 via registry.ops.eblu.me/docker.io",
                "http://10.0.0.5:5000/hub/library/busybox:1 via 10.0.0.5:5000/hub",
                "docker.io/library/busybox:1",
            ]
        );
        // Without a file, only the flags; the longest flag source wins.
        let mirrors = Mirrors::new(
            flags(&["docker.io=a.example", "docker.io/library=b.example/lib"]),
            RegistriesConf::default(),
        );
        assert_eq!(
            tried(&mirrors, "busybox:1"),
            [
                "b.example/lib/busybox:1 via b.example/lib",
                "docker.io/library/busybox:1"
            ]
        );
        assert_eq!(
            tried(&mirrors, "docker.io/bitnami/redis:7"),
            [
                "a.example/bitnami/redis:7 via a.example",
                "docker.io/bitnami/redis:7"
            ]
        );
        assert_eq!(
            tried(&Mirrors::default(), "busybox:1"),
            ["as written"],
            "no mirrors: nothing to do"
        );
    }

    #[rstest]
    #[case("docker.io/library/node:22", "docker.io", Some(9))]
    #[case("docker.io/library/node:22", "docker.io/library", Some(17))]
    #[case("docker.io/library/node:22", "docker.io/library/node", Some(22))]
    #[case("docker.io/library/node:22", "docker.io/library/node:22", Some(25))]
    #[case("docker.io/library/node:22", "docker.io/library/no", None)]
    #[case("docker.io/library/node:22", "docker.i", None)]
    #[case("localhost:5000/x:1", "localhost", None)]
    #[case("localhost:5000/x:1", "localhost:5000", Some(14))]
    #[case(&format!("r.example/x@{D}"), "r.example/x", Some(11))]
    #[case("a.b.example/x:1", "*.example", Some(11))]
    #[case("example/x:1", "*.example", None)]
    #[case("xexample/x:1", "*.example", None)]
    #[case("r.other/a.example/x:1", "*.example", None)]
    fn prefix_matching(#[case] reference: &str, #[case] prefix: &str, #[case] want: Option<usize>) {
        assert_eq!(matched_len(reference, prefix), want);
    }

    #[test]
    fn an_exact_host_beats_a_wildcard_of_the_same_length() {
        let conf = conf(
            r#"
[[registry]]
prefix = "*.example.com"
[[registry.mirror]]
location = "wild.example"
[[registry]]
location = "a.example.com"
[[registry.mirror]]
location = "exact.example"
"#,
        );
        let mirrors = Mirrors::new(Vec::new(), conf);
        assert_eq!(
            tried(&mirrors, "a.example.com/x:1")[0],
            "exact.example/x:1 via exact.example"
        );
        assert_eq!(
            tried(&mirrors, "b.example.com/x:1")[0],
            "wild.example/x:1 via wild.example"
        );
    }

    #[test]
    fn drop_in_files_override_by_prefix_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("registries.conf");
        let drop_in = dir.path().join("registries.conf.d");
        std::fs::create_dir(&drop_in).unwrap();
        std::fs::write(
            &main,
            "[[registry]]\nlocation = \"docker.io\"\n[[registry.mirror]]\nlocation = \"main.example\"\n\
             [[registry]]\nlocation = \"ghcr.io\"\n[[registry.mirror]]\nlocation = \"gh.example\"\n",
        )
        .unwrap();
        std::fs::write(
            drop_in.join("20-late.conf"),
            "[[registry]]\nlocation = \"docker.io\"\n[[registry.mirror]]\nlocation = \"late.example\"\n",
        )
        .unwrap();
        std::fs::write(
            drop_in.join("10-early.conf"),
            "[[registry]]\nlocation = \"docker.io\"\n[[registry.mirror]]\nlocation = \"early.example\"\n",
        )
        .unwrap();
        // Not a .conf file: not read (it would not even parse).
        std::fs::write(drop_in.join("notes.txt"), "not = [toml").unwrap();
        let loaded = RegistriesConf::load_files(&main, Some(&drop_in)).unwrap();
        assert_eq!(
            loaded.files(),
            [
                main.clone(),
                drop_in.join("10-early.conf"),
                drop_in.join("20-late.conf")
            ]
        );
        assert_eq!(loaded.mirror_rules(), 2);
        let mirrors = Mirrors::new(Vec::new(), loaded);
        assert_eq!(
            tried(&mirrors, "busybox:1")[0],
            "late.example/library/busybox:1 via late.example"
        );
        assert_eq!(
            tried(&mirrors, "ghcr.io/a/b:1")[0],
            "gh.example/a/b:1 via gh.example",
            "an entry no later file names stays"
        );

        // Missing files and directories are fine.
        let none = RegistriesConf::load_files(
            &dir.path().join("absent.conf"),
            Some(&dir.path().join("absent.d")),
        )
        .unwrap();
        assert!(none.files().is_empty());
    }

    #[test]
    fn a_later_entry_with_the_same_prefix_replaces_the_earlier_one() {
        let conf = conf(
            "[[registry]]\nlocation = \"docker.io\"\nblocked = true\n\
             [[registry]]\nprefix = \"docker.io\"\nlocation = \"docker.io\"\n\
             [[registry.mirror]]\nlocation = \"m.example\"\n",
        );
        assert_eq!(conf.blocked_rules(), 0);
        let mirrors = Mirrors::new(Vec::new(), conf);
        assert_eq!(
            tried(&mirrors, "busybox:1")[0],
            "m.example/library/busybox:1 via m.example"
        );
    }

    #[rstest]
    #[case("[[registry]\nlocation = 1", "line 1, column")]
    #[case("[[registry]]\nlocation = 1\n", "line 2, column 12")]
    #[case("[[registry]]\ninsecure = \"yes\"\n", "line 2")]
    #[case("[[registry]]\ninsecure = true\n", "neither `prefix` nor `location`")]
    #[case("[[registry]]\nlocation = \"https://docker.io\"\n", "URI scheme")]
    #[case("[[registry]]\nprefix = \"docker.*\"\nlocation = \"x\"\n", "wildcard")]
    #[case(
        "[[registry]]\nprefix = \"*.example.com/path\"\n",
        "not a valid wildcard"
    )]
    #[case(
        "[[registry]]\nlocation = \"a\"\n[[registry.mirror]]\ninsecure = true\n",
        "has no `location`"
    )]
    #[case(
        "[[registry]]\nlocation = \"a\"\n[[registry.mirror]]\nlocation = \"m\"\npull-from-mirror = \"sometimes\"\n",
        "sometimes"
    )]
    #[case(
        "[[registry]]\nlocation = \"a\"\npull-from-mirror = \"all\"\n",
        "belongs in a [[registry.mirror]]"
    )]
    #[case(
        "[[registry]]\nlocation = \"a\"\nmirror-by-digest-only = true\n[[registry.mirror]]\nlocation = \"m\"\npull-from-mirror = \"all\"\n",
        "use one"
    )]
    fn malformed_files_are_errors_naming_the_file(#[case] text: &str, #[case] want: &str) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.conf");
        std::fs::write(&path, text).unwrap();
        let err = RegistriesConf::load_files(&path, None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(want), "{msg} lacks {want}");
        assert_eq!(err.kind(), super::super::ErrorKind::Invalid);
    }

    #[test]
    fn version_1_tables_and_other_keys_are_ignored() {
        let v1 = "[registries.search]\nregistries = ['docker.io']\n[registries.insecure]\nregistries = []\n";
        assert_eq!(conf(v1).registries.len(), 0);
        let shortnames = "[aliases]\n  \"almalinux\" = \"docker.io/library/almalinux\"\nshort-name-mode = \"enforcing\"\n";
        assert_eq!(conf(shortnames).registries.len(), 0);
        assert_eq!(conf("").registries.len(), 0);
    }

    #[test]
    fn forwarded_toml_keeps_every_rule_and_its_origin() {
        let original = conf(HOMELAB);
        let text = original.to_toml();
        let back = RegistriesConf::from_toml(&text, "the client").unwrap();
        assert_eq!(back.registries, original.registries);
        assert!(
            back.registries.values().all(|r| r.origin == "test.conf"),
            "{text}"
        );
        // In a file, the marker is not believed.
        let file = RegistriesConf::from_toml(&text, "f.conf");
        assert!(file.is_ok());
        let mut conf = RegistriesConf::default();
        conf.add_text(&text, "f.conf", false).unwrap();
        assert!(conf.registries.values().all(|r| r.origin == "f.conf"));
    }

    #[rstest]
    #[case(
        "docker.io=registry.ops.eblu.me/docker.io",
        "docker.io=registry.ops.eblu.me/docker.io"
    )]
    #[case(" docker.io = https://m.example/hub/ ", "docker.io=m.example/hub")]
    #[case(
        "docker.io=http://127.0.0.1:5000/hub",
        "docker.io=http://127.0.0.1:5000/hub"
    )]
    #[case("*.corp.example=cache.example", "*.corp.example=cache.example")]
    fn mirror_flags_parse(#[case] input: &str, #[case] shown: &str) {
        let flag: MirrorFlag = input.parse().unwrap();
        assert_eq!(flag.to_string(), shown);
        assert_eq!(flag.to_string().parse::<MirrorFlag>().unwrap(), flag);
    }

    #[rstest]
    #[case("docker.io", "SOURCE=MIRROR")]
    #[case("=m.example", "empty")]
    #[case("docker.io=", "empty")]
    #[case("docker.io=ftp://m.example", "URI scheme")]
    #[case("docker.io=m.example/*", "wildcard")]
    #[case("docker.io=m example", "whitespace")]
    fn bad_mirror_flags_are_refused(#[case] input: &str, #[case] want: &str) {
        let err = input.parse::<MirrorFlag>().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("--registry-mirror"), "{msg}");
        assert!(msg.contains(want), "{msg} lacks {want}");
        assert_eq!(err.kind(), super::super::ErrorKind::Invalid);
    }
}
