#!/usr/bin/env bash
# Install what the tests need, then run every check and test of the workspace:
# formatting, clippy, docs, a compile check for macOS, unit tests and the end-to-end tests
# against a real registry.
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
echo "== cargo check for macOS (aarch64, x86_64)"
scripts/check-macos.sh
echo "== cargo build (the CLI the end-to-end tests run)"
cargo build --locked -p blumeops-cli
# Debian's udev rules make /dev/net/tun and /dev/fuse 0666; some VMs leave them 0600,
# which keeps the rootless tests' slirp4netns (isolated step networks) and fuse-overlayfs
# from opening them.
if [[ $(id -u) -eq 0 ]]; then
    for dev in /dev/net/tun /dev/fuse; do
        [[ ! -c $dev ]] || chmod 0666 "$dev"
    done
fi
# The multi-platform tests run arm64 (or amd64) steps through qemu-user-static.
if [[ $(id -u) -eq 0 ]]; then
    scripts/enable-emulation.sh
fi
echo "== cargo test"
# Tests that cannot run here record a line in this file (blumeops_core::testing::skip).
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export BLUMEOPS_TEST_SKIPS=$work/skips
: >"$BLUMEOPS_TEST_SKIPS"
cargo test --locked --workspace 2>&1 | tee "$work/test.log"
echo "== fuzz (each target for ${FUZZ_SECONDS:=20}s; README, Fuzzing, for longer runs)"
fuzz_corpus=$work/fuzz
(
    cd fuzz
    cargo +nightly fuzz build -s none
    for t in $(cargo +nightly fuzz list); do
        mkdir -p "$fuzz_corpus/$t"
        # New inputs go to the temporary corpus; the committed seeds (where a target has
        # any) are only read.
        seeds=()
        [[ ! -d corpus/$t ]] || seeds=("corpus/$t")
        cargo +nightly fuzz run -s none "$t" "$fuzz_corpus/$t" "${seeds[@]}" -- \
            -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -timeout=20
    done
)

# One closing line for the whole run; a test skipped in CI fails it (every test can run on a
# CI machine: root, the test users, the tools install-deps.sh installs).
sum() { grep '^test result:' "$work/test.log" | grep -oE "[0-9]+ $1" | awk '{n += $1} END {print n + 0}'; }
passed=$(sum passed)
failed=$(sum failed)
skipped=$(grep -c . "$BLUMEOPS_TEST_SKIPS" || true)
if [[ $skipped -gt 0 ]]; then
    echo "skipped tests:"
    sed 's/^/  /' "$BLUMEOPS_TEST_SKIPS"
fi
echo "tests: $passed passed, $failed failed, $skipped skipped"
if [[ $skipped -gt 0 && -n ${CI:-} ]]; then
    echo "error: tests were skipped in CI" >&2
    exit 1
fi
