#!/usr/bin/env bash
# Builds xlb and runs the demo on the multi-node lab: a client, two edge nodes behind an ECMP
# route and two backend nodes with pods, xlb on every node, all in network namespaces
# (198.18.0.0/15 only), torn down at the end.
# Needs root. Extra arguments go to `xlb-bench demo` (e.g. --connections 100 --xdp-mode generic).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 ]]; then
    echo "demo: must run as root (the lab creates network namespaces and loads XDP programs)" >&2
    exit 1
fi
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --bins -p xlb -p xlb-bench
export XLB_BIN="$target/release/xlb"
exec "$target/release/xlb-bench" demo "$@"
