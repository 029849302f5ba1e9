//! End-to-end tests: the harness itself, then the blumeops CLI.

mod bearer;
mod cli_publish;
mod harness;
mod registry_client;
mod test_images;
