#!/usr/bin/env bash
# The speed benchmark: blumeops side by side with buildah and skopeo against a throwaway
# local docker-registry (loopback, htpasswd auth), each tool from an empty cache/storage.
#
#   bench/run.sh [RUNS]          (default 3)
#   BENCH_CASES="push blumeops" bench/run.sh 1     only these groups of cases
#   BENCH_BLUMEOPS=/path/to/blumeops bench/run.sh   that binary instead of a release build
#
# Per run, on a fresh registry:
#   cold     the scenario of bench/scenario (busybox base, RUN steps writing 64 MiB of random
#            bytes and 2000 small files, COPY of a 1000-file tree, config) built and pushed
#            from an empty cache: `blumeops publish` / `buildah bud --layers --isolation
#            chroot` + `buildah push` (overlay storage driver)
#   warm     the same again on the same cache/storage, to the same tag
#   retag    blumeops only: the same again to a new tag (nothing to build or upload)
#   changed  one file of the COPY tree changed, built and pushed to a new tag; the layer
#            lists of the cold and changed images are compared
#   rootless cold, warm and changed again by blumeops as an unprivileged user with a
#            subordinate id range (`blumeops-bench`, created when missing): the rootless
#            executor, compared with the root runs
#   docker   cold, warm and changed again by blumeops as a client of the docker executor
#            (`--executor docker`, Debian's dockerd started for the benchmark on its own
#            socket; the engine image is loaded once before the runs, not measured), on a
#            cache volume of its own per run, compared with the root runs
#   buildkit cold, warm and changed again by BuildKit, the builder in Debian's dockerd (the
#            same daemon; `DOCKER_BUILDKIT=1 /usr/bin/docker build --network host` + `docker
#            push`), its build cache and images emptied before the cold case
#   newmachine  the scenario published by "another machine" with the registry cache on
#            (`--cache-repo auto` / buildah `--cache-to`, not measured), then by this one
#            from an empty cache and a checkout at another path (`--cache-repo auto` /
#            buildah `--layers --cache-from --cache-to` on empty storage), to a new tag
#   push     an image with one BENCH_LARGE_MIB (512) MiB layer of random bytes, already
#            built: `blumeops publish` on the warm cache that built it / `skopeo copy
#            oci:DIR docker://…` of that image, each to a new repository; and the
#            registry's own ingest of the large layer's blob with curl, the ceiling: a
#            monolithic upload (POST, one PUT with the blob) and a streamed one (POST, one
#            PATCH with the blob, closing PUT), each to a new repository
# BENCH_CASES picks groups (default all): blumeops (its cold, warm and changed cases),
# rootless, docker, buildah, buildkit, newmachine, push. Cases whose peer group is left out
# print without it.
# Prints the machine, then per case the median wall time, the peak memory of the process
# tree and of its largest process (bench/lib/measure.py), the requests the registry served
# (its access log), the ratios and PASS/FAIL against the goals. A failing measured command is reported as FAIL with its reason; a failing
# setup step stops the run.
#
# Needs root (blumeops' RUN sandbox, buildah's overlay storage), Debian/Ubuntu packages
# (scripts/install-deps.sh installs them) and a Rust toolchain. Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
runs=${1:-3}
large_mib=${BENCH_LARGE_MIB:-512}
all_cases="blumeops rootless docker buildah buildkit newmachine push"
cases=${BENCH_CASES:-$all_cases}
cases=${cases//,/ }
for c in $cases; do
    [[ " $all_cases " == *" $c "* ]] || {
        echo "bench/run.sh: unknown case group '$c' in BENCH_CASES (known: $all_cases)" >&2
        exit 2
    }
done
want() { [[ " $cases " == *" $1 "* ]]; }
[[ $runs =~ ^[1-9][0-9]*$ && $large_mib =~ ^[1-9][0-9]*$ ]] || {
    echo "usage: bench/run.sh [RUNS]   (RUNS and BENCH_LARGE_MIB: positive integers)" >&2
    exit 2
}
[[ $(id -u) -eq 0 ]] || {
    echo "bench/run.sh: needs root (RUN steps in blumeops' sandbox, buildah's overlay storage)" >&2
    exit 2
}

log() { echo "bench: $*" >&2; }

scripts/install-deps.sh >/dev/null
if [[ -n ${BENCH_BLUMEOPS:-} ]]; then
    # Another build of blumeops (an older commit's, to compare), measured the same way.
    blumeops=$(realpath "$BENCH_BLUMEOPS")
else
    log "building blumeops (release)"
    cargo build --locked --release -q -p blumeops-cli
    target_dir=$(cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    blumeops=$target_dir/release/blumeops
fi
measure_py=$repo/bench/lib/measure.py

# shellcheck source=scripts/lib/registry.sh
source scripts/lib/registry.sh
work=$(mktemp -d "${TMPDIR:-/tmp}/blumeops-bench.XXXXXX")
chmod 755 "$work" # the rootless runs read the inputs and the binary as another user
# Unmount what buildah's overlay driver may have left mounted under DIR.
unmount_under() {
    findmnt -rn -o TARGET | awk -v dir="$1/" 'index($0, dir) == 1' | sort -r |
        while read -r mnt; do umount -l "$mnt" || true; done
}
cleanup() {
    stop_registry
    stop_dockerd
    unmount_under "$work"
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

user=zot-ci
password="zak_$(head -c16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
results=$work/results
: >"$results"
export ZOT_CI_API_KEY=$password SOURCE_DATE_EPOCH=1700000000

# --- the machine -------------------------------------------------------------------------
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null) ]]; then
    commit="$commit (with uncommitted changes under crates/)"
fi
machine() {
    local mem
    mem=$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
    echo "## Machine"
    echo
    echo "- CPU: $(nproc) cores ($(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- memory: $mem; kernel $(uname -r); $(sed -n "s/^PRETTY_NAME=//p" /etc/os-release | tr -d "\"")"
    echo "- blumeops ${BENCH_BLUMEOPS:+$blumeops, not built from }$commit, $(rustc --version 2>/dev/null || echo 'rustc ?'), release build"
    echo "- $(buildah --version | cut -d' ' -f1-3) (overlay storage driver, --isolation chroot); $(skopeo --version)"
    echo "- registry: $(docker-registry --version | awk '{print $1, $3}') on loopback, htpasswd (bcrypt) auth, storage on local disk"
    echo "- dockerd $(dockerd --version | awk '{print $3}' | tr -d ,) (the docker executor's daemon and BuildKit's, on this machine)"
    echo "- runs: $runs; large layer: $large_mib MiB; cases: $cases"
    echo
}
machine

# --- the rootless runs' user ------------------------------------------------------------
bench_user=blumeops-bench
if want rootless && ! id -u "$bench_user" >/dev/null 2>&1; then
    useradd --create-home --shell /bin/sh --user-group "$bench_user"
fi
if want rootless && { ! grep -q "^$bench_user:" /etc/subuid || ! grep -q "^$bench_user:" /etc/subgid; }; then
    usermod --add-subuids 500000-565535 --add-subgids 500000-565535 "$bench_user"
fi
mkdir -p "$work/bin"
cp "$blumeops" "$work/bin/blumeops"
chmod -R a+rX "$work/bin"
# as_bench_user COMMAND...: run it as the bench user, with its own HOME.
as_bench_user() {
    setpriv --reuid="$bench_user" --regid="$bench_user" --init-groups \
        env HOME="/home/$bench_user" USER="$bench_user" "$@"
}
export -f as_bench_user
export bench_user

# --- the docker executor's daemon ---------------------------------------------------------
dockerd_pid=
stop_dockerd() {
    [[ -n $dockerd_pid ]] || return 0
    kill "$dockerd_pid" 2>/dev/null || true
    wait "$dockerd_pid" 2>/dev/null || true
    dockerd_pid=
    unmount_under "$work/dockerd"
}
if want docker || want buildkit; then
    mkdir -p "$work/dockerd"
    dockerd --host "unix://$work/dockerd/docker.sock" --data-root "$work/dockerd/data" \
        --exec-root "$work/dockerd/exec" --pidfile "$work/dockerd/pid" \
        --bridge none --iptables=false --ip6tables=false --ip-masq=false \
        >"$work/dockerd/log" 2>&1 &
    dockerd_pid=$!
    export DOCKER_HOST=unix://$work/dockerd/docker.sock
    for _ in $(seq 150); do
        docker version >/dev/null 2>&1 && break
        sleep 0.2
    done
    docker version >/dev/null 2>&1 || {
        tail -20 "$work/dockerd/log" >&2
        exit 1
    }
fi

# --- inputs, made once -----------------------------------------------------------------
log "making the busybox base, the scenario's context and ${large_mib} MiB of random bytes"
scripts/busybox-base.sh "$work/base" 1.37 >"$work/base.log" 2>&1 || {
    cat "$work/base.log" >&2
    exit 1
}
src=$work/src
mkdir -p "$src/containers/bench" "$src/containers/large"
cp bench/scenario/Dockerfile "$src/containers/bench/Dockerfile"
cp bench/large/Dockerfile "$src/containers/large/Dockerfile"
head -c "$((large_mib * 1024 * 1024))" /dev/urandom >"$src/containers/large/payload"

fresh_context() { # the scenario's COPY tree, as gen-context.py writes it
    rm -rf "$src/containers/bench/src"
    python3 bench/scenario/gen-context.py "$src/containers/bench"
}
change_one_file() {
    echo "changed" >>"$src/containers/bench/src/d0/f0.txt"
}

# --- the measured commands ---------------------------------------------------------------
publish_cmd() { # CONTAINER SHA [SRC] -> sets cmd: publish REGISTRY/blumeops/CONTAINER:v1-SHA
    cmd=("$blumeops" publish --progress plain --src "${3:-$src}" --container-name "$1" --version v1 \
        --commit-sha "$2" --registry "$REGISTRY_ADDR" --registry-username "$user" \
        --registry-password env:ZOT_CI_API_KEY --build-arg "BASE_IMAGE=$base")
}
buildah_build_push() { # STORAGE SHA [SRC [CACHE_REPO]] -> REGISTRY/blumeops/bench-buildah:v1-SHA
    local storage=(--root "$1/root" --runroot "$1/run" --storage-driver overlay) cache=()
    [[ -z ${4:-} ]] || cache=(--cache-from "$4" --cache-to "$4")
    buildah "${storage[@]}" bud --quiet --layers --isolation chroot "${cache[@]}" \
        --tls-verify=false --creds "$user:$password" --build-arg "BASE_IMAGE=$base" \
        -t "localhost/bench:v1-$2" "${3:-$src}/containers/bench" >/dev/null
    buildah "${storage[@]}" push --quiet --tls-verify=false --creds "$user:$password" \
        "localhost/bench:v1-$2" "docker://$REGISTRY_ADDR/blumeops/bench-buildah:v1-$2"
}
buildkit_build_push() { # SHA -> REGISTRY/blumeops/bench-buildkit:v1-SHA
    local image=$REGISTRY_ADDR/blumeops/bench-buildkit:v1-$1
    # Debian's CLI, which has the builder built in (a newer one may want buildx).
    DOCKER_BUILDKIT=1 /usr/bin/docker build -q --network host --build-arg "BASE_IMAGE=$base" \
        -t "$image" "$src/containers/bench" >/dev/null
    /usr/bin/docker push -q "$image" >/dev/null
}
# ceiling_upload put|patch REPO FILE DIGEST: the registry's own ingest of FILE as blob
# DIGEST, with curl and the same credentials: POST a session, then either one PUT carrying
# the blob (monolithic) or one streamed PATCH carrying it and a closing PUT without a body.
ceiling_upload() {
    local mode=$1 repo=$2 file=$3 digest=$4 location sep
    local curl=(curl -fsS -u "$user:$password" -H 'Expect:')
    at() { tr -d '\r' | sed -n 's/^[Ll]ocation: //p' | tail -1; }
    location=$("${curl[@]}" -X POST -o /dev/null -D - "http://$REGISTRY_ADDR/v2/$repo/blobs/uploads/" | at)
    [[ $location == http* ]] || location=http://$REGISTRY_ADDR$location
    if [[ $mode == patch ]]; then
        location=$("${curl[@]}" -X PATCH -H 'Content-Type: application/octet-stream' -T "$file" \
            -o /dev/null -D - "$location" | at)
        [[ $location == http* ]] || location=http://$REGISTRY_ADDR$location
        sep='?'
        [[ $location != *'?'* ]] || sep='&'
        "${curl[@]}" -X PUT -H 'Content-Type: application/octet-stream' --data-binary '' \
            -o /dev/null "$location${sep}digest=$digest"
    else
        sep='?'
        [[ $location != *'?'* ]] || sep='&'
        "${curl[@]}" -X PUT -H 'Content-Type: application/octet-stream' -T "$file" \
            -o /dev/null "$location${sep}digest=$digest"
    fi
}
export -f buildah_build_push buildkit_build_push ceiling_upload
export src user password

shorten() { sed -E 's/(sha256:[0-9a-f]{12})[0-9a-f]{52}/\1…/g'; }

# The registry's access log: one line per request it served ("METHOD PATH HTTP/1.1" STATUS).
access_log() { grep -E '^[^ ]+ - [^ ]+ \[[^]]+\] "[A-Z]+ ' "$rundir/registry.log" || true; }
# requests_since N: how many requests the registry served after its first N, and of which
# kind (METHOD:STATUS=COUNT, in order of first use).
requests_since() {
    local lines
    lines=$(access_log | tail -n +"$(($1 + 1))")
    if [[ -z $lines ]]; then
        echo 0
        return
    fi
    awk '{ split($0, q, "\""); split(q[2], r, " "); split(q[3], t, " "); k = r[1] ":" t[1];
           if (!(k in n)) order[++m] = k; n[k]++; total++ }
         END { printf "%d", total; for (i = 1; i <= m; i++) printf " %s=%d", order[i], n[order[i]]; print "" }' <<<"$lines"
}

# measure CASE TOOL COMMAND... : runs COMMAND under measure.py (output in $rundir/CASE-TOOL.*),
# appends its result line, the requests the registry served for it, and the reason when it
# failed. Never fails itself.
measure() {
    local case=$1 tool=$2 out=$rundir/$1-$2 wall tree rss code reason before
    shift 2
    log "run $run/$runs: $case, $tool"
    # Write back what earlier work left dirty (the generated inputs, the last case's
    # output), so no case pays for another's writes.
    sync
    before=$(access_log | wc -l)
    python3 "$measure_py" "$out.time" "$@" >"$out.out" 2>"$out.err" || true
    read -r wall tree rss code <"$out.time"
    echo "run $case $tool $run $wall $tree $rss $code" >>"$results"
    # The registry writes a request's line as it answers: give the last one a moment.
    sleep 0.2
    echo "requests $case $tool $run $(requests_since "$before")" >>"$results"
    if [[ $tool == blumeops || $tool == rootless || $tool == docker ]]; then
        # What it did: how many steps ran (the others were cached) and what it pushed.
        local ran pushed
        ran=$(grep -cE '^\[[0-9]+\] ran in' "$out.err" || true)
        pushed=$({ grep -E '^(pushed sha256|tag already points at)' "$out.err" || true; } | tail -1 | shorten)
        echo "did $case $tool $run $ran step(s) ran; ${pushed:-no push}" >>"$results"
    fi
    if [[ $code != 0 ]]; then
        reason=$({ grep -E '^(error|  caused by):' "$out.err" || true; } | tail -1 | sed -E 's/^ *//' | shorten)
        [[ -n $reason ]] || reason=$(tail -1 "$out.err")
        [[ -n $reason ]] || reason="nothing on stderr"
        [[ $code != 4 ]] || reason="tag conflict (the rebuilt image has another digest): $reason"
        echo "reason $case $tool $run exit $code, $reason" >>"$results"
        log "  exit $code: $reason"
    fi
}

# count_layer_diff TOOL REPO:TAG REPO:TAG: how many layers differ, position by position
count_layer_diff() {
    local a b
    if a=$(registry_layers "$2" "$user" "$password") && b=$(registry_layers "$3" "$user" "$password"); then
        echo "layers $1 $run $(python3 -c 'import sys; a, b = (s.split() for s in sys.argv[1:]); print(sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b)))' "$a" "$b")" >>"$results"
    fi
}

for run in $(seq "$runs"); do
    rundir=$work/run$run
    mkdir -p "$rundir"
    start_registry "$rundir" "$user" "$password"
    push_oci_layout "$work/base:1.37" library/busybox:1.37 "$user" "$password"
    base=$REGISTRY_ADDR/library/busybox:1.37
    export REGISTRY_ADDR base

    if want blumeops; then
        # Scenario, blumeops: one cache for cold, warm and changed.
        fresh_context
        export BLUMEOPS_CACHE_DIR=$rundir/blumeops-cache
        publish_cmd bench cold
        measure cold blumeops "${cmd[@]}"
        publish_cmd bench cold
        measure warm blumeops "${cmd[@]}"
        publish_cmd bench retag
        measure retag blumeops "${cmd[@]}"
        change_one_file
        publish_cmd bench changed
        measure changed blumeops "${cmd[@]}"
        count_layer_diff blumeops blumeops/bench:v1-cold blumeops/bench:v1-changed
    fi

    if want rootless; then
        # Scenario, blumeops rootless: the same as an unprivileged user, on its own cache.
        fresh_context
        chmod -R a+rX "$src"
        rootless_cache=$rundir/rootless-cache
        mkdir -p "$rootless_cache"
        chown "$bench_user:" "$rootless_cache"
        chmod 755 "$rundir"
        for c in cold warm changed; do
            [[ $c != changed ]] || { change_one_file; chmod -R a+rX "$src"; }
            sha=$c
            [[ $c != warm ]] || sha=cold
            publish_cmd bench "rootless-$sha"
            cmd[0]=$work/bin/blumeops
            measure "$c" rootless bash -c 'as_bench_user "$@"' _ env BLUMEOPS_CACHE_DIR="$rootless_cache" \
                ZOT_CI_API_KEY="$ZOT_CI_API_KEY" SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" "${cmd[@]}"
        done
        rm -rf "$rootless_cache"
    fi

    if want docker; then
        # Scenario, blumeops through the docker executor: the client here, the build in the
        # engine container, on a cache volume of its own.
        fresh_context
        if [[ $run == 1 ]]; then
            log "loading the engine image into dockerd (not measured)"
            publish_cmd bench warmup
            started=$(date +%s.%N)
            "${cmd[@]}" --executor docker --engine-volume blumeops-bench-warmup \
                >"$work/warmup.out" 2>"$work/warmup.err" || {
                tail -20 "$work/warmup.err" >&2
                exit 1
            }
            echo "engineload $(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$started" "$(date +%s.%N)")" >>"$results"
            docker volume rm blumeops-bench-warmup >/dev/null
        fi
        for c in cold warm changed; do
            [[ $c != changed ]] || change_one_file
            sha=$c
            [[ $c != warm ]] || sha=cold
            publish_cmd bench "docker-$sha"
            measure "$c" docker "${cmd[@]}" --executor docker --engine-volume "blumeops-bench-$run"
        done
        docker volume rm "blumeops-bench-$run" >/dev/null || true
    fi

    if want buildah; then
        # Scenario, buildah: one storage for cold, warm and changed.
        fresh_context
        measure cold buildah bash -c 'buildah_build_push "$@"' _ "$rundir/buildah" cold
        measure warm buildah bash -c 'buildah_build_push "$@"' _ "$rundir/buildah" cold
        change_one_file
        measure changed buildah bash -c 'buildah_build_push "$@"' _ "$rundir/buildah" changed
        count_layer_diff buildah blumeops/bench-buildah:v1-cold blumeops/bench-buildah:v1-changed
        buildah --root "$rundir/buildah/root" --runroot "$rundir/buildah/run" --storage-driver overlay \
            rmi -a -f >/dev/null 2>&1 || true
        unmount_under "$rundir/buildah"
        rm -rf "$rundir/buildah" "$BLUMEOPS_CACHE_DIR"
    fi

    if want buildkit; then
        # Scenario, BuildKit: dockerd's builder, from an empty build cache, then warm and changed.
        fresh_context
        export DOCKER_CONFIG=$rundir/docker-config
        mkdir -p "$DOCKER_CONFIG"
        echo "$password" | /usr/bin/docker login -u "$user" --password-stdin "$REGISTRY_ADDR" >/dev/null 2>&1
        /usr/bin/docker builder prune -af >/dev/null
        measure cold buildkit bash -c 'buildkit_build_push "$@"' _ cold
        measure warm buildkit bash -c 'buildkit_build_push "$@"' _ cold
        change_one_file
        measure changed buildkit bash -c 'buildkit_build_push "$@"' _ changed
        count_layer_diff buildkit blumeops/bench-buildkit:v1-cold blumeops/bench-buildkit:v1-changed
        for t in cold changed; do
            /usr/bin/docker image rm -f "$REGISTRY_ADDR/blumeops/bench-buildkit:v1-$t" >/dev/null 2>&1 || true
        done
        /usr/bin/docker builder prune -af >/dev/null
        unset DOCKER_CONFIG
    fi

    if want newmachine; then
        # New machine, warm registry cache: another machine (its own cache or storage) filled
        # the registry cache; this one starts empty, with the checkout at another path.
        fresh_context
        src_b=$work/src-other-machine
        rm -rf "$src_b"
        cp -a "$src" "$src_b"
        log "run $run/$runs: filling the registry caches from another machine (not measured)"
        export BLUMEOPS_CACHE_DIR=$rundir/filler-cache
        publish_cmd bench filler
        "${cmd[@]}" --cache-repo auto >"$rundir/fill.out" 2>"$rundir/fill.err" || {
            tail -20 "$rundir/fill.err" >&2
            exit 1
        }
        buildah_cache=$REGISTRY_ADDR/blumeops/cache/bench-buildah
        buildah_build_push "$rundir/buildah-filler" filler "$src" "$buildah_cache" || exit 1
        export BLUMEOPS_CACHE_DIR=$rundir/newmachine-cache
        publish_cmd bench newmachine "$src_b"
        measure newmachine blumeops "${cmd[@]}" --cache-repo auto
        measure newmachine buildah bash -c 'buildah_build_push "$@"' _ "$rundir/buildah-newmachine" \
            newmachine "$src_b" "$buildah_cache"
        for b in buildah-filler buildah-newmachine; do
            buildah --root "$rundir/$b/root" --runroot "$rundir/$b/run" --storage-driver overlay \
                rmi -a -f >/dev/null 2>&1 || true
            unmount_under "$rundir/$b"
        done
        rm -rf "$rundir/buildah-filler" "$rundir/buildah-newmachine" "$rundir/filler-cache" \
            "$BLUMEOPS_CACHE_DIR" "$src_b"
    fi

    if want push; then
        # Push of an already built image: built once (not measured) into a cache and an OCI
        # layout, then pushed by each tool to its own new repository.
        export BLUMEOPS_CACHE_DIR=$rundir/large-cache
        log "run $run/$runs: building the large image (not measured)"
        "$blumeops" build --progress plain --src "$src" --container-name large --version v1 \
            --commit-sha large --registry "$REGISTRY_ADDR" --registry-username "$user" \
            --registry-password env:ZOT_CI_API_KEY --build-arg "BASE_IMAGE=$base" \
            --output "oci:$rundir/large-oci" >"$rundir/large-build.out" 2>"$rundir/large-build.err" || {
            tail -20 "$rundir/large-build.err" >&2
            exit 1
        }
        publish_cmd large large
        measure push blumeops "${cmd[@]}"
        measure push skopeo skopeo copy -q --dest-tls-verify=false --dest-creds "$user:$password" \
            "oci:$rundir/large-oci:v1-large" "docker://$REGISTRY_ADDR/blumeops/large-skopeo:v1-large"
        # The ceiling: the image's largest blob (the large layer) sent by curl, to new
        # repositories of the same registry with the same credentials.
        read -r large_digest large_size < <(python3 - "$rundir/large-oci" <<'PY'
import json, os, sys
root = sys.argv[1]
desc = json.load(open(os.path.join(root, "index.json")))["manifests"][0]
manifest = json.load(open(os.path.join(root, "blobs", *desc["digest"].split(":"))))
layer = max(manifest["layers"], key=lambda l: l["size"])
print(layer["digest"], layer["size"])
PY
        )
        large_blob=$rundir/large-oci/blobs/${large_digest/://}
        echo "ceilingbytes $run $large_size" >>"$results"
        measure push ceiling-put bash -c 'ceiling_upload "$@"' _ put blumeops/large-ceiling-put \
            "$large_blob" "$large_digest"
        measure push ceiling-patch bash -c 'ceiling_upload "$@"' _ patch blumeops/large-ceiling-patch \
            "$large_blob" "$large_digest"
        # The image's size: manifest, config and layers.
        echo "bytes $run $(python3 - "$rundir/large-oci" <<'PY'
import json, os, sys
root = sys.argv[1]
desc = json.load(open(os.path.join(root, "index.json")))["manifests"][0]
manifest = json.load(open(os.path.join(root, "blobs", *desc["digest"].split(":"))))
print(desc["size"] + manifest["config"]["size"] + sum(l["size"] for l in manifest["layers"]))
PY
        )" >>"$results"
        phase=$(grep -oE '^pushed sha256:[0-9a-f]+ in [0-9.]+s' "$rundir/push-blumeops.err" | tail -1 |
            sed -E 's/.* in ([0-9.]+)s$/\1/' || true)
        [[ -z $phase ]] || echo "pushphase $run $phase" >>"$results"
    fi

    stop_registry
    rm -rf "$rundir"
done

python3 bench/lib/report.py "$results"
