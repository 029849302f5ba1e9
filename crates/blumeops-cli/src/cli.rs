//! Command-line flags (raw, as clap parses them). Commands turn them into typed values.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Default target registry.
pub const DEFAULT_REGISTRY: &str = "registry.ops.eblu.me";
/// Default registry user (zot's create-only CI account).
pub const DEFAULT_REGISTRY_USERNAME: &str = "zot-ci";
/// Repository namespace images are published under.
pub const NAMESPACE: &str = "blumeops";

/// Build blumeops container images without a Docker daemon and publish them to zot.
#[derive(Debug, Parser)]
#[command(name = "blumeops", version, about, max_term_width = 100)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Where build steps run (build, publish, cache): `root` (the sandbox as root),
    /// `rootless` (the sandbox in a user namespace of the calling user), `docker` (the
    /// whole build in a helper container of a Docker Engine API: DOCKER_HOST,
    /// /var/run/docker.sock or podman's socket), or `auto` (the first of those that works
    /// here; docker off Linux, where root and rootless cannot run). `blumeops doctor` shows
    /// what each needs.
    #[arg(
        long,
        global = true,
        env = "BLUMEOPS_EXECUTOR",
        default_value = "auto",
        value_name = "auto|root|rootless|docker"
    )]
    pub executor: blumeops_core::executor::ExecutorKind,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a container and push it to the registry as REGISTRY/blumeops/NAME:VERSION-SHA.
    ///
    /// Prints `REF@sha256:DIGEST` as the last line of stdout. Re-publishing the same image
    /// to an existing tag pushes nothing and succeeds; a different image for an existing tag
    /// fails unless --allow-overwrite is given.
    Publish(PublishArgs),
    /// Build a container into a local OCI layout directory or docker archive.
    Build(BuildArgs),
    /// Print a container's version (e.g. `v1.0.0`).
    ContainerVersion(VersionArgs),
    /// Push an image built elsewhere (a docker archive, e.g. from `nix-build` of a
    /// dockerTools image) as an OCI image to REGISTRY/blumeops/NAME:VERSION-SHA-nix.
    ///
    /// Prints `REF@sha256:DIGEST` as the last line of stdout. The tag policy is publish's.
    PushArchive(PushArchiveArgs),
    /// Print a container's build steps (stages, bases, commands, files, config) without
    /// running anything.
    Plan(PlanArgs),
    /// List every container: native definitions and containers/*/ with a Dockerfile or
    /// default.nix, with build types and versions.
    List(ListArgs),
    /// Print, as a JSON array, the containers whose files changed between REF and HEAD
    /// (`git diff --name-only REF HEAD`), for a workflow matrix.
    Changed(ChangedArgs),
    /// Show or prune the local cache: blobs, unpacked layers, step records, cache volumes
    /// and logs (under $BLUMEOPS_CACHE_DIR, default ~/.cache/blumeops).
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Show which executor `auto` picks here and what each executor needs: root, namespaces,
    /// overlayfs, user namespaces, subordinate id ranges, newuidmap/newgidmap. Exit code 1
    /// when none can run build steps.
    Doctor(DoctorArgs),
    /// The docker executor's engine, run by blumeops in its helper container: reads the
    /// handshake on stdin, then runs ARGS.
    #[command(hide = true)]
    Engine(EngineArgs),
}

/// `engine` arguments.
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// The blumeops command line to run.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<String>,
}

/// `doctor` flags.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `cache` subcommands.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Print how much the cache holds, by part.
    Du(CacheDuArgs),
    /// Remove cached data: everything, the least recently used beyond a size, or what was
    /// not used for a while. Waits for running builds to finish first.
    Prune(CachePruneArgs),
}

/// `cache du` flags.
#[derive(Debug, Args)]
pub struct CacheDuArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Show what a registry cache repository holds instead (`--cache-repo` of builds),
    /// read with the credentials of the registry config files.
    #[arg(long, value_name = "REPO")]
    pub remote: Option<String>,
}

/// `cache prune` flags (exactly one).
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct CachePruneArgs {
    /// Remove everything.
    #[arg(long)]
    pub all: bool,
    /// Remove the least recently used data until the cache holds at most SIZE, e.g. `10G`,
    /// `500M` (powers of 1024) or a number of bytes.
    #[arg(long, value_name = "SIZE")]
    pub keep_bytes: Option<String>,
    /// Remove what was not used for AGE, e.g. `7d`, `12h`, `30m`, `90s`, `2w`.
    #[arg(long, value_name = "AGE")]
    pub older_than: Option<String>,
}

/// Flags shared by `build` and `publish`.
#[derive(Debug, Args)]
pub struct BuildFlags {
    /// Source checkout: containers/ is looked up here; its git HEAD gives the commit sha,
    /// and the last commit that changed containers/NAME the timestamp.
    #[arg(long, default_value = ".")]
    pub src: PathBuf,
    /// Container to build, e.g. `hello`.
    #[arg(long)]
    pub container_name: String,
    /// Version for the tag [default: the container's version; `build` of a Dockerfile without
    /// `ARG CONTAINER_APP_VERSION=` uses `dev`, `publish` needs one].
    #[arg(long)]
    pub version: Option<String>,
    /// Commit sha for the tag [default: first 7 characters of `git -C SRC rev-parse HEAD`].
    #[arg(long)]
    pub commit_sha: Option<String>,
    /// Build argument passed to the definition, KEY=VALUE (repeatable).
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,
    /// Secret for `RUN --mount=type=secret` (repeatable): id=NAME,src=PATH or
    /// id=NAME,env=VAR (docker buildx; type=file|env allowed), or NAME=env:VAR,
    /// NAME=file:PATH, NAME=cmd:COMMAND. Its value reaches no layer, log or cache key.
    #[arg(long = "secret", value_name = "SECRET")]
    pub secrets: Vec<String>,
    /// Platforms to build for, comma-separated, e.g. `linux/amd64,linux/arm64` (variants
    /// such as `linux/arm/v7` too). Several give one image per platform under one OCI
    /// index [default: the host's linux platform].
    #[arg(
        long = "platform",
        value_name = "PLATFORMS",
        env = "BLUMEOPS_PLATFORMS",
        value_delimiter = ','
    )]
    pub platforms: Vec<String>,
    /// Target registry (also used, with the credentials below, to pull base images from it).
    #[arg(long, default_value = DEFAULT_REGISTRY)]
    pub registry: String,
    /// Username for the target registry.
    #[arg(long, default_value = DEFAULT_REGISTRY_USERNAME)]
    pub registry_username: String,
    /// Password or API key for the target registry: env:NAME, file:PATH or cmd:COMMAND.
    #[arg(long, value_name = "SOURCE")]
    pub registry_password: Option<String>,
    /// Use plain HTTP for every registry (loopback registries always use it).
    #[arg(long)]
    pub plain_http: bool,
    /// Pull base images under SOURCE from MIRROR first, e.g.
    /// `docker.io=registry.ops.eblu.me/docker.io` (`http://MIRROR`: plain HTTP). Repeatable:
    /// tried in order, before registries.conf's mirrors; one that fails falls through to the
    /// next, then to SOURCE itself. The variable is comma-separated.
    #[arg(
        long = "registry-mirror",
        value_name = "SOURCE=MIRROR",
        env = "BLUMEOPS_REGISTRY_MIRRORS",
        value_delimiter = ','
    )]
    pub registry_mirrors: Vec<String>,
    /// The registries.conf to use instead of this machine's files: the docker executor's
    /// client sends its own to the engine, which cannot read them.
    #[arg(long, hide = true, value_name = "TOML")]
    pub registries_conf_toml: Option<String>,
    /// Retries of failing registry requests.
    #[command(flatten)]
    pub retry: RetryFlags,
    /// Progress display: a live view on a terminal, plain lines, or JSON lines.
    #[arg(long, value_enum, default_value_t = ProgressArg::Auto)]
    pub progress: ProgressArg,
    /// Run every step, ignoring the step cache (results are still cached for next time).
    #[arg(long)]
    pub no_cache: bool,
    /// Run the steps whose description contains TEXT even when cached, e.g. `npm ci`
    /// (repeatable); later steps are reused if the step's result did not change.
    #[arg(long = "no-cache-step", value_name = "TEXT")]
    pub no_cache_steps: Vec<String>,
    /// Most steps running at once; independent stages run concurrently [default: the
    /// number of cores].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: Option<u16>,
    /// After the build, evict the least recently used cache data beyond SIZE (e.g. `20G`,
    /// `500M`; `0` turns the limit off).
    #[arg(
        long,
        value_name = "SIZE",
        env = "BLUMEOPS_CACHE_MAX_BYTES",
        default_value = "20G"
    )]
    pub cache_max_bytes: String,
    /// Most processes a build step may have at once, enforced with a pids cgroup where one
    /// can be made (`blumeops doctor` says); 0: no limit.
    #[arg(long, value_name = "N", default_value_t = blumeops_core::DEFAULT_PIDS_MAX)]
    pub step_pids_max: u64,
    /// Layer compression for the layers this build creates.
    #[arg(long, value_enum, default_value_t = CompressionArg::Gzip)]
    pub compression: CompressionArg,
    /// Share step results and cache volumes through this registry repository (read
    /// anonymously, written with the registry credentials); `auto` is
    /// REGISTRY/blumeops/cache/NAME [default: off].
    #[arg(long, value_name = "REPO|auto", env = "BLUMEOPS_CACHE_REPO")]
    pub cache_repo: Option<String>,
    /// Largest cache volume exported to the registry cache (the sum of its file sizes,
    /// e.g. `2G`, `500M`).
    #[arg(
        long,
        value_name = "SIZE",
        env = "BLUMEOPS_CACHE_VOLUME_MAX_BYTES",
        default_value = "2G"
    )]
    pub cache_volume_max_bytes: String,
    /// Docker executor: the engine image to run [default: one made from this executable
    /// and loaded into the daemon].
    #[arg(long, value_name = "REF", env = "BLUMEOPS_ENGINE_IMAGE")]
    pub engine_image: Option<String>,
    /// Docker executor: the volume holding the engine's cache, kept between builds.
    #[arg(
        long,
        value_name = "NAME",
        env = "BLUMEOPS_ENGINE_VOLUME",
        default_value = blumeops_core::executor::docker::DEFAULT_VOLUME
    )]
    pub engine_volume: String,
}

/// `--compression` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    /// gzip (`tar+gzip`), readable by every client; compressed on all cores.
    Gzip,
    /// zstd (`tar+zstd`, the OCI zstd media type): faster to write and to read; needs a
    /// recent client (containerd 1.5+, podman/buildah 1.19+).
    Zstd,
}

/// `--progress` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressArg {
    /// `tty` when stderr is a terminal, `CI` is unset and `TERM` is not `dumb`; else `plain`.
    Auto,
    /// A live view: each running step with its elapsed time and the last lines of its output
    /// (`BLUMEOPS_PROGRESS_LINES`, default 6), finished steps collapsed to one line.
    Tty,
    /// One line per event, no terminal escape sequences (for logs and CI).
    Plain,
    /// One JSON object per line, for tools (schema in the README).
    Json,
}

/// `publish` flags.
#[derive(Debug, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    /// Build flags.
    pub build: BuildFlags,
    /// Replace an existing tag that points at a different image (needs update permission).
    #[arg(long)]
    pub allow_overwrite: bool,
    /// Print `{"ref":..,"digest":..,"tag":..}` as the last stdout line instead of
    /// `REF@sha256:DIGEST`.
    #[arg(long)]
    pub json: bool,
}

/// `build` flags.
#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    /// Build flags.
    pub build: BuildFlags,
    /// Where to write the image: oci:DIR or docker-archive:FILE.
    #[arg(long, value_name = "oci:DIR|docker-archive:FILE")]
    pub output: String,
}

/// `container-version` flags.
#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Container name.
    pub name: String,
    /// Source checkout to look for containers/NAME/{Dockerfile,default.nix}.
    #[arg(long, default_value = ".")]
    pub src: PathBuf,
}

/// `plan` flags.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Container to plan, e.g. `hello`.
    #[arg(long)]
    pub container_name: String,
    /// Source checkout to look for containers/NAME/Dockerfile.
    #[arg(long, default_value = ".")]
    pub src: PathBuf,
    /// Build argument passed to the definition, KEY=VALUE (repeatable).
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,
    /// Platforms to plan for, comma-separated (as `build --platform`): a plan per platform
    /// [default: the host's linux platform].
    #[arg(
        long = "platform",
        value_name = "PLATFORMS",
        env = "BLUMEOPS_PLATFORMS",
        value_delimiter = ','
    )]
    pub platforms: Vec<String>,
    /// Secret for `RUN --mount=type=secret`, in `build`'s forms (repeatable): the plan shows
    /// where it is mounted. Only its id counts; its source is not read.
    #[arg(long = "secret", value_name = "SECRET")]
    pub secrets: Vec<String>,
    /// Print the plan as JSON (the same as `--format json`).
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// How to print the plan: `text`, `json`, or a picture of the stages as a `mermaid`
    /// flowchart (for markdown on a forge) or a graphviz `dot` graph (`dot -Tsvg`).
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    pub format: PlanFormat,
}

/// `plan --format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    /// Every stage and step, as text.
    Text,
    /// The plan as JSON.
    Json,
    /// A mermaid flowchart of the stages.
    Mermaid,
    /// A graphviz digraph of the stages.
    Dot,
}

/// `list` flags.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Source checkout to look for containers/*/{Dockerfile,default.nix}.
    #[arg(long, default_value = ".")]
    pub src: PathBuf,
    /// Also show the most recent tags of each container in the registry.
    #[arg(long)]
    pub tags: bool,
    /// Registry to read tags from (anonymously, or with docker/podman credentials).
    #[arg(long, default_value = DEFAULT_REGISTRY)]
    pub registry: String,
    /// Use plain HTTP for the registry (loopback registries always use it).
    #[arg(long)]
    pub plain_http: bool,
    /// Print the list as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `changed` flags.
#[derive(Debug, Args)]
pub struct ChangedArgs {
    /// Commit to compare HEAD with, e.g. a push's before-sha. An all-zero sha (a new
    /// branch) means every container.
    #[arg(long, value_name = "REF")]
    pub base: String,
    /// Source checkout (a git repository).
    #[arg(long, default_value = ".")]
    pub src: PathBuf,
}

/// `push-archive` flags.
#[derive(Debug, Args)]
pub struct PushArchiveArgs {
    /// The docker archive (plain, gzip or zstd tar), e.g. `./result`.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Container name: the image goes to REGISTRY/blumeops/NAME.
    #[arg(long)]
    pub container_name: String,
    /// Source checkout: containers/NAME/default.nix gives the version, its git HEAD the sha.
    #[arg(long, default_value = ".")]
    pub src: PathBuf,
    /// Version for the tag [default: `version = "..."` of containers/NAME/default.nix].
    #[arg(long)]
    pub version: Option<String>,
    /// Commit sha for the tag [default: first 7 characters of `git -C SRC rev-parse HEAD`].
    #[arg(long)]
    pub commit_sha: Option<String>,
    /// Which image of an archive holding several (0-based, in manifest.json order).
    #[arg(long, value_name = "N")]
    pub image_index: Option<usize>,
    /// Target registry.
    #[arg(long, default_value = DEFAULT_REGISTRY)]
    pub registry: String,
    /// Username for the target registry.
    #[arg(long, default_value = DEFAULT_REGISTRY_USERNAME)]
    pub registry_username: String,
    /// Password or API key for the target registry: env:NAME, file:PATH or cmd:COMMAND.
    #[arg(long, value_name = "SOURCE")]
    pub registry_password: Option<String>,
    /// Use plain HTTP for the registry (loopback registries always use it).
    #[arg(long)]
    pub plain_http: bool,
    /// Retries of failing registry requests.
    #[command(flatten)]
    pub retry: RetryFlags,
    /// Replace an existing tag that points at a different image (needs update permission).
    #[arg(long)]
    pub allow_overwrite: bool,
    /// Print `{"ref":..,"digest":..,"tag":..}` as the last stdout line instead of
    /// `REF@sha256:DIGEST`.
    #[arg(long)]
    pub json: bool,
}

/// How hard to retry failing registry requests (connection errors, timeouts, 408, 429, 5xx;
/// never 401, 403 or other client errors).
#[derive(Debug, Args)]
pub struct RetryFlags {
    /// Retries of a failing registry request, with exponential backoff (0: fail on the first
    /// error).
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub retries: u32,
    /// Longest one registry operation may take, retries and waits included, in seconds (a
    /// blob transfer gets one more second per 64 KiB of its size).
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub retry_max_time: u64,
}

impl RetryFlags {
    /// The retry policy these flags ask for.
    pub fn policy(&self) -> blumeops_core::RetryPolicy {
        blumeops_core::RetryPolicy {
            max_attempts: self.retries.saturating_add(1),
            max_elapsed: std::time::Duration::from_secs(self.retry_max_time),
            ..blumeops_core::RetryPolicy::default()
        }
    }
}
