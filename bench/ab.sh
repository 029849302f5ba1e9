#!/usr/bin/env bash
# A/B timing of two blumeops binaries on the bench scenario's cold build, in pairs of runs
# (which one goes first alternates) so both see the same machine: each run is `blumeops build --output oci:DIR` of
# bench/scenario from an empty cache (no push), against a throwaway local registry holding
# the busybox base.
#
#   bench/ab.sh OLD_BIN NEW_BIN [RUNS]      (RUNS per binary, default 7)
#
# With AB_NEW_EXECUTOR=docker, NEW builds through the docker executor (the Docker Engine
# API at DOCKER_HOST, a new cache volume per run, removed after it) and OLD on the host:
# the executor's cost on the same machine, e.g. bench/ab.sh BIN BIN 8.
#
# With AB_EXECUTOR=docker, both build through the docker executor (OLD against NEW there).
# With AB_USER=NAME, both run as that unprivileged user (it needs a subordinate id range,
# e.g. bench/run.sh's blumeops-bench): the rootless executor, on caches the user owns.
#
# With AB_COMMAND=publish, each run is `blumeops publish` of the scenario to a new tag
# instead (the case of bench/run.sh's cold goal; no image is copied out of an engine).
#
# Prints every run's wall time, the medians, NEW/OLD of the medians and the median of the
# per-run ratios. Used to measure what a change
# costs, e.g. the sandbox hardening (see BENCHMARKS.md). Needs root and
# scripts/install-deps.sh's packages.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 2 ]] || {
    echo "usage: bench/ab.sh OLD_BIN NEW_BIN [RUNS]" >&2
    exit 2
}
old=$(realpath "$1")
new=$(realpath "$2")
runs=${3:-7}
[[ -x $old && -x $new && $runs =~ ^[1-9][0-9]*$ ]] || {
    echo "bench/ab.sh: OLD_BIN and NEW_BIN must be executables, RUNS a positive integer" >&2
    exit 2
}
command=${AB_COMMAND:-build}
[[ $command == build || $command == publish ]] || {
    echo "bench/ab.sh: AB_COMMAND must be build or publish" >&2
    exit 2
}
executor=${AB_EXECUTOR:-}
new_executor=${AB_NEW_EXECUTOR:-$executor}
[[ -z $executor || $executor == docker ]] && [[ -z $new_executor || $new_executor == docker ]] || {
    echo "bench/ab.sh: AB_EXECUTOR and AB_NEW_EXECUTOR must be docker or unset" >&2
    exit 2
}
as_user=${AB_USER:-}
if [[ -n $as_user ]]; then
    id -u "$as_user" >/dev/null 2>&1 && grep -q "^$as_user:" /etc/subuid || {
        echo "bench/ab.sh: AB_USER=$as_user must be a user with a subordinate id range" >&2
        exit 2
    }
    [[ -z $new_executor ]] || {
        echo "bench/ab.sh: AB_USER is for the rootless executor; leave AB_EXECUTOR unset" >&2
        exit 2
    }
fi

# shellcheck source=scripts/lib/registry.sh
source scripts/lib/registry.sh
work=$(mktemp -d "${TMPDIR:-/tmp}/blumeops-ab.XXXXXX")
trap 'stop_registry; rm -rf "$work"' EXIT
user=zot-ci
password="zak_$(head -c16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export SOURCE_DATE_EPOCH=1700000000 ZOT_CI_API_KEY=$password

scripts/busybox-base.sh "$work/base" 1.37 >/dev/null 2>&1
start_registry "$work" "$user" "$password"
push_oci_layout "$work/base:1.37" library/busybox:1.37 "$user" "$password"
src=$work/src
mkdir -p "$src/containers/bench"
cp bench/scenario/Dockerfile "$src/containers/bench/Dockerfile"
python3 bench/scenario/gen-context.py "$src/containers/bench"

if [[ -n $as_user ]]; then
    # The user reads the inputs and runs copies of the binaries.
    chmod 755 "$work"
    chmod -R a+rX "$src"
    mkdir -p "$work/bin"
    cp "$old" "$work/bin/old"
    cp "$new" "$work/bin/new"
    chmod 755 "$work/bin" "$work/bin/old" "$work/bin/new"
    old=$work/bin/old
    new=$work/bin/new
fi
# as_run COMMAND...: run it as AB_USER (with that user's HOME) when set.
as_run() {
    if [[ -n $as_user ]]; then
        setpriv --reuid="$as_user" --regid="$as_user" --init-groups \
            env HOME="$(getent passwd "$as_user" | cut -d: -f6)" USER="$as_user" "$@"
    else
        "$@"
    fi
}

one() { # BIN [EXECUTOR] -> wall seconds of one cold build
    local cache out start end volume=
    local extra=()
    cache=$(mktemp -d "$work/cache.XXXXXX")
    out=$(mktemp -d "$work/out.XXXXXX")
    [[ -z $as_user ]] || chown "$as_user:" "$cache" "$out"
    if [[ ${2:-} == docker ]]; then
        volume=blumeops-ab-$(basename "$cache")
        extra=(--engine-volume "$volume" --executor docker)
    fi
    if [[ $command == build ]]; then
        extra+=(--output "oci:$out/img")
    fi
    sync
    start=$(date +%s.%N)
    as_run env BLUMEOPS_CACHE_DIR="$cache" "$1" "$command" "${extra[@]}" --progress plain --src "$src" \
        --container-name bench --version v1 --commit-sha "$(basename "$cache" | tr -cd 'A-Za-z0-9')" \
        --registry "$REGISTRY_ADDR" --registry-username "$user" \
        --registry-password env:ZOT_CI_API_KEY \
        --build-arg "BASE_IMAGE=$REGISTRY_ADDR/library/busybox:1.37" \
        >/dev/null 2>"$work/last.err" || {
        tail -5 "$work/last.err" >&2
        exit 1
    }
    end=$(date +%s.%N)
    [[ -z $volume ]] || docker volume rm "$volume" >/dev/null
    rm -rf "$cache" "$out"
    python3 -c "print(f'{$end - $start:.3f}')"
}

# Not measured: the first build through the executor loads its engine image.
[[ -z $executor ]] || one "$old" "$executor" >/dev/null
[[ -z $new_executor ]] || one "$new" "$new_executor" >/dev/null

old_times=()
new_times=()
for i in $(seq "$runs"); do
    # Which goes first alternates, so a machine that speeds up or slows down over the runs
    # does not favour one side.
    if ((i % 2)); then
        o=$(one "$old" "$executor")
        n=$(one "$new" "$new_executor")
    else
        n=$(one "$new" "$new_executor")
        o=$(one "$old" "$executor")
    fi
    old_times+=("$o")
    new_times+=("$n")
    echo "run $i: old $o s, new $n s" >&2
done
python3 - "${old_times[*]}" "${new_times[*]}" <<'PY'
import statistics, sys
old = [float(x) for x in sys.argv[1].split()]
new = [float(x) for x in sys.argv[2].split()]
mo, mn = statistics.median(old), statistics.median(new)
print(f"old: median {mo:.3f} s  ({', '.join(f'{x:.2f}' for x in old)})")
print(f"new: median {mn:.3f} s  ({', '.join(f'{x:.2f}' for x in new)})")
pairs = sorted(n / o for o, n in zip(old, new))
print(f"new/old: {mn / mo:.3f} (medians); {statistics.median(pairs):.3f} (median of the "
      f"{len(pairs)} pairs: {', '.join(f'{r:.2f}' for r in pairs)})")
PY
