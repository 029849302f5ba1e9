//! End-to-end tests: the harness itself, then the blumeops CLI.

mod bearer;
mod cli_commands;
mod cli_publish;
mod conformance;
mod docker_executor;
mod dockerfile_parity;
mod harness;
mod hostile;
mod live_view;
mod mirrors;
mod platforms;
mod push_archive;
mod registry_cache;
mod registry_client;
mod resilience;
mod rootless;
mod run_mounts;
mod step_cache;
mod test_images;
mod tls;
