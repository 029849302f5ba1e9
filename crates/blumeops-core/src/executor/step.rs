//! The interface the solver runs command steps through, and its implementations.

use std::fmt;
use std::sync::Arc;

use crate::sandbox::{self, CancelToken, RunOutcome, RunSpec, Stream};

/// Runs one command step: `spec.args` on a rootfs of `spec.lowers`, the changes landing in
/// `spec.upper` (overlayfs form: whiteouts, opaque markers), output lines to `on_line`.
/// Returns the exit status whatever it is; errors are failures to set up or start the
/// command. Blocking: call it from a blocking thread.
pub trait StepExecutor: Send + Sync + fmt::Debug {
    /// `root` or `rootless`, for messages.
    fn name(&self) -> &'static str;

    /// Run the step.
    fn run(
        &self,
        spec: &RunSpec,
        cancel: &CancelToken,
        on_line: &mut dyn FnMut(Stream, &str),
    ) -> Result<RunOutcome, sandbox::Error>;
}

/// The sandbox as root in the host's user namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct RootSandbox;

impl StepExecutor for RootSandbox {
    fn name(&self) -> &'static str {
        "root"
    }

    fn run(
        &self,
        spec: &RunSpec,
        cancel: &CancelToken,
        on_line: &mut dyn FnMut(Stream, &str),
    ) -> Result<RunOutcome, sandbox::Error> {
        sandbox::run(spec, cancel, on_line)
    }
}

/// The sandbox as root of the user namespace this process entered with
/// [`reexec`](super::reexec) (or [`spawn_in_user_namespace`](super::spawn_in_user_namespace)).
/// The sandbox adapts its mounts to the namespace by itself; outside one this refuses to run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RootlessSandbox;

impl StepExecutor for RootlessSandbox {
    fn name(&self) -> &'static str {
        "rootless"
    }

    fn run(
        &self,
        spec: &RunSpec,
        cancel: &CancelToken,
        on_line: &mut dyn FnMut(Stream, &str),
    ) -> Result<RunOutcome, sandbox::Error> {
        if !super::in_user_namespace() {
            return Err(sandbox::Error::Unsupported(sandbox::Requirement::Root {
                userns_available: true,
            }));
        }
        sandbox::run(spec, cancel, on_line)
    }
}

/// The executor for where this process runs: [`RootlessSandbox`] in a user namespace,
/// else [`RootSandbox`] (which reports what is missing when not root).
pub fn for_this_process() -> Arc<dyn StepExecutor> {
    if super::in_user_namespace() {
        Arc::new(RootlessSandbox)
    } else {
        Arc::new(RootSandbox)
    }
}
