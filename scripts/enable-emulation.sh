#!/usr/bin/env bash
# Let this machine run other architectures' binaries: register qemu-user-static's
# binfmt_misc handlers (with the F flag, so they work inside blumeops' sandbox).
#
#   scripts/enable-emulation.sh [QEMU_ARCH...]      (default: aarch64 on amd64, x86_64 on arm64)
#
# Needs root and Debian's qemu-user-static (its /usr/lib/binfmt.d/qemu-*.conf lines are
# registered as they are). Mounts binfmt_misc at /proc/sys/fs/binfmt_misc when it is not
# mounted (a VM or container without systemd-binfmt). An already registered handler is
# left as it is. Same as `systemctl restart systemd-binfmt` where systemd runs.
set -euo pipefail

die() {
    echo "enable-emulation.sh: error: $*" >&2
    exit 1
}

[[ $(id -u) -eq 0 ]] || die "needs root (it registers kernel binfmt_misc handlers)"
arches=("$@")
if [[ ${#arches[@]} -eq 0 ]]; then
    case "$(uname -m)" in
        x86_64) arches=(aarch64) ;;
        aarch64) arches=(x86_64) ;;
        *) die "give the qemu architectures to register, e.g. aarch64" ;;
    esac
fi

dir=/proc/sys/fs/binfmt_misc
if [[ ! -e $dir/register ]]; then
    mount -t binfmt_misc binfmt_misc "$dir" || die "cannot mount binfmt_misc at $dir"
fi
for arch in "${arches[@]}"; do
    conf=/usr/lib/binfmt.d/qemu-$arch.conf
    [[ -f $conf ]] || die "$conf not found (apt-get install qemu-user-static)"
    line=$(grep -v '^#' "$conf" | head -n1)
    name=$(cut -d: -f2 <<<"$line")
    flags=${line##*:}
    [[ $flags == *F* ]] || die "$conf registers $name without the F flag: it would not work in a sandbox"
    if [[ -e $dir/$name ]]; then
        echo "enable-emulation: $name is registered" >&2
    else
        printf '%s' "$line" >"$dir/register" || die "registering $name failed"
        echo "enable-emulation: registered $name" >&2
    fi
    grep -qx enabled "$dir/$name" || die "$name is registered but disabled (echo 1 > $dir/$name)"
done
