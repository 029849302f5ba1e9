#!/usr/bin/env bash
# Build a two-platform busybox base (linux/amd64 and linux/arm64) as an OCI image layout
# whose tag names an OCI image index, from Debian's busybox-static packages only.
#
#   scripts/busybox-index.sh OUT_DIR [TAG]      (TAG defaults to 1.37)
#
# Each platform's image is scripts/busybox-base.sh's, with that architecture's
# busybox-static: this machine's /bin/busybox for its own architecture, and the other's
# from `apt-get download busybox-static:ARCH` (the architecture must be added first:
# `dpkg --add-architecture ARCH && apt-get update`; scripts/install-deps.sh does). Running
# it twice gives the same index digest.
#
# Push it with every platform:
#   skopeo copy --all --dest-tls-verify=false oci:OUT_DIR:1.37 docker://127.0.0.1:5000/library/busybox:1.37
set -euo pipefail

die() {
    echo "busybox-index.sh: error: $*" >&2
    exit 1
}

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 OUT_DIR [TAG]" >&2
    exit 2
fi
out=$1
tag=${2:-1.37}
here=$(cd "$(dirname "$0")" && pwd)

command -v python3 >/dev/null 2>&1 || die "python3 not found (apt-get install python3)"
command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb not found"
case "$(uname -m)" in
    x86_64) host_arch=amd64 ;;
    aarch64) host_arch=arm64 ;;
    *) die "this script builds amd64 and arm64 images on an amd64 or arm64 machine" ;;
esac
if [[ -e $out ]]; then
    [[ -d $out && -z "$(ls -A "$out")" ]] || die "$out exists and is not an empty directory"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/busybox-index.XXXXXX")
trap 'rm -rf "$work"' EXIT
# apt downloads as its own user where it can write (else it warns and downloads as root).
mkdir -m 0777 "$work/debs"

for arch in amd64 arm64; do
    busybox=/bin/busybox
    if [[ $arch != "$host_arch" ]]; then
        dpkg --print-foreign-architectures | grep -qx "$arch" ||
            die "dpkg has no $arch architecture: run dpkg --add-architecture $arch && apt-get update"
        (cd "$work/debs" && apt-get download -q "busybox-static:$arch" >/dev/null) ||
            die "apt-get download busybox-static:$arch failed"
        dpkg-deb -x "$work"/debs/busybox-static_*_"$arch".deb "$work/deb-$arch"
        busybox=$work/deb-$arch/bin/busybox
    fi
    BUSYBOX=$busybox ARCH=$arch bash "$here/busybox-base.sh" "$work/layout-$arch" "$tag"
done

# One layout: both images' blobs, an index naming each manifest with its platform, and
# index.json naming the index under the tag.
python3 - "$work" "$out" "$tag" <<'PY'
import hashlib, json, os, shutil, sys

work, out, tag = sys.argv[1:]
blobs = os.path.join(out, "blobs", "sha256")
os.makedirs(blobs, exist_ok=True)
entries = []
for arch in ("amd64", "arm64"):
    layout = os.path.join(work, "layout-" + arch)
    for name in os.listdir(os.path.join(layout, "blobs", "sha256")):
        shutil.copyfile(os.path.join(layout, "blobs", "sha256", name), os.path.join(blobs, name))
    with open(os.path.join(layout, "index.json")) as f:
        manifest = json.load(f)["manifests"][0]
    entries.append({
        "mediaType": manifest["mediaType"],
        "digest": manifest["digest"],
        "size": manifest["size"],
        "platform": {"architecture": arch, "os": "linux"},
    })
index = json.dumps({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": entries,
}, separators=(",", ":")).encode()
digest = hashlib.sha256(index).hexdigest()
with open(os.path.join(blobs, digest), "wb") as f:
    f.write(index)
with open(os.path.join(out, "oci-layout"), "w") as f:
    f.write('{"imageLayoutVersion":"1.0.0"}')
with open(os.path.join(out, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": "sha256:" + digest,
        "size": len(index),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }]}, f)
PY
echo "built $out:$tag (linux/amd64, linux/arm64)" >&2
