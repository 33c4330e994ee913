#!/usr/bin/env bash
# The whole test suite: unit, property, packet (BPF_PROG_TEST_RUN) and end-to-end lab tests.
# Needs root (BPF, network namespaces); installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
# The end-to-end tests drive the release binaries. tests/e2e_upgrade.rs also needs a build of
# the next map layout, which takes over from this one: built first, kept as xlb-layout-next.
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --bin xlb -p xlb --features layout-next
cp "$target/release/xlb" "$target/release/xlb-layout-next"
cargo build --release --bins -p xlb -p xlb-bench
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --release --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary (cargo prints one per binary, the last often "0 passed"
# for doc tests).
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
