//! Container definitions: Rust code that turns build arguments into a [`Container`], and
//! version lookup for the containers that are still a Dockerfile or a Nix expression.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::pipeline::Container;
use crate::reference::Platform;

/// Errors from definitions and build arguments.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A `--build-arg` is not `KEY=VALUE`.
    #[error("invalid build argument `{0}`: expected KEY=VALUE")]
    InvalidBuildArg(String),
    /// No definition, Dockerfile or default.nix has this name.
    #[error("unknown container `{name}`; known containers: {}", if known.is_empty() { "none".to_owned() } else { known.join(", ") })]
    UnknownContainer {
        /// What was asked for.
        name: String,
        /// What exists.
        known: Vec<String>,
    },
    /// A container directory exists but its version could not be found.
    #[error("no version found for container `{name}` in `{}`: {expected}", path.display())]
    NoVersion {
        /// Container name.
        name: String,
        /// The file read.
        path: PathBuf,
        /// What was looked for.
        expected: &'static str,
    },
    /// Reading a container file failed.
    #[error("failed to read `{}`", path.display())]
    Read {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A definition refused its input.
    #[error("container `{name}`: {message}")]
    Invalid {
        /// Container name.
        name: String,
        /// What is wrong.
        message: String,
    },
}

/// Build arguments (`--build-arg KEY=VALUE`), and the secrets a build is given
/// (`--secret`, for a Dockerfile's `RUN --mount=type=secret`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildArgs {
    values: BTreeMap<String, String>,
    secrets: BTreeMap<String, crate::secret::Secret>,
}

impl BuildArgs {
    /// No arguments.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parse `KEY=VALUE` items; a later key wins.
    pub fn parse<I, S>(items: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut args = Self::new();
        for item in items {
            let item = item.as_ref();
            match item.split_once('=') {
                Some((k, v)) if !k.is_empty() && !k.contains(char::is_whitespace) => {
                    args.values.insert(k.to_owned(), v.to_owned());
                }
                _ => return Err(Error::InvalidBuildArg(item.to_owned())),
            }
        }
        Ok(args)
    }

    /// Set one argument.
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.values.insert(key.into(), value.into());
        self
    }

    /// Give the secret called `id`.
    #[must_use]
    pub fn with_secret(mut self, id: impl Into<String>, secret: crate::secret::Secret) -> Self {
        self.secrets.insert(id.into(), secret);
        self
    }

    /// The secret called `id`, if given.
    pub fn secret(&self, id: &str) -> Option<&crate::secret::Secret> {
        self.secrets.get(id)
    }

    /// The value of `key`, if given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The value of `key`, or `default`.
    pub fn get_or<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.get(key).unwrap_or(default)
    }

    /// All arguments, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// What a definition gets to build its container.
#[derive(Debug, Clone)]
pub struct DefinitionInput {
    /// `--build-arg` values.
    pub args: BuildArgs,
    /// The source checkout (`--src`), for host files.
    pub src: PathBuf,
    /// The platform this container is for (one of `--platform`'s; the host's by default).
    /// A definition builds one container per platform; a stage whose output does not
    /// depend on it (a web UI's bundle) can run on the build machine's platform instead,
    /// [`Platform::host`], with [`Container::from_platform`](crate::Container::from_platform).
    pub platform: Platform,
}

/// A natively defined container (one crate under `containers/`).
pub trait ContainerDefinition: Send + Sync {
    /// Name, as in `--container-name`.
    fn name(&self) -> &'static str;
    /// Version of the packaged application, e.g. `v1.0.0`.
    fn version(&self) -> &'static str;
    /// The container for these inputs.
    fn container(&self, input: &DefinitionInput) -> Result<Container, Error>;
}

/// Add a leading `v` when missing (`1.2.3` -> `v1.2.3`).
pub fn normalize_version(version: &str) -> String {
    if version.starts_with('v') {
        version.to_owned()
    } else {
        format!("v{version}")
    }
}

/// Version of a container that is a `containers/NAME/Dockerfile` (from
/// `ARG CONTAINER_APP_VERSION=`) or a `containers/NAME/default.nix` (from `version = "..."`).
/// `Ok(None)` when neither file exists.
pub fn file_container_version(src: &Path, name: &str) -> Result<Option<String>, Error> {
    let dir = src.join("containers").join(name);
    let dockerfile = dir.join("Dockerfile");
    if dockerfile.is_file() {
        let text = read(&dockerfile)?;
        let version = text.lines().find_map(|line| {
            let rest = line.trim().strip_prefix("ARG")?;
            let rest = rest.trim_start().strip_prefix("CONTAINER_APP_VERSION=")?;
            Some(rest.trim().trim_matches('"').to_owned())
        });
        return match version {
            Some(v) if !v.is_empty() => Ok(Some(normalize_version(&v))),
            _ => Err(Error::NoVersion {
                name: name.to_owned(),
                path: dockerfile,
                expected: "a line `ARG CONTAINER_APP_VERSION=<version>`",
            }),
        };
    }
    let nix = dir.join("default.nix");
    if nix.is_file() {
        let text = read(&nix)?;
        let version = text.lines().find_map(|line| {
            let rest = line
                .trim()
                .strip_prefix("version")?
                .trim_start()
                .strip_prefix('=')?;
            let rest = rest.trim().strip_prefix('"')?;
            Some(rest.split('"').next()?.to_owned())
        });
        return match version {
            Some(v) if !v.is_empty() => Ok(Some(normalize_version(&v))),
            _ => Err(Error::NoVersion {
                name: name.to_owned(),
                path: nix,
                expected: "a line `version = \"<version>\";`",
            }),
        };
    }
    Ok(None)
}

/// Names of the containers under `src/containers` that have a Dockerfile or default.nix.
pub fn file_container_names(src: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(src.join("containers"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let p = e.path();
            p.join("Dockerfile").is_file() || p.join("default.nix").is_file()
        })
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_args_parse() {
        let a = BuildArgs::parse(["A=1", "B=x=y", "A=2", "EMPTY="]).unwrap();
        assert_eq!(a.get("A"), Some("2"));
        assert_eq!(a.get("B"), Some("x=y"));
        assert_eq!(a.get("EMPTY"), Some(""));
        assert_eq!(a.get_or("C", "d"), "d");
        for bad in ["noequals", "=v", "A B=c"] {
            let err = BuildArgs::parse([bad]).unwrap_err().to_string();
            assert!(err.contains(bad) && err.contains("KEY=VALUE"), "{err}");
        }
    }

    #[test]
    fn versions_from_dockerfile_and_nix() {
        let src = tempfile::tempdir().unwrap();
        let c = src.path().join("containers");
        for (name, file, text) in [
            (
                "withv",
                "Dockerfile",
                "FROM x\nARG CONTAINER_APP_VERSION=v1.2.3\n",
            ),
            (
                "nov",
                "Dockerfile",
                "ARG CONTAINER_APP_VERSION=2.0.0\nFROM x\n",
            ),
            (
                "nixy",
                "default.nix",
                "{ pkgs }:\nlet\n  version = \"3.4.5\";\nin pkgs.x\n",
            ),
            ("broken", "Dockerfile", "FROM x\n"),
        ] {
            std::fs::create_dir_all(c.join(name)).unwrap();
            std::fs::write(c.join(name).join(file), text).unwrap();
        }
        let v = |n| file_container_version(src.path(), n);
        assert_eq!(v("withv").unwrap().as_deref(), Some("v1.2.3"));
        assert_eq!(v("nov").unwrap().as_deref(), Some("v2.0.0"));
        assert_eq!(v("nixy").unwrap().as_deref(), Some("v3.4.5"));
        assert_eq!(v("missing").unwrap(), None);
        let err = v("broken").unwrap_err().to_string();
        assert!(
            err.contains("CONTAINER_APP_VERSION") && err.contains("broken"),
            "{err}"
        );
        assert_eq!(
            file_container_names(src.path()),
            ["broken", "nixy", "nov", "withv"]
        );
    }
}
