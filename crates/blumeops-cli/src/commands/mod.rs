//! One module per subcommand.

pub mod build;
pub mod cache;
pub mod changed;
pub mod container_version;
pub mod doctor;
pub mod list;
pub mod plan;
pub mod publish;
pub mod push_archive;
pub mod remote;

use std::path::Path;

use anyhow::{Context, Result, bail};
use blumeops_core::{
    BuildArgs, BuildSecret, CacheOptions, ClientOptions, Compression, Container, Credential,
    Credentials, DefinitionInput, Engine, EngineOptions, ImageRef, MirrorFlag, Mirrors,
    MultiPlatform, Platform, RegistriesConf, RegistryCacheOptions, Secret, SecretSource, Store,
    default_jobs, file_container_version, resolve_epoch_for,
};

use crate::cli::{BuildFlags, CompressionArg, NAMESPACE};
use crate::{containers, progress};

/// What a build makes: one image, or one per platform under an index.
pub enum Targets {
    /// One platform (the engine's).
    One(Container),
    /// Several platforms.
    Several(MultiPlatform),
}

/// Everything a build needs, checked and typed.
pub struct Prepared {
    pub engine: Engine,
    pub targets: Targets,
    /// `REGISTRY/blumeops/NAME`, without tag.
    pub repository: String,
    pub version: String,
    pub commit_sha: Option<String>,
    /// Evict least recently used cache data beyond this after the build (0: no limit).
    pub cache_max_bytes: u64,
    /// The progress display the engine reports to.
    pub progress: progress::Progress,
}

impl Prepared {
    /// After a successful build: the progress summary, then the cache size limit.
    pub fn finish(&self, digest: &blumeops_core::Digest) {
        self.progress.finish(Some(digest));
        cache::enforce_limit(
            self.engine.store(),
            self.cache_max_bytes,
            self.progress.steps_ran(),
        );
    }

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

/// The version of a local build whose Dockerfile declares none.
pub const DEV_VERSION: &str = "dev";

/// What the build is for, which decides whether a missing version may default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A local build (`build`): without a version it is [`DEV_VERSION`], with a note.
    Build,
    /// A publish: the tag must come from the Dockerfile or `--version`.
    Publish,
}

/// The version to tag with: `--version`, else the one the container declares; without
/// either, [`DEV_VERSION`] for a local build (with a note on stderr) and invalid input for
/// a publish, since CI tags must be explicit.
pub fn resolve_version(
    flags: &BuildFlags,
    declared: Option<String>,
    purpose: Purpose,
) -> Result<String> {
    if let Some(v) = flags.version.clone().or(declared) {
        return Ok(v);
    }
    let name = &flags.container_name;
    match purpose {
        Purpose::Build => {
            eprintln!(
                "note: containers/{name}/Dockerfile has no `ARG CONTAINER_APP_VERSION=<version>` \
                 line and no --version was given: using version `{DEV_VERSION}`"
            );
            Ok(DEV_VERSION.to_owned())
        }
        Purpose::Publish => Err(InvalidInput::new(format!(
            "no version for container `{name}`: containers/{name}/Dockerfile has no \
             `ARG CONTAINER_APP_VERSION=<version>` line and --version was not given \
             (publish needs an explicit version; only build defaults to `{DEV_VERSION}`)"
        ))
        .with_hint(
            "add a line `ARG CONTAINER_APP_VERSION=<version>` to the Dockerfile, or pass \
             --version <version>",
        )
        .into()),
    }
}

/// Turn raw build flags into an engine and a container.
pub fn prepare(flags: &BuildFlags, purpose: Purpose) -> Result<Prepared> {
    let secrets = resolve_secrets(&flags.secrets)?;
    let platforms = parse_platforms(&flags.platforms)?;
    let mut loaded = Vec::with_capacity(platforms.len());
    let mut declared = None;
    for (i, platform) in platforms.iter().enumerate() {
        let load = Load {
            src: &flags.src,
            name: &flags.container_name,
            build_args: &flags.build_args,
            secrets: &secrets,
            platform,
            notes: i == 0,
        };
        // The version once, from the first platform's container.
        let (container, version) = load_container(&load, i == 0 && flags.version.is_none())?;
        if i == 0 {
            declared = version;
        }
        loaded.push((platform.clone(), container));
    }
    let version = resolve_version(flags, declared, purpose)?;
    let platform = platforms[0].clone();
    let targets = if loaded.len() == 1 {
        Targets::One(loaded.pop().expect("one container").1)
    } else {
        Targets::Several(MultiPlatform::new(loaded)?)
    };
    // The last change to the container's own directory, so commits elsewhere in the
    // checkout leave its timestamps, and its step cache, as they were.
    let own_dir = format!("containers/{}", flags.container_name);
    let paths: Vec<&str> = if flags.src.join(&own_dir).is_dir() {
        vec![own_dir.as_str()]
    } else {
        Vec::new()
    };
    let (epoch, _) = resolve_epoch_for(&flags.src, &paths).map_err(blumeops_core::Error::from)?;
    let cache_max_bytes = blumeops_core::parse_size(&flags.cache_max_bytes).ok_or_else(|| {
        InvalidInput::new(format!(
            "--cache-max-bytes: `{}` is not a size",
            flags.cache_max_bytes
        ))
        .with_hint("give bytes, or a number with K, M, G or T (powers of 1024); 0 for no limit")
    })?;

    let registry_cache = registry_cache_options(flags)?;
    let mut registry = registry_options(
        &flags.registry,
        &flags.registry_username,
        flags.registry_password.as_deref(),
        flags.plain_http,
    )?;
    registry.retry = flags.retry.policy();
    registry.mirrors = mirrors(flags)?;
    let store = Store::open_default().map_err(blumeops_core::Error::from)?;
    let progress = progress::Progress::new(progress::Mode::resolve(flags.progress));
    progress.exit_on_interrupt();
    let engine = Engine::new(EngineOptions {
        registry,
        platform,
        epoch,
        progress: Some(progress.callback()),
        cache: CacheOptions {
            disabled: flags.no_cache,
            bust: flags.no_cache_steps.clone(),
        },
        jobs: flags.jobs.map_or_else(default_jobs, usize::from),
        compression: match flags.compression {
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Zstd => Compression::Zstd,
        },
        step_pids_max: (flags.step_pids_max > 0).then_some(flags.step_pids_max),
        container_name: flags.container_name.clone(),
        registry_cache,
        ..EngineOptions::new(store)
    })?;

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
        targets,
        repository: format!(
            "{}/{NAMESPACE}/{}",
            flags.registry.trim_end_matches('/'),
            flags.container_name
        ),
        version,
        commit_sha,
        cache_max_bytes,
        progress,
    })
}

/// The registry cache `--cache-repo` asks for (`auto`: `REGISTRY/blumeops/cache/NAME`),
/// with its volume cap; `None` when it is off.
pub fn registry_cache_options(flags: &BuildFlags) -> Result<Option<RegistryCacheOptions>> {
    let Some(repository) = cache_repository(flags)? else {
        return Ok(None);
    };
    let volume_max_bytes =
        blumeops_core::parse_size(&flags.cache_volume_max_bytes).ok_or_else(|| {
            InvalidInput::new(format!(
                "--cache-volume-max-bytes: `{}` is not a size",
                flags.cache_volume_max_bytes
            ))
            .with_hint("give bytes, or a number with K, M, G or T (powers of 1024)")
        })?;
    Ok(Some(RegistryCacheOptions {
        volume_max_bytes,
        ..RegistryCacheOptions::new(repository)
    }))
}

/// The repository of `--cache-repo`, resolved (`auto`) and checked; `None` when unset.
pub fn cache_repository(flags: &BuildFlags) -> Result<Option<ImageRef>> {
    let text = match flags.cache_repo.as_deref().map(str::trim) {
        None | Some("") => return Ok(None),
        Some("auto") => format!(
            "{}/{NAMESPACE}/cache/{}",
            flags.registry.trim_end_matches('/'),
            flags.container_name
        ),
        Some(repo) => repo.to_owned(),
    };
    let invalid = |why: String| {
        InvalidInput::new(format!("--cache-repo: `{text}` {why}"))
            .with_hint("give a repository such as registry.example/blumeops/cache/NAME, or auto")
    };
    let repository: ImageRef = text
        .parse()
        .map_err(|e: blumeops_core::ReferenceError| invalid(format!("is not a repository: {e}")))?;
    if repository.digest().is_some()
        || text
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'))
    {
        return Err(
            invalid("names a tag or digest; the cache's tags are its own".to_owned()).into(),
        );
    }
    Ok(Some(repository))
}

/// Where base images may come from: the `--registry-mirror` flags, then registries.conf
/// (this machine's files, or the one the docker executor's client sent).
pub fn mirrors(flags: &BuildFlags) -> Result<Mirrors> {
    let given = flags
        .registry_mirrors
        .iter()
        .filter(|m| !m.trim().is_empty())
        .map(|m| m.parse::<MirrorFlag>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(blumeops_core::Error::from)?;
    let conf = match &flags.registries_conf_toml {
        Some(text) => RegistriesConf::from_toml(text, "the client's registries.conf"),
        None => RegistriesConf::load(),
    }
    .map_err(blumeops_core::Error::from)?;
    Ok(Mirrors::new(given, conf))
}

/// The `--platform` values, parsed: the host's platform when there are none; one given
/// twice is refused.
pub fn parse_platforms(given: &[String]) -> Result<Vec<Platform>> {
    let mut platforms: Vec<Platform> = Vec::new();
    for text in given.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
        let platform: Platform = text.parse().map_err(blumeops_core::Error::from)?;
        if platforms.contains(&platform) {
            return Err(InvalidInput::new(format!("--platform: {platform} is given twice")).into());
        }
        platforms.push(platform);
    }
    if platforms.is_empty() {
        platforms.push(Platform::host());
    }
    Ok(platforms)
}

/// What [`load_container`] loads.
pub struct Load<'a> {
    /// The source checkout.
    pub src: &'a Path,
    /// The container's name.
    pub name: &'a str,
    /// `--build-arg` values.
    pub build_args: &'a [String],
    /// `--secret` values (their names reach the Dockerfile's build args).
    pub secrets: &'a [(BuildSecret, Secret)],
    /// The platform the container is for.
    pub platform: &'a Platform,
    /// Print the Dockerfile's notes (once per command, not once per platform).
    pub notes: bool,
}

/// The container called `name` (a native definition, else `SRC/containers/NAME/Dockerfile`
/// with its directory as the build context) for the platform, and the version it declares
/// (`None` for a Dockerfile without `ARG CONTAINER_APP_VERSION=...`). The Dockerfile's
/// version is only looked up when `want_version` is set.
pub fn load_container(load: &Load<'_>, want_version: bool) -> Result<(Container, Option<String>)> {
    let (src, name) = (load.src, load.name);
    let mut args = BuildArgs::parse(load.build_args).map_err(blumeops_core::Error::from)?;
    for (spec, value) in load.secrets {
        args = args.with_secret(&spec.id, value.clone());
    }
    if let Some(definition) = containers::find(name) {
        let container = definition
            .container(&DefinitionInput {
                args,
                src: src.to_path_buf(),
                platform: load.platform.clone(),
            })
            .map_err(blumeops_core::Error::from)?;
        return Ok((container, Some(definition.version().to_owned())));
    }
    let dir = src.join("containers").join(name);
    let dockerfile = dir.join("Dockerfile");
    if !dockerfile.is_file() {
        return Err(unknown_container(name, src).into());
    }
    let loaded =
        blumeops_core::load_dockerfile_for_platform(&dockerfile, &dir, &args, None, load.platform)
            .map_err(blumeops_core::Error::from)?;
    if load.notes {
        for note in &loaded.notes {
            eprintln!("note: {note}");
        }
    }
    let container = loaded.container;
    let version = if want_version {
        match file_container_version(src, name) {
            Ok(v) => v,
            // The caller decides: `dev` for a local build, an error for a publish.
            Err(blumeops_core::DefinitionError::NoVersion { .. }) => None,
            Err(e) => return Err(blumeops_core::Error::from(e).into()),
        }
    } else {
        None
    };
    Ok((container, version))
}

/// The `--secret` flags, parsed and read (a later one of the same name wins).
pub fn resolve_secrets(flags: &[String]) -> Result<Vec<(BuildSecret, Secret)>> {
    let mut out: Vec<(BuildSecret, Secret)> = Vec::new();
    for text in flags {
        let spec: BuildSecret = text.parse().map_err(blumeops_core::Error::from)?;
        let value = spec
            .source
            .resolve()
            .map_err(blumeops_core::Error::from)
            .with_context(|| format!("--secret {}", spec.id))?;
        out.retain(|(s, _)| s.id != spec.id);
        out.push((spec, value));
    }
    Ok(out)
}

/// Invalid input found by the CLI itself (a bad git ref, ...): exit code 2.
#[derive(Debug)]
pub struct InvalidInput {
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub hint: Option<&'static str>,
}

impl InvalidInput {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            hint: None,
        }
    }

    #[must_use]
    pub fn with_hint(mut self, hint: &'static str) -> Self {
        self.hint = Some(hint);
        self
    }
}

impl std::fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for InvalidInput {}

/// Registry client options: credentials from docker/podman config files, plus
/// `username`/`password` (a secret source: `env:`, `file:`, `cmd:`) for `registry`.
pub fn registry_options(
    registry: &str,
    username: &str,
    password: Option<&str>,
    plain_http: bool,
) -> Result<ClientOptions> {
    let mut credentials = Credentials::from_config_files();
    if let Some(source) = password {
        let source: SecretSource = source
            .parse()
            .map_err(blumeops_core::Error::from)
            .context("invalid --registry-password")?;
        let password = source.resolve().map_err(blumeops_core::Error::from)?;
        credentials = credentials.with_registry(
            registry,
            Credential {
                username: username.to_owned(),
                password,
            },
        );
    }
    Ok(ClientOptions {
        credentials,
        plain_http,
        ..ClientOptions::default()
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

/// Publishing needs a commit sha for the tag: the error when there is none.
pub fn require_commit_sha(flags: &BuildFlags, sha: Option<&String>) -> Result<()> {
    if sha.is_none() {
        bail!(blumeops_core::Error::from(
            blumeops_core::DefinitionError::Invalid {
                name: flags.container_name.clone(),
                message: format!(
                    "cannot determine the commit sha: `{}` is not a git checkout; pass --commit-sha",
                    flags.src.display()
                ),
            }
        ));
    }
    Ok(())
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
