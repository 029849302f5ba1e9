//! `blumeops-engine`: the docker executor's engine image, for clients that cannot make one
//! from their own executable (a Mac, or a daemon of another architecture). It holds the
//! blumeops that builds it, the shared libraries it loads and slirp4netns, exactly as the
//! helper image a Linux client loads into its daemon; publish it from a machine of the
//! daemon's architecture (`blumeops publish --container-name blumeops-engine`) and give
//! clients `--engine-image REGISTRY/blumeops/blumeops-engine:TAG`. Its version is
//! blumeops' own, which the client checks.
//!
//! No build arguments.

use blumeops_core::executor::docker::helper::HelperFiles;
use blumeops_core::{Container, ContainerDefinition, DefinitionError, DefinitionInput};

/// The `blumeops-engine` definition.
#[derive(Debug, Default, Clone, Copy)]
pub struct Engine;

impl ContainerDefinition for Engine {
    fn name(&self) -> &'static str {
        "blumeops-engine"
    }

    fn version(&self) -> &'static str {
        env!("CARGO_PKG_VERSION")
    }

    fn container(&self, _input: &DefinitionInput) -> Result<Container, DefinitionError> {
        let invalid = |e: blumeops_core::executor::docker::Error| DefinitionError::Invalid {
            name: self.name().to_owned(),
            message: e.to_string(),
        };
        let files = HelperFiles::collect().map_err(invalid)?;
        files.container(&std::env::temp_dir()).map_err(invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blumeops_core::BuildArgs;

    #[test]
    fn one_layer_of_the_helper_and_its_config() {
        let c = Engine
            .container(&DefinitionInput {
                args: BuildArgs::new(),
                src: ".".into(),
                platform: blumeops_core::Platform::host(),
            })
            .unwrap();
        let steps = c.steps();
        assert_eq!(steps[0], "from scratch", "{steps:?}");
        assert!(
            steps[1].starts_with("with_host_archive / from "),
            "{steps:?}"
        );
        assert!(
            steps
                .iter()
                .any(|s| s.starts_with("with_env_variable LD_LIBRARY_PATH=")),
            "{steps:?}"
        );
        assert!(
            steps.contains(&"with_entrypoint [\"/usr/local/bin/blumeops\"]".to_owned()),
            "{steps:?}"
        );
        assert!(
            steps.contains(&format!(
                "with_label org.blumeops.version={}",
                env!("CARGO_PKG_VERSION")
            )),
            "{steps:?}"
        );
    }
}
