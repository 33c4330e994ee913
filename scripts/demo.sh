#!/usr/bin/env bash
# The demo: a lab in network namespaces, xlb attached to the node's uplink, real TCP
# connections to a LoadBalancer VIP and a NodePort, and what each pod saw. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --bins -p xlb -p xlb-bench
exec target/release/xlb-bench demo "$@"
