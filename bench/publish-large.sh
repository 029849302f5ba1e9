#!/usr/bin/env bash
# Benchmark: publish an image with a 512 MiB layer (random bytes) to a local docker-registry
# with htpasswd auth, then publish it again. Reports wall time and peak RSS
# (/usr/bin/time -v) of each run, and how many blobs the second run uploaded.
#
#   bench/publish-large.sh [SIZE_MIB]      (default 512)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-512}

scripts/install-deps.sh >/dev/null
command -v /usr/bin/time >/dev/null || { apt-get install -y -qq time >/dev/null; }
cargo build --locked --release -q -p blumeops-examples --example publish_file
example=$PWD/target/release/examples/publish_file

source scripts/lib/registry.sh
work=$(mktemp -d)
trap 'stop_registry; rm -rf "$work"' EXIT
password="zak_$(head -c16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
start_registry "$work" zot-ci "$password"
push_busybox_base "$work" zot-ci "$password"
head -c "$((size_mib * 1024 * 1024))" /dev/urandom >"$work/payload"

export BLUMEOPS_CACHE_DIR=$work/cache REGISTRY_PASSWORD=$password SOURCE_DATE_EPOCH=0
target=$REGISTRY_ADDR/blumeops/large:bench
run() {
    /usr/bin/time -v "$example" "$REGISTRY_ADDR/library/busybox:1.37" "$work/payload" "$target" \
        >"$work/out" 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
    local wall rss uploaded
    wall=$(grep 'Elapsed (wall clock)' "$work/err" | awk '{print $NF}')
    rss=$(grep 'Maximum resident set size' "$work/err" | awk '{print $NF}')
    uploaded=$(grep -o 'uploaded [0-9]* blobs ([0-9]* bytes)' "$work/err")
    printf '| %s | %s | %.1f MiB | %s |\n' "$1" "$wall" "$(echo "$rss/1024" | bc -l)" "$uploaded"
}
echo "| run (${size_mib} MiB layer) | wall | peak RSS | uploads |"
echo "|---|---|---|---|"
run "build + publish, empty cache"
run "publish again, nothing changed"
rm -rf "$BLUMEOPS_CACHE_DIR"
run "build on an empty cache, image already in the registry"
