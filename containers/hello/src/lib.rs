//! `hello`: the smallest blumeops container. A busybox base, one shell script written with
//! `with_new_file`, OCI labels, and default arguments that run the script.
//!
//! Build arguments:
//! - `BASE_IMAGE` (default [`DEFAULT_BASE_IMAGE`]): the image to start from.

use blumeops_core::{Container, ContainerDefinition, DefinitionError, DefinitionInput};

/// Version of the packaged "application".
pub const VERSION: &str = "v1.0.0";

/// Base image used when `BASE_IMAGE` is not given.
pub const DEFAULT_BASE_IMAGE: &str = "docker.io/library/busybox:1.37";

/// Where the script is installed.
pub const SCRIPT_PATH: &str = "/usr/local/bin/hello";

/// The script itself.
pub const SCRIPT: &str = r#"#!/bin/sh
# hello: greets whoever runs it (default: the world).
set -eu
echo "Hello, ${1:-world}! This is blumeops hello v1.0.0."
"#;

/// The `hello` definition.
#[derive(Debug, Default, Clone, Copy)]
pub struct Hello;

impl ContainerDefinition for Hello {
    fn name(&self) -> &'static str {
        "hello"
    }

    fn version(&self) -> &'static str {
        VERSION
    }

    fn container(&self, input: &DefinitionInput) -> Result<Container, DefinitionError> {
        let base = input.args.get_or("BASE_IMAGE", DEFAULT_BASE_IMAGE);
        Ok(Container::from(base)
            .with_new_file(SCRIPT_PATH, SCRIPT, 0o755)
            .with_label("org.opencontainers.image.title", "hello")
            .with_label(
                "org.opencontainers.image.description",
                "A greeting from the blumeops build tool",
            )
            .with_label("org.opencontainers.image.version", VERSION)
            .with_label(
                "org.opencontainers.image.source",
                "https://forge.ops.eblu.me/eblume/blumeops",
            )
            .with_label("org.opencontainers.image.base.name", base)
            .with_default_args([SCRIPT_PATH]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blumeops_core::BuildArgs;

    fn input(args: BuildArgs) -> DefinitionInput {
        DefinitionInput {
            args,
            src: ".".into(),
            platform: blumeops_core::Platform::host(),
        }
    }

    #[test]
    fn default_base_and_steps() {
        let c = Hello.container(&input(BuildArgs::new())).unwrap();
        let steps = c.steps();
        assert_eq!(steps[0], "from docker.io/library/busybox:1.37");
        assert!(
            steps[1].starts_with("with_new_file /usr/local/bin/hello"),
            "{steps:?}"
        );
        assert_eq!(
            steps.last().unwrap(),
            "with_default_args [\"/usr/local/bin/hello\"]"
        );
    }

    #[test]
    fn base_image_build_arg_redirects_from() {
        let args = BuildArgs::new().with("BASE_IMAGE", "127.0.0.1:5000/library/busybox:1.37");
        let c = Hello.container(&input(args)).unwrap();
        assert_eq!(c.steps()[0], "from 127.0.0.1:5000/library/busybox:1.37");
    }

    #[test]
    fn script_runs_with_sh() {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("hello")
            .arg("blumeops")
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "Hello, blumeops! This is blumeops hello v1.0.0.\n"
        );
    }
}
