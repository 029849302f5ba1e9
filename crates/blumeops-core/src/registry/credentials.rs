//! Registry credentials: explicit ones, then containers `auth.json` and docker `config.json`.
//!
//! Files are read in this order, and the first file with an entry for a registry wins:
//! 1. `$REGISTRY_AUTH_FILE`, else `$XDG_RUNTIME_DIR/containers/auth.json` (podman, skopeo);
//! 2. `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
//!
//! Only `auths` entries are used: `{"auth": base64("user:pass")}` or
//! `{"username": .., "password": ..}`. Keys may be `host`, `https://host`,
//! `https://host/v1/` and so on; Docker Hub's `https://index.docker.io/v1/` is `docker.io`.
//! Credential helpers (`credHelpers`, `credsStore`) are not run.
//!
//! A missing file is skipped. An unreadable or malformed file does not fail
//! [`Credentials::from_config_files`]: the problem is kept and reported by
//! [`Credentials::try_lookup`] when a registry has no explicit credential, so an anonymous
//! pull still works while a push that needs the file fails with the file's path.
//! [`Credentials::try_from_config_files`] fails at once instead.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;

use super::Error;
use crate::secret::Secret;

/// A username and password (zot API key) for one registry.
#[derive(Clone, Debug)]
pub struct Credential {
    /// Username, e.g. `zot-ci`.
    pub username: String,
    /// Password or API key.
    pub password: Secret,
}

/// Where credentials come from: explicit ones per registry host, then containers
/// `auth.json` and docker `config.json` (see the module docs for the order).
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    explicit: HashMap<String, Credential>,
    /// Entries from files, by normalised registry; the first file wins.
    from_files: HashMap<String, Result<Credential, Problem>>,
    /// Files that could not be read or parsed at all.
    file_problems: Vec<Problem>,
}

/// Why a file or an entry could not be used. Clone-able so `Credentials` stays `Clone`.
#[derive(Clone, Debug)]
enum Problem {
    Read {
        path: PathBuf,
        source: Arc<std::io::Error>,
    },
    Parse {
        path: PathBuf,
        source: Arc<serde_json::Error>,
    },
    Entry {
        path: PathBuf,
        key: String,
        reason: &'static str,
    },
}

impl Problem {
    fn to_error(&self) -> Error {
        match self {
            Self::Read { path, source } => Error::ReadCredentialsFile {
                path: path.clone(),
                source: source.clone(),
            },
            Self::Parse { path, source } => Error::ParseCredentialsFile {
                path: path.clone(),
                source: source.clone(),
            },
            Self::Entry { path, key, reason } => Error::InvalidCredentialEntry {
                path: path.clone(),
                key: key.clone(),
                reason,
            },
        }
    }
}

#[derive(serde::Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(serde::Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

impl Credentials {
    /// Credentials from the config files only; problems with the files are reported later by
    /// [`Credentials::try_lookup`].
    pub fn from_config_files() -> Self {
        Self::from_config_paths(default_config_paths())
    }

    /// Credentials from the config files; fails if any existing file is unreadable or
    /// malformed.
    pub fn try_from_config_files() -> Result<Self, Error> {
        let creds = Self::from_config_files();
        if let Some(problem) = creds.file_problems.first() {
            return Err(problem.to_error());
        }
        if let Some(Err(problem)) = creds.from_files.values().find(|e| e.is_err()) {
            return Err(problem.to_error());
        }
        Ok(creds)
    }

    /// Credentials from these files, in order of priority (missing files are skipped).
    pub fn from_config_paths<P: AsRef<Path>>(paths: impl IntoIterator<Item = P>) -> Self {
        let mut creds = Self::default();
        for path in paths {
            creds.load_file(path.as_ref());
        }
        creds
    }

    fn load_file(&mut self, path: &Path) {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                self.file_problems.push(Problem::Read {
                    path: path.to_owned(),
                    source: Arc::new(e),
                });
                return;
            }
        };
        let file: AuthFile = match serde_json::from_slice(&bytes) {
            Ok(f) => f,
            Err(e) => {
                self.file_problems.push(Problem::Parse {
                    path: path.to_owned(),
                    source: Arc::new(e),
                });
                return;
            }
        };
        for (key, entry) in file.auths {
            let Some(host) = normalize_registry(&key) else {
                continue;
            };
            let parsed = match parse_entry(&entry) {
                Ok(Some(c)) => Ok(c),
                // An empty entry (docker writes `{}` when a helper holds the secret).
                Ok(None) => continue,
                Err(reason) => Err(Problem::Entry {
                    path: path.to_owned(),
                    key: key.clone(),
                    reason,
                }),
            };
            self.from_files.entry(host).or_insert(parsed);
        }
    }

    /// Use `credential` for `registry` (`host[:port]` as written in references).
    #[must_use]
    pub fn with_registry(mut self, registry: &str, credential: Credential) -> Self {
        let key = normalize_registry(registry).unwrap_or_else(|| registry.to_owned());
        self.explicit.insert(key, credential);
        self
    }

    /// The credential for `registry`, if any; problems with the config files count as none.
    pub fn lookup(&self, registry: &str) -> Option<Credential> {
        self.try_lookup(registry).ok().flatten()
    }

    /// The credential for `registry`: explicit first, then the files. Fails when there is no
    /// explicit credential and a config file (or its entry for `registry`) is unusable.
    pub fn try_lookup(&self, registry: &str) -> Result<Option<Credential>, Error> {
        let key = normalize_registry(registry).unwrap_or_else(|| registry.to_owned());
        if let Some(c) = self.explicit.get(&key) {
            return Ok(Some(c.clone()));
        }
        match self.from_files.get(&key) {
            Some(Ok(c)) => return Ok(Some(c.clone())),
            Some(Err(problem)) => return Err(problem.to_error()),
            None => {}
        }
        match self.file_problems.first() {
            Some(problem) => Err(problem.to_error()),
            None => Ok(None),
        }
    }
}

/// The config files to read, in priority order, from the environment.
fn default_config_paths() -> Vec<PathBuf> {
    let env = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let mut paths = Vec::new();
    if let Some(file) = env("REGISTRY_AUTH_FILE") {
        paths.push(file);
    } else if let Some(run) = env("XDG_RUNTIME_DIR") {
        paths.push(run.join("containers").join("auth.json"));
    }
    if let Some(dir) = env("DOCKER_CONFIG") {
        paths.push(dir.join("config.json"));
    } else if let Some(home) = dirs::home_dir() {
        paths.push(home.join(".docker").join("config.json"));
    }
    paths
}

/// Decode one `auths` entry. `Ok(None)` for an entry with no secret in it.
fn parse_entry(entry: &AuthEntry) -> Result<Option<Credential>, &'static str> {
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| "has an `auth` value that is not valid base64")?;
        let text =
            String::from_utf8(decoded).map_err(|_| "has an `auth` value that is not UTF-8")?;
        let (user, pass) = text
            .split_once(':')
            .ok_or("has an `auth` value without `username:password`")?;
        if user.is_empty() {
            return Err("has an `auth` value with an empty username");
        }
        return Ok(Some(Credential {
            username: user.to_owned(),
            password: Secret::new(pass),
        }));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) if !u.is_empty() => Ok(Some(Credential {
            username: u.clone(),
            password: Secret::new(p.clone()),
        })),
        (Some(_), None) | (None, Some(_)) => Err("has only one of `username` and `password`"),
        _ => Ok(None),
    }
}

/// `https://index.docker.io/v1/` -> `docker.io`, `https://zot.example:5000/x` ->
/// `zot.example:5000`. `None` for an empty key.
pub(crate) fn normalize_registry(key: &str) -> Option<String> {
    let key = key.trim();
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = rest.split('/').next().unwrap_or(rest).to_ascii_lowercase();
    if host.is_empty() {
        return None;
    }
    Some(match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            crate::reference::DOCKER_HUB.to_owned()
        }
        _ => host,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[rstest]
    #[case("zot.example", "zot.example")]
    #[case("https://zot.example", "zot.example")]
    #[case("https://zot.example/v1/", "zot.example")]
    #[case("http://127.0.0.1:5000/v2/", "127.0.0.1:5000")]
    #[case("Zot.Example:443", "zot.example:443")]
    #[case("https://index.docker.io/v1/", "docker.io")]
    #[case("index.docker.io", "docker.io")]
    #[case("registry-1.docker.io", "docker.io")]
    #[case("docker.io", "docker.io")]
    #[case("quay.io/namespace", "quay.io")]
    fn normalizes_keys(#[case] key: &str, #[case] expected: &str) {
        assert_eq!(normalize_registry(key).as_deref(), Some(expected));
    }

    #[test]
    fn reads_auth_and_username_password_forms() {
        let dir = tempfile::tempdir().unwrap();
        let docker = dir.path().join("config.json");
        std::fs::write(
            &docker,
            format!(
                r#"{{"auths": {{
                    "https://index.docker.io/v1/": {{"auth": "{}"}},
                    "https://zot.example/v1/": {{"username": "zot-ci", "password": "zak_pw"}},
                    "helper.example": {{}}
                }}, "credsStore": "desktop"}}"#,
                b64("hubuser:hub:pass")
            ),
        )
        .unwrap();
        let creds = Credentials::from_config_paths([&docker]);
        let hub = creds.try_lookup("docker.io").unwrap().unwrap();
        assert_eq!(hub.username, "hubuser");
        assert_eq!(hub.password.expose(), "hub:pass");
        let zot = creds.lookup("zot.example").unwrap();
        assert_eq!(
            (zot.username.as_str(), zot.password.expose()),
            ("zot-ci", "zak_pw")
        );
        assert!(creds.lookup("helper.example").is_none());
        assert!(creds.try_lookup("other.example").unwrap().is_none());
    }

    #[test]
    fn first_file_wins_and_explicit_wins_over_files() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("auth.json");
        let second = dir.path().join("config.json");
        std::fs::write(
            &first,
            format!(
                r#"{{"auths":{{"zot.example":{{"auth":"{}"}}}}}}"#,
                b64("a:1")
            ),
        )
        .unwrap();
        std::fs::write(
            &second,
            format!(
                r#"{{"auths":{{"zot.example":{{"auth":"{}"}}}}}}"#,
                b64("b:2")
            ),
        )
        .unwrap();
        let missing = dir.path().join("missing.json");
        let creds = Credentials::from_config_paths([&missing, &first, &second]);
        assert_eq!(creds.lookup("zot.example").unwrap().username, "a");
        let creds = creds.with_registry(
            "zot.example",
            Credential {
                username: "explicit".into(),
                password: Secret::new("x"),
            },
        );
        assert_eq!(creds.lookup("zot.example").unwrap().username, "explicit");
    }

    #[test]
    fn malformed_file_is_reported_with_its_path_at_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("config.json");
        std::fs::write(&bad, r#"{"auths": {"zot.example": "#).unwrap();
        let creds = Credentials::from_config_paths([&bad]);
        let err = creds.try_lookup("zot.example").unwrap_err();
        assert!(
            err.to_string().contains(&bad.display().to_string()),
            "{err}"
        );
        assert!(creds.lookup("zot.example").is_none());
        // Explicit credentials still work.
        let creds = creds.with_registry(
            "zot.example",
            Credential {
                username: "u".into(),
                password: Secret::new("p"),
            },
        );
        assert_eq!(
            creds.try_lookup("zot.example").unwrap().unwrap().username,
            "u"
        );
    }

    #[test]
    fn bad_entry_names_file_and_key_but_not_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        let secret_looking = b64("zak_no_colon_here");
        std::fs::write(
            &path,
            format!(r#"{{"auths":{{"zot.example":{{"auth":"{secret_looking}"}},"ok.example":{{"auth":"{}"}}}}}}"#, b64("u:p")),
        )
        .unwrap();
        let creds = Credentials::from_config_paths([&path]);
        assert_eq!(creds.lookup("ok.example").unwrap().username, "u");
        let msg = creds.try_lookup("zot.example").unwrap_err().to_string();
        assert!(
            msg.contains("zot.example") && msg.contains(&path.display().to_string()),
            "{msg}"
        );
        assert!(
            !msg.contains(&secret_looking) && !msg.contains("zak_no_colon_here"),
            "{msg}"
        );
    }
}
