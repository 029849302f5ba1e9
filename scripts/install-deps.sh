#!/usr/bin/env bash
# Install what building, running and testing blumeops needs on Debian/Ubuntu:
# the registry, image tools and busybox used by the tests and the demo.
# The Rust toolchain itself comes from rustup (rust-toolchain.toml pins the version).
set -euo pipefail
# In the repository, so rustup and cargo use the pinned toolchain.
cd "$(dirname "$0")/.."

packages=(
    docker-registry  # the CNCF distribution registry the tests and the demo push to
    skopeo           # independent check of what was pushed
    umoci            # builds the busybox base image, unpacks results
    buildah          # independent builder, for comparisons
    busybox-static   # the base image's only binary
    debootstrap      # the Debian base image of the rootless apt/useradd tests
    uidmap           # newuidmap/newgidmap: the rootless executor's id ranges
    slirp4netns      # isolated step networks (user-mode networking)
    fuse-overlayfs   # rootless steps where the kernel has no overlayfs in user namespaces
    passwd           # useradd/usermod: the rootless tests' users
    docker.io        # dockerd and docker: the docker executor's tests
    qemu-user-static # foreign-architecture steps (the multi-platform tests)
    graphviz         # dot: renders `plan --format dot` in the tests
    apache2-utils    # htpasswd, for the registry's users
    ca-certificates  # HTTPS roots; update-ca-certificates makes the TLS tests' private store
    git
    file
    curl             # the demo and benchmarks wait for the registry with it
    python3          # the demo and benchmarks pick free ports and summarise with it
    python3-venv     # the virtualenv of the macOS check's zig and cargo-zigbuild
)

# cargo-fuzz (and the nightly toolchain it needs) for the fuzz step of scripts/test.sh.
CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "install-deps: installing cargo-fuzz $CARGO_FUZZ_VERSION"
    rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-deps: all packages present"
else
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    echo "install-deps: installing ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The multi-platform tests build a base for the other architecture from its busybox-static
# package (scripts/busybox-index.sh downloads it), which needs that dpkg architecture.
case "$(dpkg --print-architecture)" in
    amd64) other_arch=arm64 ;;
    arm64) other_arch=amd64 ;;
    *) other_arch= ;;
esac
if [[ -n $other_arch ]] && ! dpkg --print-foreign-architectures | grep -qx "$other_arch"; then
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    echo "install-deps: adding the dpkg architecture $other_arch"
    "${sudo[@]}" dpkg --add-architecture "$other_arch"
    "${sudo[@]}" apt-get update -qq
fi

# The macOS check (scripts/check-macos.sh): the darwin targets of the pinned toolchain, and
# cargo-zigbuild with zig from PyPI.
# shellcheck source=scripts/lib/macos.sh
source scripts/lib/macos.sh
installed_targets=$(rustup target list --installed)
for t in "${MACOS_TARGETS[@]}"; do
    grep -qx "$t" <<<"$installed_targets" || rustup target add "$t"
done
if ! "$ZIG_VENV/bin/cargo-zigbuild" --version 2>/dev/null | grep -qw "$CARGO_ZIGBUILD_VERSION" ||
    ! "$ZIG_VENV/bin/python3" -m ziglang version 2>/dev/null | grep -qx "$ZIGLANG_VERSION"; then
    echo "install-deps: installing cargo-zigbuild $CARGO_ZIGBUILD_VERSION and zig $ZIGLANG_VERSION"
    rm -rf "$ZIG_VENV"
    python3 -m venv "$ZIG_VENV"
    "$ZIG_VENV/bin/python3" -m pip install --quiet --disable-pip-version-check \
        "cargo-zigbuild==$CARGO_ZIGBUILD_VERSION" "ziglang==$ZIGLANG_VERSION"
fi
