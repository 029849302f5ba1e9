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

work=$(mktemp -d)
registry_pid=
cleanup() {
    [[ -n $registry_pid ]] && kill "$registry_pid" 2>/dev/null && wait "$registry_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
addr=127.0.0.1:$port
key="zak_$(head -c16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
htpasswd -Bbn zot-ci "$key" >"$work/htpasswd"
cat >"$work/registry.yml" <<YAML
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $work/storage}}
http: {addr: $addr}
auth: {htpasswd: {realm: blumeops-demo, path: $work/htpasswd}}
YAML
echo "== starting a throwaway registry on $addr"
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 50); do
    curl -s -o /dev/null "http://$addr/v2/" && break
    sleep 0.1
done

echo "== making a busybox base image from Debian's busybox-static"
scripts/busybox-base.sh "$work/base" 1.37 >/dev/null
skopeo copy -q --dest-tls-verify=false --dest-creds "zot-ci:$key" \
    "oci:$work/base:1.37" "docker://$addr/library/busybox:1.37"

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
