#!/usr/bin/env bash
# Install what the tests need, then run every check and test of the workspace:
# formatting, clippy, docs, unit tests and the end-to-end tests against a real registry.
# The end-to-end tests start their own docker-registry on loopback ports and need root
# (umoci unpack and chroot run the built image).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --workspace --no-deps --quiet
echo "== cargo build (the CLI the end-to-end tests run)"
cargo build --locked -p blumeops-cli
echo "== cargo test"
cargo test --locked --workspace
