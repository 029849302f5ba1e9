#!/usr/bin/env bash
# Benchmark the scenario in bench/scenario (a busybox base, two RUN steps — 64 MiB of random
# bytes and 2000 small files —, a COPY of a 1000-file tree, config) side by side with
# buildah, against a local docker-registry with htpasswd auth, each tool from an empty
# cache/storage. Prints wall time (median of RUNS runs) and peak RSS per case, and the
# ratio blumeops / buildah.
#
#   bench/scenario.sh [RUNS]     (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
runs=${1:-3}

scripts/install-deps.sh >/dev/null
cargo build --locked --release -q -p blumeops-cli
blumeops=$repo/target/release/blumeops

source scripts/lib/registry.sh
work=$(mktemp -d)
trap 'stop_registry; rm -rf "$work"' EXIT
password="zak_$(head -c16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
start_registry "$work" zot-ci "$password"
push_busybox_base "$work" zot-ci "$password"
base=$REGISTRY_ADDR/library/busybox:1.37

src=$work/src
mkdir -p "$src/containers/bench"
cp bench/scenario/Dockerfile "$src/containers/bench/Dockerfile"
python3 bench/scenario/gen-context.py "$src/containers/bench"
export ZOT_CI_API_KEY=$password SOURCE_DATE_EPOCH=1700000000

# measure NAME CMD... -> appends "NAME wall_seconds peak_rss_kib" to $work/results
measure() {
    local name=$1
    shift
    # The functions run in a child bash so /usr/bin/time measures them (peak RSS is the
    # largest single process of the tree, as time(1) reports it).
    /usr/bin/time -f '%e %M' -o "$work/time" bash -c '"$@"' _ "$@" >"$work/out" 2>"$work/err" || {
        echo "$name failed:" >&2
        tail -30 "$work/err" >&2
        exit 1
    }
    echo "$name $(cat "$work/time")" >>"$work/results"
}

blumeops_publish() { # TAG
    "$blumeops" publish --src "$src" --container-name bench --version v1 --commit-sha "$1" \
        --registry "$REGISTRY_ADDR" --registry-password env:ZOT_CI_API_KEY \
        --build-arg "BASE_IMAGE=$base"
}
buildah_build_push() { # STORAGE TAG
    buildah --root "$1/root" --runroot "$1/run" --storage-driver overlay bud --quiet --layers \
        --isolation chroot --format oci --tls-verify=false --creds "zot-ci:$password" \
        --build-arg "BASE_IMAGE=$base" \
        -t "localhost/bench:$2" "$src/containers/bench" >/dev/null
    buildah --root "$1/root" --runroot "$1/run" --storage-driver overlay push --quiet \
        --tls-verify=false --creds "zot-ci:$password" "localhost/bench:$2" \
        "docker://$REGISTRY_ADDR/blumeops/bench-buildah:$2"
}

export -f blumeops_publish buildah_build_push
export blumeops src base password REGISTRY_ADDR

touch_one_file() {
    echo "changed $RANDOM" >>"$src/containers/bench/src/d0/f0.txt"
}

: >"$work/results"
for i in $(seq "$runs"); do
    export BLUMEOPS_CACHE_DIR=$work/cache-$i
    measure blumeops-cold blumeops_publish "cold$i"
    measure blumeops-warm blumeops_publish "warm$i"
    touch_one_file
    measure blumeops-changed blumeops_publish "changed$i"
    storage=$work/buildah-$i
    measure buildah-cold buildah_build_push "$storage" "cold$i"
    measure buildah-warm buildah_build_push "$storage" "cold$i"
    touch_one_file
    measure buildah-changed buildah_build_push "$storage" "changed$i"
    buildah --root "$storage/root" --runroot "$storage/run" --storage-driver overlay rm -a >/dev/null 2>&1 || true
    rm -rf "$storage" "$BLUMEOPS_CACHE_DIR"
done

python3 - "$work/results" "$runs" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
def med(name, col):
    return statistics.median(float(r[col]) for r in rows if r[0] == name)
print(f"| case (median of {sys.argv[2]}) | blumeops | buildah | ratio | blumeops peak RSS | buildah peak RSS |")
print("|---|---|---|---|---|---|")
for case, label in [("cold", "cold build + push"), ("warm", "rebuild + push, nothing changed"), ("changed", "one file of src/ changed")]:
    b, p = med(f"blumeops-{case}", 1), med(f"buildah-{case}", 1)
    rb, rp = med(f"blumeops-{case}", 2) / 1024, med(f"buildah-{case}", 2) / 1024
    print(f"| {label} | {b:.2f} s | {p:.2f} s | {b / p:.2f} | {rb:.0f} MiB | {rp:.0f} MiB |")
PY
