//! End-to-end test harness for blumeops.
//!
//! - [`TestRegistry`]: a real CNCF distribution registry (`docker-registry`) behind
//!   [`ZotProxy`], a strict proxy that answers like zot (its module doc lists the rules) and records requests.
//! - [`BaseImage`]: the busybox base from `scripts/busybox-base.sh`, built once per process
//!   and pushed with skopeo.
//! - [`tls_registry`]: `docker-registry` over HTTPS with a certificate from a CA made in the
//!   test, for clients that must verify it.
//! - [`tools`]: skopeo/umoci wrappers for checking results independently of blumeops.
//! - [`users`]: non-root users (with and without subordinate ids) for rootless tests;
//! - [`dockerd`]: a Docker daemon (and a Debian job image) for the docker executor's tests;
//! - [`pty`]: running `blumeops` on a pseudo-terminal and reading its screen;
//! - [`static_http`]: a loopback HTTP server of fixed files, for `ADD URL`;
//! - [`cli`]: running the `blumeops` binary (build it first: `cargo build -p blumeops-cli`,
//!   or point `BLUMEOPS_BIN` at it).
//!
//! Set `BLUMEOPS_E2E_KEEP=1` to keep temporary directories (registry storage and logs).

#![deny(missing_docs)]

mod base_image;
pub mod cli;
pub mod dockerd;
pub mod fault_proxy;
mod http_server;
pub mod parity;
pub mod pty;
mod registry;
pub mod static_http;
pub mod tls_registry;
pub mod token_auth;
pub mod tools;
pub mod users;
mod util;
pub mod zot_proxy;

pub use base_image::{BASE_TAG, BaseImage, DebianBase, MultiArchBase, PushedImage};
pub use cli::{
    CliOutput, blumeops_bin, isolated_cache, run_cli, run_cli_as, run_cli_with, run_cli_wrapped,
};
pub use registry::{ADMIN_USER, CI_USER, READER_USER, TestRegistry, UPSTREAM_USER};
pub use util::{free_port, is_root, random_hex, sha256_digest, tempdir, workspace_root};
pub use zot_proxy::{Action, RequestLog, RequestRecord, ZotProxy};
