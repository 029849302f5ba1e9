#!/usr/bin/env bash
# Build a minimal busybox base image as an OCI image layout, from Debian's
# busybox-static only (no Docker Hub needed).
#
#   scripts/busybox-base.sh OUT_DIR [TAG]      (TAG defaults to 1.37)
#
# The image holds /bin/busybox plus one symlink per applet, /etc/passwd
# (root, nobody), /etc/group, /tmp (1777) and /root, with Cmd ["sh"].
# Timestamps come from SOURCE_DATE_EPOCH (default 0), so running the script
# twice on the same host gives the same digest.
#
# Needs: umoci, busybox-static (/bin/busybox). Unpacking needs root (or runs
# umoci with --rootless when not root).
#
# BUSYBOX=PATH takes another static busybox, and ARCH=arm64 (an OCI architecture) makes
# the image for another architecture than this machine's, e.g. with the busybox of
# `apt-get download busybox-static:arm64` (scripts/busybox-index.sh does this). The applet
# list then comes from this machine's /bin/busybox, which needs no emulator.
#
# Push it somewhere with, for example:
#   skopeo copy --dest-tls-verify=false oci:OUT_DIR:1.37 docker://127.0.0.1:5000/library/busybox:1.37
set -euo pipefail

die() {
    echo "busybox-base.sh: error: $*" >&2
    exit 1
}

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 OUT_DIR [TAG]" >&2
    exit 2
fi

out=$1
tag=${2:-1.37}
epoch=${SOURCE_DATE_EPOCH:-0}
busybox=${BUSYBOX:-/bin/busybox}

command -v umoci >/dev/null 2>&1 || die "umoci not found in PATH (apt-get install umoci)"
[[ -x $busybox ]] || die "$busybox not found (apt-get install busybox-static)"
# A dynamically linked busybox would not run inside the image.
if command -v file >/dev/null 2>&1 && file -L "$busybox" | grep -q 'dynamically linked'; then
    die "$busybox is dynamically linked; install busybox-static"
fi
[[ $epoch =~ ^[0-9]+$ ]] || die "SOURCE_DATE_EPOCH must be an integer, got '$epoch'"
if [[ -e $out ]]; then
    [[ -d $out && -z "$(ls -A "$out")" ]] || die "$out exists and is not an empty directory"
    rmdir "$out" # umoci init wants to create it
fi

case "$(uname -m)" in
    x86_64 | amd64) host_arch=amd64 ;;
    aarch64 | arm64) host_arch=arm64 ;;
    armv7l | armv7*) host_arch=arm ;;
    i386 | i686) host_arch=386 ;;
    ppc64le) host_arch=ppc64le ;;
    s390x) host_arch=s390x ;;
    riscv64) host_arch=riscv64 ;;
    *) die "unsupported host architecture $(uname -m)" ;;
esac
arch=${ARCH:-$host_arch}
# A foreign busybox cannot list its applets without an emulator; the host's busybox of
# the same Debian release has the same list.
lister=$busybox
if [[ $arch != "$host_arch" ]]; then
    lister=/bin/busybox
    [[ -x $lister ]] || die "$lister not found (apt-get install busybox-static): it lists the applets"
fi

created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
work=$(mktemp -d "${TMPDIR:-/tmp}/busybox-base.XXXXXX")
trap 'rm -rf "$work"' EXIT
bundle=$work/bundle

unpack_flags=()
if [[ $(id -u) -ne 0 ]]; then
    unpack_flags+=(--rootless)
fi

umoci init --layout "$out"
umoci new --image "$out:$tag"
umoci unpack "${unpack_flags[@]}" --image "$out:$tag" "$bundle"

rootfs=$bundle/rootfs
mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/root" "$rootfs/tmp" \
    "$rootfs/usr/bin" "$rootfs/usr/sbin" "$rootfs/sbin" "$rootfs/usr/local/bin"
install -m 0755 "$busybox" "$rootfs/bin/busybox"
# All applets live in /bin (busybox finds them through PATH); the list is
# sorted so the layer is stable.
"$lister" --list | LC_ALL=C sort -u | while read -r applet; do
    [[ -z $applet || $applet == busybox ]] && continue
    ln -sf busybox "$rootfs/bin/$applet"
done
for required in sh echo cat ls; do
    [[ -L $rootfs/bin/$required ]] || die "busybox has no '$required' applet"
done

cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group"
chmod 1777 "$rootfs/tmp"
chmod 0700 "$rootfs/root"
chmod 0755 "$rootfs/bin" "$rootfs/etc" "$rootfs/usr" "$rootfs/usr/bin" "$rootfs/usr/sbin" \
    "$rootfs/sbin" "$rootfs/usr/local" "$rootfs/usr/local/bin"
if [[ $(id -u) -eq 0 ]]; then
    chown -R -h 0:0 "$rootfs"
fi
# Pin every mtime (symlinks included) for a reproducible layer.
find "$rootfs" -exec touch -h -d "@$epoch" {} +

umoci repack --history.created "$created" --history.created_by "busybox-base.sh" \
    --image "$out:$tag" "$bundle"
umoci config --image "$out:$tag" \
    --created "$created" \
    --history.created "$created" --history.created_by "busybox-base.sh config" \
    --architecture "$arch" --os linux \
    --config.env "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --config.cmd sh
# umoci keeps unreferenced blobs around; drop them.
umoci gc --layout "$out"

echo "built $out:$tag ($arch)" >&2
