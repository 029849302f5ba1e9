# shellcheck shell=bash
# Sourced by scripts: start a throwaway docker-registry on a free loopback port with one
# htpasswd user, and push a busybox base image made from Debian's busybox-static.
#
#   start_registry WORKDIR USER PASSWORD   -> sets REGISTRY_ADDR and REGISTRY_PID
#   push_busybox_base WORKDIR USER PASSWORD -> pushes REGISTRY_ADDR/library/busybox:1.37
#   stop_registry
#   push_oci_layout LAYOUT:TAG REPO:TAG USER PASSWORD -> skopeo copy to REGISTRY_ADDR/REPO:TAG
#   registry_layers REPO:TAG USER PASSWORD  -> the image's layer digests, one a line

start_registry() {
    local work=$1 user=$2 password=$3
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    REGISTRY_ADDR=127.0.0.1:$port
    htpasswd -Bbn "$user" "$password" >"$work/htpasswd"
    cat >"$work/registry.yml" <<YAML
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $work/storage}}
http: {addr: $REGISTRY_ADDR}
auth: {htpasswd: {realm: blumeops, path: $work/htpasswd}}
YAML
    docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
    REGISTRY_PID=$!
    local _
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://$REGISTRY_ADDR/v2/" && return 0
        sleep 0.1
    done
    echo "registry did not start; log:" >&2
    cat "$work/registry.log" >&2
    return 1
}

push_busybox_base() {
    local work=$1 user=$2 password=$3 here
    here=$(dirname "${BASH_SOURCE[0]}")
    "$here/../busybox-base.sh" "$work/base" 1.37 >/dev/null
    skopeo copy -q --dest-tls-verify=false --dest-creds "$user:$password" \
        "oci:$work/base:1.37" "docker://$REGISTRY_ADDR/library/busybox:1.37"
}

stop_registry() {
    if [[ -n ${REGISTRY_PID:-} ]]; then
        kill "$REGISTRY_PID" 2>/dev/null || true
        wait "$REGISTRY_PID" 2>/dev/null || true
        REGISTRY_PID=
    fi
}

# push_oci_layout LAYOUT:TAG REPO:TAG USER PASSWORD -> copies an OCI layout image to
# REGISTRY_ADDR/REPO:TAG with skopeo
push_oci_layout() {
    local src=$1 dest=$2 user=$3 password=$4
    skopeo copy -q --dest-tls-verify=false --dest-creds "$user:$password" \
        "oci:$src" "docker://$REGISTRY_ADDR/$dest"
}

# registry_layers REPO:TAG USER PASSWORD -> prints the layer digests of the image's
# manifest (OCI or Docker schema 2), one a line, in order
registry_layers() {
    local repo=${1%:*} tag=${1##*:} user=$2 password=$3
    curl -fsS -u "$user:$password" \
        -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
        "http://$REGISTRY_ADDR/v2/$repo/manifests/$tag" |
        python3 -c 'import json, sys; print("\n".join(l["digest"] for l in json.load(sys.stdin)["layers"]))'
}
