# shellcheck shell=bash disable=SC2034  # the variables are for the scripts that source this
# Sourced by install-deps.sh and check-macos.sh: what the macOS check needs. Its C compiler is
# zig (PyPI's ziglang), driven by cargo-zigbuild, both in a virtualenv outside the repository
# that every clone shares.
MACOS_TARGETS=(aarch64-apple-darwin x86_64-apple-darwin)
ZIG_VENV=${XDG_CACHE_HOME:-$HOME/.cache}/blumeops-dev/zig
CARGO_ZIGBUILD_VERSION=0.24.1
ZIGLANG_VERSION=0.17.1
