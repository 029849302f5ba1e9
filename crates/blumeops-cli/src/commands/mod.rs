//! One module per subcommand.

pub mod build;
pub mod container_version;
pub mod publish;

use std::path::Path;

use anyhow::{Context, Result, bail};
use blumeops_core::{
    BuildArgs, ClientOptions, Container, Credential, Credentials, DefinitionInput, Engine,
    EngineOptions, ImageRef, Platform, SecretSource, Store, file_container_version, resolve_epoch,
};

use crate::cli::{BuildFlags, NAMESPACE};
use crate::{containers, progress};

/// Everything a build needs, checked and typed.
pub struct Prepared {
    pub engine: Engine,
    pub container: Container,
    /// `REGISTRY/blumeops/NAME`, without tag.
    pub repository: String,
    pub version: String,
    pub commit_sha: Option<String>,
}

impl Prepared {
    /// The tag: `VERSION-SHA`, or `VERSION` when there is no sha.
    pub fn tag(&self) -> String {
        match &self.commit_sha {
            Some(sha) => format!("{}-{sha}", self.version),
            None => self.version.clone(),
        }
    }

    pub fn target(&self) -> Result<ImageRef> {
        let text = format!("{}:{}", self.repository, self.tag());
        text.parse()
            .with_context(|| format!("invalid target image reference `{text}`"))
    }
}

/// Turn raw build flags into an engine and a container.
pub fn prepare(flags: &BuildFlags) -> Result<Prepared> {
    let args = BuildArgs::parse(&flags.build_args).map_err(blumeops_core::Error::from)?;
    let (container, default_version) = match containers::find(&flags.container_name) {
        Some(definition) => (
            definition
                .container(&DefinitionInput {
                    args,
                    src: flags.src.clone(),
                })
                .map_err(blumeops_core::Error::from)?,
            definition.version().to_owned(),
        ),
        None => {
            // Not a native definition: the container's Dockerfile, with its directory as
            // the build context.
            let dir = flags.src.join("containers").join(&flags.container_name);
            let dockerfile = dir.join("Dockerfile");
            if !dockerfile.is_file() {
                return Err(unknown_container(&flags.container_name, &flags.src).into());
            }
            let container = blumeops_core::load_dockerfile(&dockerfile, &dir, &args, None)
                .map_err(blumeops_core::Error::from)?;
            // The Dockerfile's version is only needed when --version is not given.
            let version = match &flags.version {
                Some(v) => v.clone(),
                None => file_container_version(&flags.src, &flags.container_name)
                    .map_err(blumeops_core::Error::from)?
                    .unwrap_or_default(),
            };
            (container, version)
        }
    };

    let platform: Platform = match &flags.platform {
        Some(p) => p.parse().map_err(blumeops_core::Error::from)?,
        None => Platform::host(),
    };
    let (epoch, _) = resolve_epoch(&flags.src).map_err(blumeops_core::Error::from)?;

    let mut credentials = Credentials::from_config_files();
    if let Some(source) = &flags.registry_password {
        let source: SecretSource = source
            .parse()
            .map_err(blumeops_core::Error::from)
            .context("invalid --registry-password")?;
        let password = source.resolve().map_err(blumeops_core::Error::from)?;
        credentials = credentials.with_registry(
            &flags.registry,
            Credential {
                username: flags.registry_username.clone(),
                password,
            },
        );
    }
    let registry = ClientOptions {
        credentials,
        plain_http: flags.plain_http,
        ..ClientOptions::default()
    };
    let store = Store::open_default().map_err(blumeops_core::Error::from)?;
    let engine = Engine::new(EngineOptions {
        registry,
        platform,
        epoch,
        progress: Some(progress::stderr()),
        ..EngineOptions::new(store)
    })?;

    let version = flags.version.clone().unwrap_or(default_version);
    if version.is_empty() {
        bail!(blumeops_core::Error::from(
            blumeops_core::DefinitionError::Invalid {
                name: flags.container_name.clone(),
                message: "--version must not be empty".to_owned(),
            }
        ));
    }
    let commit_sha = match &flags.commit_sha {
        Some(sha) => Some(sha.clone()),
        None => git_short_sha(&flags.src),
    };
    Ok(Prepared {
        engine,
        container,
        repository: format!(
            "{}/{NAMESPACE}/{}",
            flags.registry.trim_end_matches('/'),
            flags.container_name
        ),
        version,
        commit_sha,
    })
}

/// The error for a container that is neither native nor a Dockerfile/Nix directory.
pub fn unknown_container(name: &str, src: &Path) -> blumeops_core::Error {
    let mut known: Vec<String> = containers::native()
        .iter()
        .map(|d| d.name().to_owned())
        .collect();
    known.extend(blumeops_core::file_container_names(src));
    known.sort();
    known.dedup();
    blumeops_core::DefinitionError::UnknownContainer {
        name: name.to_owned(),
        known,
    }
    .into()
}

/// First 7 characters of `git -C src rev-parse HEAD`, if `src` is a git checkout.
pub fn git_short_sha(src: &Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(src)
        .args(["rev-parse", "HEAD"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let sha = String::from_utf8(out.stdout).ok()?;
    Some(sha.trim().chars().take(7).collect())
}
