#!/usr/bin/env bash
# Builds the container image from the release binary, with podman (or buildah), and checks it:
# `xlb --version` and `xlb run --help` inside it. Pulls no base image (deploy/Dockerfile is
# FROM scratch), so it works offline once podman or buildah is installed; it installs podman
# (Debian 12: apt-get) if neither is there.
#
#   scripts/image.sh [--tag NAME] [--save FILE] [--no-build]
#     --tag NAME   image name (default localhost/xlb); tagged :<version> and :latest
#     --save FILE  also write the image as a docker-archive with both tags (for `kind load
#                  image-archive`, `ctr -n k8s.io images import` or `podman load`)
#     --no-build   use the existing binary (XLB_BIN, or <target dir>/release/xlb) as it is
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'image: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

name=localhost/xlb
save=
build=1
while (($#)); do
    case $1 in
        --tag) name=${2:?--tag NAME}; shift 2 ;;
        --save) save=${2:?--save FILE}; shift 2 ;;
        --no-build) build=; shift ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
start=$SECONDS

# The tool: podman builds and runs; buildah alone builds, and runs the checks in a working
# container.
if ! command -v podman >/dev/null && ! command -v buildah >/dev/null; then
    [[ $(id -u) -eq 0 ]] || die "neither podman nor buildah is installed (run as root to install podman)"
    # runc as well as crun: crun refuses hosts whose cgroups are mounted in hybrid mode.
    log "installing podman and runc"
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -qq || die "apt-get update failed: install podman or buildah by hand"
    timeout 600 apt-get install -y -qq --no-install-recommends podman runc >/dev/null \
        || die "installing podman failed: install podman or buildah by hand"
fi
tool=$(command -v podman || command -v buildah)
log "using $tool ($("$tool" --version))"

# The binary.
target=${CARGO_TARGET_DIR:-target}
bin=${XLB_BIN:-$target/release/xlb}
if [[ -n $build && -z ${XLB_BIN:-} ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
    log "building $bin"
    cargo build --release --locked -p xlb --bin xlb
fi
[[ -x $bin ]] || die "no xlb binary at $bin (build it, or set XLB_BIN)"
version=$("$bin" --version | awk '{print $2}')
[[ -n $version ]] || die "$bin --version printed no version"

# The context: rootfs/ with the binary, `sleep` (the keep-alive of the uninstall DaemonSet,
# whose work is done by an init container), and every library the loader maps for them.
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
sleep_bin=$(command -v sleep)
install -D -m 0755 "$bin" "$root/usr/local/bin/xlb"
install -D -m 0755 "$(readlink -f "$sleep_bin")" "$root/bin/sleep"
libs=$(ldd "$bin" "$sleep_bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} NF > 1 && $1 ~ /^\// {print $1}' | sort -u)
[[ -n $libs ]] || die "ldd found no library for $bin (a static binary needs no rootfs libraries: remove this check)"
for lib in $libs; do
    install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
done
# The directories xlb writes: the DaemonSet mounts the host's here.
mkdir -p "$root/sys/fs/bpf" "$root/run/xlb" "$root/tmp"
chmod 1777 "$root/tmp"
cp deploy/Dockerfile "$ctx/Dockerfile"

log "building $name:$version from $(du -sh "$root" | cut -f1) ($(wc -w <<<"$libs") libraries)"
"$tool" build --pull=never --network=none --layers=false \
    -t "$name:$version" -t "$name:latest" -f "$ctx/Dockerfile" "$ctx" >&2

# The checks, inside the image, without network. The container's limits are at most the
# caller's: a runtime cannot raise them where root lacks CAP_SYS_RESOURCE (podman's defaults do).
nofile=$(ulimit -Hn)
[[ $nofile == unlimited || $nofile -gt 65536 ]] && nofile=65536
limits=(--ulimit "nofile=$nofile:$nofile" --ulimit nproc=1024:1024)
# The default runtime first, then runc where it is installed; the first that starts the
# container runs every check.
runtimes=("")
command -v runc >/dev/null && runtimes+=(runc)
in_image() {
    local runtime=$1
    shift
    if [[ $(basename "$tool") == podman ]]; then
        timeout 120 podman ${runtime:+--runtime "$runtime"} run --rm --network=none \
            "${limits[@]}" "$name:$version" "$@" 2>&1
    else
        local ctr status=0
        ctr=$(buildah from "${limits[@]}" "$name:$version")
        timeout 120 buildah run ${runtime:+--runtime "$runtime"} --network=none "$ctr" -- \
            /usr/local/bin/xlb "$@" 2>&1 || status=$?
        buildah rm "$ctr" >/dev/null
        return "$status"
    fi
}
check() {
    local want=$1 runtime out
    shift
    for runtime in "${runtimes[@]}"; do
        if out=$(in_image "$runtime" "$@"); then
            runtimes=("$runtime")
            grep -q -- "$want" <<<"$out" || die "xlb $* in the image printed no \"$want\": $out"
            log "xlb $*: ok${runtime:+ (runtime $runtime)}: $(head -n1 <<<"$out")"
            return
        fi
        log "$(basename "$tool") run${runtime:+ --runtime $runtime} failed: $out"
    done
    die "xlb $* in the image failed"
}
check "xlb $version" --version
check "XLB_IFACE" run --help
# `sleep` runs too (its loader and libc are the image's).
if [[ $(basename "$tool") == podman ]]; then
    timeout 60 podman ${runtimes[0]:+--runtime "${runtimes[0]}"} run --rm --network=none \
        "${limits[@]}" --entrypoint /bin/sleep "$name:$version" 0 || die "/bin/sleep 0 in the image failed"
    log "/bin/sleep: ok"
fi

if [[ -n $save ]]; then
    rm -f "$save"
    if [[ $(basename "$tool") == podman ]]; then
        podman save -m --format docker-archive -o "$save" "$name:$version" "$name:latest" >&2
    else
        buildah push "$name:$version" "docker-archive:$save:$name:latest" >&2
    fi
    log "wrote $save ($(du -h "$save" | cut -f1))"
fi
log "$name:$version built and checked in $((SECONDS - start)) s"
