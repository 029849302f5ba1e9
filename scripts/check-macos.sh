#!/usr/bin/env bash
# Check that the CLI and its core library compile for macOS, Apple Silicon and Intel (where
# only the docker executor runs steps; README, Where it runs). `cargo check` still runs build
# scripts, and those of aws-lc-sys (rustls) and zstd-sys compile C for the target: Debian has
# no macOS headers, so cargo-zigbuild hands them zig, which ships its own. Installed by
# scripts/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/macos.sh
source scripts/lib/macos.sh

if [[ ! -x $ZIG_VENV/bin/cargo-zigbuild ]]; then
    echo "check-macos: cargo-zigbuild is missing; run scripts/install-deps.sh" >&2
    exit 1
fi
# The venv's python3 too: cargo-zigbuild runs zig as `python3 -m ziglang`.
export PATH=$ZIG_VENV/bin:$PATH
targets=()
for t in "${MACOS_TARGETS[@]}"; do
    targets+=(--target "$t")
done
# Warnings fail it: a Linux-only item that leaks out of its cfg shows up as dead code here.
RUSTFLAGS="-D warnings" cargo-zigbuild check --locked -p blumeops-cli -p blumeops-core "${targets[@]}"
