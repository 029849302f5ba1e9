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
echo "== fuzz (each target for ${FUZZ_SECONDS:=20}s; README, Fuzzing, for longer runs)"
fuzz_corpus=$(mktemp -d)
trap 'rm -rf "$fuzz_corpus"' EXIT
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
