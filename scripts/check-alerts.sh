#!/usr/bin/env bash
# Checks deploy/monitoring/prometheusrule.yaml with promtool: the rules parse (`check rules`)
# and fire as deploy/monitoring/test/alerts-test.yaml expects (`test rules`). Uses promtool
# from PATH, else the one in Debian's prometheus package, unpacked into a cache directory
# (`apt-get download`: nothing is installed and no service starts).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf 'check-alerts: %s\n' "$*" >&2; }

promtool=$(command -v promtool || true)
if [[ -z $promtool ]]; then
    cache=${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/xlb-promtool
    promtool=$cache/usr/bin/promtool
    if [[ ! -x $promtool ]]; then
        log "fetching promtool (Debian package prometheus) into $cache"
        tmp=$(mktemp -d)
        trap 'rm -rf "$tmp"' EXIT
        (cd "$tmp" && timeout 300 apt-get download -qq prometheus 2>/dev/null) \
            || { apt-get update -qq && (cd "$tmp" && timeout 300 apt-get download -qq prometheus); }
        mkdir -p "$cache"
        dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
        install -D -m 0755 "$tmp/x/usr/bin/promtool" "$promtool"
    fi
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The PrometheusRule's spec is a rule file: the lines after `spec:` (its last key), dedented.
sed -n '/^spec:/,$p' deploy/monitoring/prometheusrule.yaml | tail -n +2 | sed 's/^  //' \
    > "$work/rules.yaml"
cp deploy/monitoring/test/alerts-test.yaml "$work/"
(cd "$work" && "$promtool" check rules rules.yaml && "$promtool" test rules alerts-test.yaml)
