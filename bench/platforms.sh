#!/usr/bin/env bash
# The multi-platform benchmark: the scenario of bench/scenario built for linux/amd64 and
# linux/arm64 and pushed as one image index, by blumeops and by buildah, on this machine
# (the other architecture's steps run through qemu-user-static's binfmt_misc handler).
#
#   bench/platforms.sh [RUNS]          (default 3)
#
# Per run, on a fresh registry (loopback, htpasswd auth) holding the two-platform busybox
# base of scripts/busybox-index.sh:
#   blumeops  `blumeops publish --platform linux/amd64,linux/arm64` from an empty cache
#   buildah   `buildah bud --platform linux/amd64,linux/arm64 --manifest LIST --layers
#             --isolation chroot` + `buildah manifest push --all LIST docker://…` on empty
#             storage (overlay driver)
# Each result is checked to be an index of both platforms. Prints the machine, the median
# wall time and peak tree memory (bench/lib/measure.py) of each tool, the ratio and PASS/FAIL
# against the goal: blumeops ≤ 0.5 × buildah's wall time.
#
# Needs root (the RUN sandbox, buildah's overlay storage, registering the emulator), the
# packages of scripts/install-deps.sh and a Rust toolchain. Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
runs=${1:-3}
[[ $runs =~ ^[1-9][0-9]*$ ]] || {
    echo "usage: bench/platforms.sh [RUNS]   (RUNS: a positive integer)" >&2
    exit 2
}
[[ $(id -u) -eq 0 ]] || {
    echo "bench/platforms.sh: needs root (RUN steps, buildah's overlay storage, binfmt_misc)" >&2
    exit 2
}
log() { echo "bench: $*" >&2; }

scripts/install-deps.sh >/dev/null
scripts/enable-emulation.sh 2>/dev/null
log "building blumeops (release)"
cargo build --locked --release -q -p blumeops-cli
target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
blumeops=$target_dir/release/blumeops

# shellcheck source=scripts/lib/registry.sh
source scripts/lib/registry.sh
work=$(mktemp -d "${TMPDIR:-/tmp}/blumeops-bench-platforms.XXXXXX")
unmount_under() {
    findmnt -rn -o TARGET | awk -v dir="$1/" 'index($0, dir) == 1' | sort -r |
        while read -r mnt; do umount -l "$mnt" || true; done
}
cleanup() {
    stop_registry
    unmount_under "$work"
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

user=zot-ci
password="zak_$(head -c16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export ZOT_CI_API_KEY=$password SOURCE_DATE_EPOCH=1700000000
platforms=linux/amd64,linux/arm64
results=$work/results
: >"$results"

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
echo "## Machine"
echo
echo "- CPU: $(nproc) cores ($(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- kernel $(uname -r); $(sed -n "s/^PRETTY_NAME=//p" /etc/os-release | tr -d "\"")"
echo "- blumeops $commit, release build; $(buildah --version | cut -d' ' -f1-3) (overlay, --isolation chroot)"
echo "- emulation: $(/usr/bin/qemu-aarch64-static --version | head -1) via binfmt_misc"
echo "- platforms: $platforms; runs: $runs"
echo

log "making the two-platform busybox base and the scenario's context"
scripts/busybox-index.sh "$work/base" 1.37 >"$work/base.log" 2>&1 || {
    cat "$work/base.log" >&2
    exit 1
}
src=$work/src
mkdir -p "$src/containers/bench"
cp bench/scenario/Dockerfile "$src/containers/bench/Dockerfile"
python3 bench/scenario/gen-context.py "$src/containers/bench"

# measure TOOL COMMAND...: run it under measure.py; one result line.
measure() {
    local tool=$1 out=$rundir/$1 wall tree rss code
    shift
    log "run $run/$runs: $tool"
    sync
    python3 "$repo/bench/lib/measure.py" "$out.time" "$@" >"$out.out" 2>"$out.err" || true
    read -r wall tree rss code <"$out.time"
    echo "$tool $run $wall $tree $code" >>"$results"
    if [[ $code != 0 ]]; then
        log "  $tool exited $code:"
        tail -5 "$out.err" >&2
    fi
}

# is_two_platform_index REPO:TAG: the tag is an index of linux/amd64 and linux/arm64.
is_two_platform_index() {
    skopeo inspect --raw --tls-verify=false --creds "$user:$password" \
        "docker://$REGISTRY_ADDR/$1" | python3 -c '
import json, sys
index = json.load(sys.stdin)
found = sorted((m["platform"]["os"], m["platform"]["architecture"]) for m in index.get("manifests", []))
sys.exit(0 if found == [("linux", "amd64"), ("linux", "arm64")] else 1)'
}

for run in $(seq "$runs"); do
    rundir=$work/run$run
    mkdir -p "$rundir"
    start_registry "$rundir" "$user" "$password"
    skopeo copy -q --all --dest-tls-verify=false --dest-creds "$user:$password" \
        "oci:$work/base:1.37" "docker://$REGISTRY_ADDR/library/busybox:1.37"
    base=$REGISTRY_ADDR/library/busybox:1.37

    measure blumeops env BLUMEOPS_CACHE_DIR="$rundir/blumeops-cache" "$blumeops" publish \
        --progress plain --src "$src" --container-name bench --version v1 --commit-sha multi \
        --registry "$REGISTRY_ADDR" --registry-username "$user" \
        --registry-password env:ZOT_CI_API_KEY --build-arg "BASE_IMAGE=$base" \
        --platform "$platforms"
    is_two_platform_index blumeops/bench:v1-multi || echo "notindex blumeops $run" >>"$results"

    storage=(--root "$rundir/buildah/root" --runroot "$rundir/buildah/run" --storage-driver overlay)
    measure buildah env PLATFORMS="$platforms" CREDS="$user:$password" BASE="$base" \
        DEST="$REGISTRY_ADDR/blumeops/bench-buildah:v1-multi" bash -c '
        set -e
        buildah "${@:2}" bud --quiet --layers --isolation chroot --platform "$PLATFORMS" \
            --manifest localhost/bench-multi:v1 --tls-verify=false --creds "$CREDS" \
            --build-arg "BASE_IMAGE=$BASE" "$1" >/dev/null
        buildah "${@:2}" manifest push --quiet --all --tls-verify=false --creds "$CREDS" \
            localhost/bench-multi:v1 "docker://$DEST"' _ "$src/containers/bench" "${storage[@]}"
    is_two_platform_index blumeops/bench-buildah:v1-multi || echo "notindex buildah $run" >>"$results"

    buildah "${storage[@]}" rmi -a -f >/dev/null 2>&1 || true
    unmount_under "$rundir/buildah"
    stop_registry
    rm -rf "$rundir"
done

python3 - "$results" <<'PY'
import statistics, sys

rows = [line.split() for line in open(sys.argv[1])]
bad = {(r[1], r[2]) for r in rows if r[0] == "notindex"}
runs = {}
for r in rows:
    if r[0] in ("blumeops", "buildah"):
        runs.setdefault(r[0], []).append(r)
print("## Two platforms (linux/amd64 + linux/arm64), cold build and push")
print()
print("| tool | wall (median) | runs | peak tree memory | result |")
print("|---|---|---|---|---|")
medians = {}
for tool in ("blumeops", "buildah"):
    rs = runs.get(tool, [])
    ok = [r for r in rs if r[4] == "0" and (tool, r[1]) not in bad]
    walls = sorted(float(r[2]) for r in ok)
    if walls:
        medians[tool] = statistics.median(walls)
        mem = max(int(r[3]) for r in ok) / 1024
        spread = ", ".join(f"{w:.2f}" for w in walls)
        note = "" if len(ok) == len(rs) else f"{len(rs) - len(ok)} failed"
        print(f"| {tool} | {medians[tool]:.2f} s | {spread} | {mem:.1f} MiB | {note or 'index of both'} |")
    else:
        print(f"| {tool} | - | - | - | FAILED |")
print()
if len(medians) == 2:
    ratio = medians["blumeops"] / medians["buildah"]
    verdict = "PASS" if ratio <= 0.5 else "FAIL"
    print(f"blumeops / buildah: {ratio:.2f} x (goal <= 0.5): {verdict}")
else:
    print("blumeops / buildah: not measured: FAIL")
PY
