#!/usr/bin/env bash
# Build a Debian base image (minbase, apt included) as an OCI image layout, with debootstrap
# from Debian's archive (no Docker Hub needed). The rootless tests run apt-get and useradd
# on it.
#
#   scripts/debian-base.sh OUT_DIR [SUITE] [TAG]     (SUITE and TAG default to bookworm)
#
# The mirror is $DEBIAN_MIRROR (default http://deb.debian.org/debian). Device nodes,
# apt's lists and caches and the logs are left out, as Debian's official images do, and
# every mtime is pinned to SOURCE_DATE_EPOCH (default 0).
#
# Needs root, debootstrap and umoci. Push it somewhere with, for example:
#   skopeo copy --dest-tls-verify=false oci:OUT_DIR:bookworm docker://127.0.0.1:5000/library/debian:bookworm
set -euo pipefail

die() {
    echo "debian-base.sh: error: $*" >&2
    exit 1
}

if [[ $# -lt 1 || $# -gt 3 ]]; then
    echo "usage: $0 OUT_DIR [SUITE] [TAG]" >&2
    exit 2
fi
out=$1
suite=${2:-bookworm}
tag=${3:-$suite}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
epoch=${SOURCE_DATE_EPOCH:-0}

[[ $(id -u) -eq 0 ]] || die "debootstrap needs root"
command -v debootstrap >/dev/null 2>&1 || die "debootstrap not found (apt-get install debootstrap)"
command -v umoci >/dev/null 2>&1 || die "umoci not found (apt-get install umoci)"
[[ $epoch =~ ^[0-9]+$ ]] || die "SOURCE_DATE_EPOCH must be an integer, got '$epoch'"
if [[ -e $out ]]; then
    [[ -d $out && -z "$(ls -A "$out")" ]] || die "$out exists and is not an empty directory"
    rmdir "$out"
fi
arch=$(dpkg --print-architecture)
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
work=$(mktemp -d "${TMPDIR:-/tmp}/debian-base.XXXXXX")
trap 'rm -rf "$work"' EXIT
bundle=$work/bundle

umoci init --layout "$out"
umoci new --image "$out:$tag"
umoci unpack --image "$out:$tag" "$bundle"
rootfs=$bundle/rootfs

debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    {
        tail -n 30 "$work/debootstrap.log" >&2
        die "debootstrap $suite from $mirror failed"
    }

# What a container image does not carry.
rm -rf "$rootfs"/dev/* "$rootfs"/proc/* "$rootfs"/sys/* \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/var/log/* "$rootfs"/tmp/* "$rootfs"/run/*
echo "deb $mirror $suite main" >"$rootfs/etc/apt/sources.list"
find "$rootfs" -exec touch -h -d "@$epoch" {} +

umoci repack --history.created "$created" --history.created_by "debian-base.sh $suite" \
    --image "$out:$tag" "$bundle"
umoci config --image "$out:$tag" \
    --created "$created" \
    --history.created "$created" --history.created_by "debian-base.sh config" \
    --architecture "$arch" --os linux \
    --config.env "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --config.cmd bash
umoci gc --layout "$out"
echo "built $out:$tag ($arch, $suite)" >&2
