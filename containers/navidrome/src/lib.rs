//! `navidrome`: the [Navidrome](https://www.navidrome.org) music server, built from source
//! in three stages, as blumeops' Dockerfile did:
//!
//! 1. **ui** on Node ([`DEFAULT_NODE_IMAGE`]): shallow clone of the source at the version
//!    tag, `npm ci` and `npm run build` in `ui/`, npm's cache in a cache volume; on the
//!    build machine's platform whatever the target (the bundle is the same everywhere), so
//!    a multi-platform build runs it once, natively;
//! 2. **backend** on Go ([`DEFAULT_GO_IMAGE`]): the same clone, the UI build copied into
//!    `ui/build` (Go embeds it), a cgo build with taglib and the `netgo,sqlite_fts5` tags
//!    (v0.61 fails with `undefined: buildtags.SQLITE_FTS5` without the latter), the Go module
//!    and build caches in cache volumes;
//! 3. **runtime** on Alpine ([`DEFAULT_ALPINE_IMAGE`]): taglib, ffmpeg, CA certificates and
//!    time zones, the `navidrome` user (uid/gid 1000), the binary at `/usr/bin/navidrome`,
//!    port 4533, OCI labels.
//!
//! Build arguments (every base image and the source can point at a mirror):
//! - `NODE_IMAGE` (default [`DEFAULT_NODE_IMAGE`]);
//! - `GO_IMAGE` (default [`DEFAULT_GO_IMAGE`]);
//! - `ALPINE_IMAGE` (default [`DEFAULT_ALPINE_IMAGE`]);
//! - `NAVIDROME_SOURCE` (default [`DEFAULT_SOURCE`], blumeops' forge mirror): the git
//!   repository cloned at tag [`VERSION`].

use blumeops_core::{
    BuildArgs, CacheVolume, Container, ContainerDefinition, CopyOptions, DefinitionError,
    DefinitionInput, Platform,
};

/// The navidrome release built (also the git tag cloned and the image version).
pub const VERSION: &str = "v0.61.1";

/// Base image of the UI stage.
pub const DEFAULT_NODE_IMAGE: &str = "docker.io/library/node:22-alpine";
/// Base image of the Go stage.
pub const DEFAULT_GO_IMAGE: &str = "docker.io/library/golang:1.25-alpine3.22";
/// Base image of the runtime.
pub const DEFAULT_ALPINE_IMAGE: &str = "docker.io/library/alpine:3.22";
/// Where the source is cloned from: blumeops' forge mirror of the upstream repository.
pub const DEFAULT_SOURCE: &str = "https://forge.ops.eblu.me/mirrors/navidrome.git";
/// The upstream project (the `org.opencontainers.image.source` label).
pub const UPSTREAM_SOURCE: &str = "https://github.com/navidrome/navidrome";

/// Build argument naming the UI stage's base image.
pub const NODE_IMAGE_ARG: &str = "NODE_IMAGE";
/// Build argument naming the Go stage's base image.
pub const GO_IMAGE_ARG: &str = "GO_IMAGE";
/// Build argument naming the runtime's base image.
pub const ALPINE_IMAGE_ARG: &str = "ALPINE_IMAGE";
/// Build argument naming the git repository to clone.
pub const SOURCE_ARG: &str = "NAVIDROME_SOURCE";

/// Where the source is cloned in the build stages.
pub const SRC_DIR: &str = "/src";
/// Where the binary is installed in the runtime image.
pub const BINARY_PATH: &str = "/usr/bin/navidrome";
/// The port navidrome listens on.
pub const PORT: u16 = 4533;
/// uid and gid of the `navidrome` user and group.
pub const USER_ID: u32 = 1000;

/// Cache volume for npm's download cache (`/root/.npm`).
pub const NPM_CACHE: &str = "navidrome-npm";
/// Cache volume for Go modules (`/go/pkg/mod`).
pub const GO_MOD_CACHE: &str = "navidrome-go-mod";
/// Cache volume for Go's build cache (`/root/.cache/go-build`).
pub const GO_BUILD_CACHE: &str = "navidrome-go-build";

/// Go build tags: `netgo` for the pure-Go resolver, `sqlite_fts5` for full-text search.
pub const GO_TAGS: &str = "netgo,sqlite_fts5";

/// The inputs of a build, with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// UI stage base image.
    pub node_image: String,
    /// Go stage base image.
    pub go_image: String,
    /// Runtime base image.
    pub alpine_image: String,
    /// Git repository to clone.
    pub source: String,
}

impl Settings {
    /// Settings from build arguments; an argument given empty is refused (it would
    /// silently build from nothing).
    pub fn from_args(args: &BuildArgs) -> Result<Self, DefinitionError> {
        let get = |key: &str, default: &str| match args.get(key) {
            Some("") => Err(DefinitionError::Invalid {
                name: "navidrome".to_owned(),
                message: format!("build argument {key} must not be empty"),
            }),
            Some(v) => Ok(v.to_owned()),
            None => Ok(default.to_owned()),
        };
        Ok(Self {
            node_image: get(NODE_IMAGE_ARG, DEFAULT_NODE_IMAGE)?,
            go_image: get(GO_IMAGE_ARG, DEFAULT_GO_IMAGE)?,
            alpine_image: get(ALPINE_IMAGE_ARG, DEFAULT_ALPINE_IMAGE)?,
            source: get(SOURCE_ARG, DEFAULT_SOURCE)?,
        })
    }
}

/// `git clone --depth 1 --branch VERSION SOURCE /src`.
fn clone(source: &str) -> Vec<String> {
    [
        "git", "clone", "--depth", "1", "--branch", VERSION, source, SRC_DIR,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The `-ldflags` value: strip symbols, stamp the version.
pub fn ldflags() -> String {
    format!("-w -s -X github.com/navidrome/navidrome/consts.gitTag={VERSION}")
}

/// Stage 1: the web UI, built into `/src/ui/build`. The bundle is the same on every
/// platform, so for a `target` other than the build machine's it is built on the build
/// machine's platform (natively, once for all targets) and copied into each target's
/// backend.
pub fn ui_stage(settings: &Settings, target: &Platform) -> Container {
    let image = settings.node_image.as_str();
    let build = Platform::host();
    if *target == build {
        Container::from(image)
    } else {
        Container::from_platform(image, build)
    }
    .with_exec(["apk", "add", "--no-cache", "git"])
    .with_exec(clone(&settings.source))
    .with_workdir(format!("{SRC_DIR}/ui"))
    .with_mounted_cache("/root/.npm", CacheVolume::new(NPM_CACHE))
    .with_exec(["npm", "ci"])
    .with_exec(["npm", "run", "build"])
}

/// Stage 2: the server binary at `/navidrome`, with the UI from `ui` embedded.
pub fn backend_stage(settings: &Settings, ui: &Container) -> Container {
    Container::from(settings.go_image.as_str())
        .with_exec([
            "apk",
            "add",
            "--no-cache",
            "build-base",
            "git",
            "taglib-dev",
            "zlib-dev",
        ])
        .with_exec(clone(&settings.source))
        .with_workdir(SRC_DIR)
        .with_directory_from(
            format!("{SRC_DIR}/ui/build"),
            ui,
            format!("{SRC_DIR}/ui/build"),
            CopyOptions::default(),
        )
        .with_env_variable("CGO_ENABLED", "1")
        .with_env_variable("CGO_CFLAGS_ALLOW", "--define-prefix")
        .with_mounted_cache("/go/pkg/mod", CacheVolume::new(GO_MOD_CACHE))
        .with_mounted_cache("/root/.cache/go-build", CacheVolume::new(GO_BUILD_CACHE))
        .with_exec([
            "go".to_owned(),
            "build".to_owned(),
            format!("-tags={GO_TAGS}"),
            format!("-ldflags={}", ldflags()),
            "-o".to_owned(),
            "/navidrome".to_owned(),
            ".".to_owned(),
        ])
}

/// Stage 3: the runtime image, with the binary from `backend`.
pub fn runtime_stage(settings: &Settings, backend: &Container) -> Container {
    let id = USER_ID;
    Container::from(settings.alpine_image.as_str())
        .with_exec([
            "apk",
            "add",
            "--no-cache",
            "ca-certificates",
            "tzdata",
            "taglib",
            "ffmpeg",
        ])
        .with_exec([
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            format!(
                "addgroup -S -g {id} navidrome && adduser -S -D -H -u {id} -G navidrome navidrome"
            ),
        ])
        .with_file_from(
            BINARY_PATH,
            backend,
            "/navidrome",
            CopyOptions::default().with_mode(0o755),
        )
        .with_exposed_port(PORT)
        .with_user(id.to_string())
        .with_default_args([BINARY_PATH])
        .with_label("org.opencontainers.image.title", "Navidrome")
        .with_label(
            "org.opencontainers.image.description",
            "Navidrome is a self-hosted music server and streamer",
        )
        .with_label("org.opencontainers.image.source", UPSTREAM_SOURCE)
        .with_label("org.opencontainers.image.version", VERSION)
}

/// The `navidrome` definition.
#[derive(Debug, Default, Clone, Copy)]
pub struct Navidrome;

impl ContainerDefinition for Navidrome {
    fn name(&self) -> &'static str {
        "navidrome"
    }

    fn version(&self) -> &'static str {
        VERSION
    }

    fn container(&self, input: &DefinitionInput) -> Result<Container, DefinitionError> {
        let settings = Settings::from_args(&input.args)?;
        let ui = ui_stage(&settings, &input.platform);
        let backend = backend_stage(&settings, &ui);
        Ok(runtime_stage(&settings, &backend))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blumeops_core::PlanBase;

    fn container(args: BuildArgs) -> Container {
        Navidrome
            .container(&DefinitionInput {
                args,
                src: ".".into(),
                platform: blumeops_core::Platform::host(),
            })
            .unwrap()
    }

    /// Every step of every stage, in plan order.
    fn all_steps(c: &Container) -> Vec<String> {
        c.plan()
            .stages
            .iter()
            .flat_map(|s| s.steps.iter().map(|step| step.description.clone()))
            .collect()
    }

    fn has(steps: &[String], needle: &str) -> bool {
        steps.iter().any(|s| s.contains(needle))
    }

    #[test]
    fn three_stages_on_the_default_bases() {
        let plan = container(BuildArgs::new()).plan();
        let bases: Vec<&PlanBase> = plan.stages.iter().map(|s| &s.base).collect();
        assert_eq!(
            bases,
            [
                &PlanBase::Image(DEFAULT_NODE_IMAGE.into()),
                &PlanBase::Image(DEFAULT_GO_IMAGE.into()),
                &PlanBase::Image(DEFAULT_ALPINE_IMAGE.into()),
            ],
            "{plan}"
        );
        assert_eq!(plan.stages[1].copies_from, [1]);
        assert_eq!(plan.stages[2].copies_from, [2]);
    }

    #[test]
    fn only_the_ui_runs_on_the_build_platform() {
        // A target other than this machine's.
        let other = if Platform::host().architecture() == "arm64" {
            "linux/amd64"
        } else {
            "linux/arm64"
        };
        let c = Navidrome
            .container(&DefinitionInput {
                args: BuildArgs::new(),
                src: ".".into(),
                platform: other.parse().unwrap(),
            })
            .unwrap();
        let plan = c.plan();
        let firsts: Vec<&str> = plan
            .stages
            .iter()
            .map(|s| s.steps[0].description.as_str())
            .collect();
        let host = Platform::host().to_string();
        assert!(firsts[0].contains(&host), "{firsts:?}");
        assert!(!firsts[1].contains("linux/"), "{firsts:?}");
        assert!(!firsts[2].contains("linux/"), "{firsts:?}");
    }

    #[test]
    fn ui_stage_clones_the_tag_and_builds_with_npm() {
        let settings = Settings::from_args(&BuildArgs::new()).unwrap();
        let steps = ui_stage(&settings, &Platform::host()).steps();
        let expected = [
            "from docker.io/library/node:22-alpine".to_owned(),
            "with_exec apk add --no-cache git".to_owned(),
            format!("with_exec git clone --depth 1 --branch v0.61.1 {DEFAULT_SOURCE} /src"),
            "with_workdir /src/ui".to_owned(),
            "with_mounted_cache /root/.npm (volume navidrome-npm)".to_owned(),
            "with_exec npm ci".to_owned(),
            "with_exec npm run build".to_owned(),
        ];
        assert_eq!(steps, expected);
    }

    #[test]
    fn backend_builds_with_fts5_the_version_stamp_and_caches() {
        let steps = all_steps(&container(BuildArgs::new()));
        for needle in [
            "with_exec apk add --no-cache build-base git taglib-dev zlib-dev",
            "with_directory /src/ui/build from another container's /src/ui/build",
            "with_env_variable CGO_ENABLED=1",
            "with_env_variable CGO_CFLAGS_ALLOW=--define-prefix",
            "with_mounted_cache /go/pkg/mod (volume navidrome-go-mod)",
            "with_mounted_cache /root/.cache/go-build (volume navidrome-go-build)",
            "-tags=netgo,sqlite_fts5",
            "-X github.com/navidrome/navidrome/consts.gitTag=v0.61.1",
            "-o /navidrome .",
        ] {
            assert!(has(&steps, needle), "no step with {needle:?}: {steps:#?}");
        }
        // The ldflags stay one argument: the shell-quoted description shows it quoted.
        let build = steps
            .iter()
            .find(|s| s.starts_with("with_exec go build"))
            .unwrap();
        assert!(
            build.contains(
                "'-ldflags=-w -s -X github.com/navidrome/navidrome/consts.gitTag=v0.61.1'"
            ),
            "{build}"
        );
        // The caches are mounted before the build that uses them.
        let pos = |needle: &str| steps.iter().position(|s| s.contains(needle)).unwrap();
        assert!(pos("/go/pkg/mod") < pos("go build"));
        assert!(pos("/root/.npm") < pos("npm ci"));
    }

    #[test]
    fn runtime_has_user_port_command_and_labels() {
        let steps = container(BuildArgs::new()).steps();
        for needle in [
            "from docker.io/library/alpine:3.22",
            "with_exec apk add --no-cache ca-certificates tzdata taglib ffmpeg",
            "addgroup -S -g 1000 navidrome && adduser -S -D -H -u 1000 -G navidrome navidrome",
            "with_file /usr/bin/navidrome from another container's /navidrome",
            "with_exposed_port 4533/tcp",
            "with_user 1000",
            "with_default_args [\"/usr/bin/navidrome\"]",
            "with_label org.opencontainers.image.title=Navidrome",
            "with_label org.opencontainers.image.description=Navidrome is a self-hosted music server and streamer",
            "with_label org.opencontainers.image.source=https://github.com/navidrome/navidrome",
            "with_label org.opencontainers.image.version=v0.61.1",
        ] {
            assert!(has(&steps, needle), "no step with {needle:?}: {steps:#?}");
        }
    }

    #[test]
    fn build_args_redirect_every_base_and_the_source() {
        let args = BuildArgs::new()
            .with(NODE_IMAGE_ARG, "mirror.example:5000/library/node:22-alpine")
            .with(
                GO_IMAGE_ARG,
                "mirror.example:5000/library/golang:1.25-alpine3.22",
            )
            .with(ALPINE_IMAGE_ARG, "mirror.example:5000/library/alpine:3.22")
            .with(SOURCE_ARG, "https://git.example/navidrome.git");
        let c = container(args);
        let bases: Vec<String> = c.plan().stages.iter().map(|s| s.base.to_string()).collect();
        assert_eq!(
            bases,
            [
                "mirror.example:5000/library/node:22-alpine",
                "mirror.example:5000/library/golang:1.25-alpine3.22",
                "mirror.example:5000/library/alpine:3.22",
            ]
        );
        let steps = all_steps(&c);
        for default in [
            DEFAULT_NODE_IMAGE,
            DEFAULT_GO_IMAGE,
            DEFAULT_ALPINE_IMAGE,
            DEFAULT_SOURCE,
            "docker.io",
            "forge.ops.eblu.me",
        ] {
            assert!(!has(&steps, default), "{default} is still used: {steps:#?}");
        }
        let clones: Vec<&String> = steps.iter().filter(|s| s.contains("git clone")).collect();
        assert_eq!(clones.len(), 2, "{steps:#?}");
        for clone in clones {
            assert!(
                clone.ends_with("--branch v0.61.1 https://git.example/navidrome.git /src"),
                "{clone}"
            );
        }
    }

    #[test]
    fn empty_build_arg_is_refused() {
        let err = Navidrome
            .container(&DefinitionInput {
                args: BuildArgs::new().with(GO_IMAGE_ARG, ""),
                src: ".".into(),
                platform: blumeops_core::Platform::host(),
            })
            .unwrap_err()
            .to_string();
        assert!(err.contains("GO_IMAGE"), "{err}");
    }

    #[test]
    fn name_and_version() {
        assert_eq!(Navidrome.name(), "navidrome");
        assert_eq!(Navidrome.version(), "v0.61.1");
    }
}
