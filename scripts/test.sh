#!/usr/bin/env bash
# The whole test suite: unit, property, packet (BPF_PROG_TEST_RUN) and end-to-end lab tests.
# Needs root (BPF, network namespaces); installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
# The end-to-end tests drive the release binaries.
cargo build --release --bins -p xlb -p xlb-bench
cargo test --release "$@"
