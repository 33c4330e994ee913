#!/usr/bin/env bash
# Installs everything xlb's build, tests, demo and benchmarks need on Debian 12, as root.
# Idempotent: when everything is present it only checks, in a few seconds.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
    echo "setup: must run as root (installs packages, mounts bpffs)" >&2
    exit 1
fi

# Debian packages: the kernel-program toolchain (rustc-web is new enough for aya-ebpf and ships
# LLVM 22, which bpf-linker links against), LLVM 22 for bpf-linker, and the lab tools.
PKGS=(rustc-web cargo-web rust-web-src llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev
      build-essential pkg-config iproute2 ethtool tcpdump tmux nftables iptables bpftool python3)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# User space builds with the machine's stable toolchain (rustup) when there is one, else with
# Debian's rustc-web, which is new enough for it too.
export PATH="$HOME/.cargo/bin:$PATH"
if command -v rustup >/dev/null; then
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
    # Kernel programs: Debian's rustc-web registered as the rustup toolchain `xlb-bpf`, used by
    # control/build.rs and bench/build.rs through aya-build's Toolchain::Custom("xlb-bpf") with
    # RUSTC_BOOTSTRAP=1.
    TC_DIR=/opt/xlb-bpf-toolchain
    if ! rustup run xlb-bpf rustc --version >/dev/null 2>&1; then
        log "registering Debian rustc-web as rustup toolchain xlb-bpf"
        mkdir -p "$TC_DIR/bin" "$TC_DIR/lib"
        for b in rustc cargo rustdoc; do ln -sf "/usr/bin/$b" "$TC_DIR/bin/$b"; done
        rustup toolchain link xlb-bpf "$TC_DIR"
    fi
else
    # Without rustup, aya-build uses the current toolchain: Debian's rustc-web for everything.
    log "no rustup: building with Debian's rustc-web ($(/usr/bin/rustc --version))"
fi

# bpf-linker against Debian's LLVM 22.
if ! command -v bpf-linker >/dev/null || ! bpf-linker --version 2>/dev/null | grep -q '0.13'; then
    log "building bpf-linker (a few minutes, once)"
    LLVM_PREFIX=/usr/lib/llvm-22 LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 \
        cargo install --locked bpf-linker --version 0.13.0 --no-default-features --features llvm-22
fi

# bpffs for pinned maps and links.
if ! mountpoint -q /sys/fs/bpf; then
    log "mounting bpffs at /sys/fs/bpf"
    mount -t bpf bpf /sys/fs/bpf
fi
log "ok"
