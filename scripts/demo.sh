#!/usr/bin/env bash
# The main job, end to end, on this machine: start a throwaway registry that requires a
# password for pushes (as zot does), build and publish `hello` with the password given as
# `env:ZOT_CI_API_KEY`, pull the image back with skopeo and run it.
# Everything lives in a temporary directory that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

scripts/install-deps.sh
echo "== building blumeops"
cargo build --locked -p blumeops-cli
blumeops=$repo/target/debug/blumeops

source scripts/lib/registry.sh
work=$(mktemp -d)
trap 'stop_registry; rm -rf "$work"' EXIT

key="zak_$(head -c16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
start_registry "$work" zot-ci "$key"
addr=$REGISTRY_ADDR
echo "== started a throwaway registry on $addr"
echo "== making a busybox base image from Debian's busybox-static"
push_busybox_base "$work" zot-ci "$key"

echo "== blumeops publish"
export ZOT_CI_API_KEY=$key
export BLUMEOPS_CACHE_DIR=$work/cache
ref=$("$blumeops" publish --src "$repo" --container-name hello --version v1.0.0 --commit-sha demo123 \
    --registry "$addr" --registry-password env:ZOT_CI_API_KEY \
    --build-arg "BASE_IMAGE=$addr/library/busybox:1.37" | tail -n1)
echo "published: $ref"

echo "== publishing again (nothing to push)"
"$blumeops" publish --src "$repo" --container-name hello --version v1.0.0 --commit-sha demo123 \
    --registry "$addr" --registry-password env:ZOT_CI_API_KEY \
    --build-arg "BASE_IMAGE=$addr/library/busybox:1.37" | tail -n1

echo "== pulling it back and running it"
skopeo copy -q --src-tls-verify=false --src-creds "zot-ci:$key" "docker://${ref%@*}" "oci:$work/pulled:hello"
skopeo inspect --tls-verify=false --creds "zot-ci:$key" "docker://${ref%@*}" | grep -E '"(Digest|Name)"'
umoci unpack --image "$work/pulled:hello" "$work/bundle" >/dev/null
chroot "$work/bundle/rootfs" /usr/local/bin/hello
echo "== demo finished: $ref"
