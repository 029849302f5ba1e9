#!/usr/bin/env bash
# Install what building, running and testing blumeops needs on Debian/Ubuntu:
# the registry, image tools and busybox used by the tests and the demo.
# The Rust toolchain itself comes from rustup (rust-toolchain.toml pins the version).
set -euo pipefail

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
    apache2-utils    # htpasswd, for the registry's users
    ca-certificates  # HTTPS roots; update-ca-certificates makes the TLS tests' private store
    git
    file
    curl             # the demo and benchmarks wait for the registry with it
    python3          # the demo and benchmarks pick free ports and summarise with it
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
    exit 0
fi

sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)
echo "install-deps: installing ${missing[*]}"
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
