#!/usr/bin/env bash
# Boots Debian kernels in qemu and proves that xlb loads, attaches and forwards on each, the way
# Cilium's CI proves kernel support:
#   - Debian 12's own kernel (linux-image-amd64 of the release: 6.1, no TCX, so `--tc-attach auto`
#     must pick the cls_bpf filter);
#   - the newest kernel of Debian 12's backports (6.12 at the time of writing: TCX).
# Each VM boots from a small initramfs built here (busybox, iproute2, the xlb binary and the
# kernel's veth/clsact/cls_bpf modules), has no network device, and runs a lab of three network
# namespaces inside itself: a client, a node running `xlb run --manifests` on its veth uplink, and
# a pod. The client fetches a page from the LoadBalancer VIP (ingress DNAT in XDP, reply rewrite
# in the TC egress program), `xlb stats -o json` must count the rewritten replies and report the
# expected attach mode, a restarted `xlb run` must adopt the egress program without a second
# filter, and `xlb down` must remove everything. The VM prints one PASS or FAIL line on its
# serial console, which this script reads.
#
# Usage: scripts/kernel-test.sh            (needs root; installs qemu-system-x86 and
#                                           busybox-static from Debian when missing)
# Env:   XLB_BIN             the xlb binary to test (default: target/release/xlb, built first)
#        XLB_KERNEL_CACHE    where kernel packages are kept between runs
#                            (default /var/cache/xlb-kernel-test)
#        XLB_KERNELS         "stock backports" (default) or a subset
#        XLB_VM_TIMEOUT      seconds one VM may take (default 300)
#        XLB_QEMU_ACCEL      qemu's accelerator and CPU options (default: KVM if it boots a kernel
#                            here, else "-accel tcg -cpu max -smp 1")
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'kernel-test: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (installs packages)"
CACHE=${XLB_KERNEL_CACHE:-/var/cache/xlb-kernel-test}
KERNELS=${XLB_KERNELS:-stock backports}
VM_TIMEOUT=${XLB_VM_TIMEOUT:-300}
QEMU_ACCEL=${XLB_QEMU_ACCEL:-}
START=$(date +%s)

# --- tools -------------------------------------------------------------------------------------
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[[ -x /bin/busybox ]] && /bin/busybox --list | grep -qx nsenter || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v xz >/dev/null || need+=(xz-utils)
command -v tc >/dev/null || need+=(iproute2)
if ((${#need[@]})); then
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
ldd /bin/busybox >/dev/null 2>&1 && die "/bin/busybox is dynamically linked; install busybox-static"

# --- the xlb binary ----------------------------------------------------------------------------
if [[ -z ${XLB_BIN:-} ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
    cargo build --release --bins -p xlb -p xlb-bench  # as scripts/test.sh, so neither rebuilds
    XLB_BIN=${CARGO_TARGET_DIR:-target}/release/xlb
fi
XLB_BIN=$(realpath "$XLB_BIN")

# --- kernel packages ---------------------------------------------------------------------------
mkdir -p "$CACHE"
WORK=$(mktemp -d /tmp/xlb-kernel-test.XXXXXX)
[[ -n ${XLB_KEEP_WORK:-} ]] || trap 'rm -rf "$WORK"' EXIT
CODENAME=$(. /etc/os-release && echo "$VERSION_CODENAME")
[[ -n $CODENAME ]] || die "cannot tell the Debian release from /etc/os-release"
# The archive this machine already uses for its release, for the backports suite.
MIRROR=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' |
    awk -v r="$CODENAME" '$2 == r { print $1; exit }')
[[ -n $MIRROR ]] || die "no apt source for $CODENAME"

# apt options for a private view of one suite, leaving the system's lists alone.
suite_apt() {
    local suite=$1 dir=$WORK/apt-$1
    if [[ ! -d $dir ]]; then
        mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial"
        echo "deb $MIRROR $suite main" >"$dir/sources.list"
        apt-get -qq -o Dir::Etc::SourceList="$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null \
            -o Dir::State::Lists="$dir/lists" -o Dir::Cache="$dir/cache" -o APT::Sandbox::User=root update >&2
    fi
    echo -o Dir::Etc::SourceList="$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null \
        -o Dir::State::Lists="$dir/lists" -o Dir::Cache="$dir/cache" -o APT::Sandbox::User=root
}

# The kernel package that linux-image-amd64 of a suite stands for (no suite: of this machine's
# own apt sources, the release with its security updates), downloaded into the cache.
fetch_kernel() {
    local suite=$1 opts="" pkg deb
    [[ -z $suite ]] || opts=$(suite_apt "$suite")
    # shellcheck disable=SC2086
    pkg=$(apt-cache $opts show linux-image-amd64 | awk -F': ' '/^Depends:/ { print $2; exit }' |
        grep -o 'linux-image-[^ ,]*' | head -1)
    [[ -n $pkg ]] || die "linux-image-amd64 of $suite depends on no kernel package"
    deb=$(ls "$CACHE/${pkg}_"*.deb 2>/dev/null | head -1 || true)
    if [[ -z $deb ]]; then
        log "downloading $pkg (${suite:-$CODENAME})"
        # shellcheck disable=SC2086
        (cd "$CACHE" && timeout 600 apt-get -qq $opts download "$pkg" >&2)
        deb=$(ls "$CACHE/${pkg}_"*.deb | head -1)
    fi
    echo "$deb"
}

# --- the initramfs -----------------------------------------------------------------------------
# Copies a dynamically linked program and the libraries it loads into the initramfs tree.
copy_with_libs() {
    local root=$1 bin=$2 lib
    install -D -m 0755 "$bin" "$root$3"
    for lib in $(ldd "$bin" | grep -o '/[^ ]*' | sort -u); do
        [[ -e $root$lib ]] || install -D -m 0755 "$(realpath "$lib")" "$root$lib"
    done
}

build_initramfs() {
    local deb=$1 root=$2 out=$3 x=$2.deb m f
    mkdir -p "$x" "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,run,tmp,etc,lib/modules,www}
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$x" --wildcards './boot/vmlinuz-*' \
        '*/veth.ko*' '*/sch_ingress.ko*' '*/cls_bpf.ko*'
    cp "$x"/boot/vmlinuz-* "$root.vmlinuz"
    # Debian builds these as modules: veth, the clsact qdisc and cls_bpf (none has dependencies).
    for m in veth sch_ingress cls_bpf; do
        f=$(find "$x/lib/modules" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" | head -1)
        [[ -n $f ]] || die "$deb has no $m module"
        case $f in
            *.xz) xz -dc "$f" >"$root/lib/modules/$m.ko" ;;
            *.zst) zstd -qdc "$f" >"$root/lib/modules/$m.ko" ;;
            *) cp "$f" "$root/lib/modules/$m.ko" ;;
        esac
    done
    rm -rf "$x"
    cp /bin/busybox "$root/bin/busybox"
    copy_with_libs "$root" "$(command -v ip)" /sbin/ip
    copy_with_libs "$root" "$(command -v tc)" /sbin/tc
    copy_with_libs "$root" "$XLB_BIN" /usr/bin/xlb
    guest_manifests >"$root/etc/xlb.yaml"
    echo "xlb-kernel-test-ok" >"$root/www/index.html"
    guest_init >"$root/init"
    chmod 0755 "$root/init"
    (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out"
}

# One LoadBalancer Service whose only endpoint is the pod on this node.
guest_manifests() {
    cat <<'EOF'
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 198.19.128.10
  externalTrafficPolicy: Cluster
  ports:
  - {name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}
status:
  loadBalancer:
    ingress:
    - ip: 198.19.255.1
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
endpoints:
- addresses: [198.18.1.2]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: node-a
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
status:
  addresses:
  - {type: InternalIP, address: 198.18.0.2}
EOF
}

# The VM's /init: the lab, the checks, one result line, power off.
guest_init() {
    cat <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
# busybox's sh runs its own applets before anything on PATH: iproute2 and xlb go by full path.
export PATH=/sbin:/usr/bin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs run /run
mount -t tmpfs tmp /tmp
mount -t bpf bpf /sys/fs/bpf
KERNEL=$(uname -r)
WANT=$(cat /proc/cmdline | tr ' ' '\n' | sed -n 's/^xlb.want=//p')
finish() {
    echo "XLB-KERNEL-TEST: $1 kernel=$KERNEL $2"
    sync
    poweroff -f
}
fail() {
    echo "--- xlb log"; tail -n 30 /tmp/xlb.log 2>/dev/null
    echo "--- xlb services"; in_ns node /usr/bin/xlb services 2>&1
    echo "--- xlb stats"; in_ns node /usr/bin/xlb stats 2>&1 | grep -v ' 0 '
    echo "--- node"; in_ns node /sbin/ip addr; in_ns node /sbin/tc filter show dev eth0 egress
    finish FAIL "$*"
}
in_ns() { ns=$1; shift; nsenter --net=/run/netns/$ns "$@"; }
# Progress on the console, with the VM's uptime, so a slow step shows in a timed-out run.
step() { echo "xlb-kernel-test [$(cut -d' ' -f1 /proc/uptime)s] $*"; }
for m in veth sch_ingress cls_bpf; do insmod /lib/modules/$m.ko || fail "insmod $m"; done

# client (198.18.0.1) -- eth0 [node-a 198.18.0.2 | 198.18.1.1] pod0 -- pod (198.18.1.2)
for ns in client node pod; do /sbin/ip netns add $ns || fail "netns $ns"; done
/sbin/ip link add c0 netns client type veth peer name eth0 netns node || fail "veth client"
/sbin/ip link add p0 netns pod type veth peer name pod0 netns node || fail "veth pod"
in_ns client /sbin/ip addr add 198.18.0.1/24 dev c0
in_ns client /sbin/ip link set c0 up
in_ns client /sbin/ip link set lo up
in_ns client /sbin/ip route add 198.19.255.1/32 via 198.18.0.2
in_ns node /sbin/ip addr add 198.18.0.2/24 dev eth0
in_ns node /sbin/ip addr add 198.18.1.1/24 dev pod0
in_ns node /sbin/ip link set eth0 up
in_ns node /sbin/ip link set pod0 up
in_ns node /sbin/ip link set lo up
in_ns node sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'
in_ns pod /sbin/ip addr add 198.18.1.2/24 dev p0
in_ns pod /sbin/ip link set p0 up
in_ns pod /sbin/ip link set lo up
in_ns pod /sbin/ip route add default via 198.18.1.1
in_ns pod httpd -p 8080 -h /www || fail "httpd"

start_xlb() {
    in_ns node /usr/bin/xlb run --iface eth0 --node-name node-a --manifests /etc/xlb.yaml \
        --tc-attach auto >>/tmp/xlb.log 2>&1 &
    XLB_PID=$!
}
# The page, fetched through the VIP (busybox's nc: its static wget crashes resolving addresses).
get() {
    printf 'GET / HTTP/1.0\r\n\r\n' | in_ns client nc -w 2 198.19.255.1 80 2>/dev/null | tail -n 1
}
# Fetches the page through the VIP $1 times; waits up to 120 s for the first answer (loading
# the programs takes a while under TCG: the verifier runs emulated).
fetch() {
    i=0
    until [ "$(get)" = xlb-kernel-test-ok ]; do
        i=$((i + 1))
        [ $i -lt 60 ] || fail "no answer from the VIP"
        kill -0 $XLB_PID 2>/dev/null || fail "xlb run exited"
        sleep 1
    done
    n=1
    while [ $n -lt $1 ]; do
        [ "$(get)" = xlb-kernel-test-ok ] ||
            fail "request $n through the VIP failed"
        n=$((n + 1))
    done
}
filters() { in_ns node /sbin/tc filter show dev eth0 egress | grep -c xlb_tc_egress; }
counter() {
    in_ns node /usr/bin/xlb stats -o json | tr -d ' \n' | grep -o "\"$1\":[0-9]*" | cut -d: -f2
}

step "lab up; starting xlb run"
start_xlb
fetch 10
step "10 requests answered through the VIP"
STATS=$(in_ns node /usr/bin/xlb stats -o json | tr -d ' \n')
MODE=$(echo "$STATS" | grep -o '"tc_attach":"[a-z]*"' | cut -d'"' -f4)
[ "$MODE" = "$WANT" ] || fail "tc_attach is '$MODE', want '$WANT'"
REWRITTEN=$(counter reply_rewritten)
[ "${REWRITTEN:-0}" -ge 10 ] || fail "reply_rewritten is '$REWRITTEN' after 10 requests"
if [ "$MODE" = legacy ]; then
    [ "$(filters)" = 1 ] || fail "want one cls_bpf filter, tc shows: $(in_ns node /sbin/tc filter show dev eth0 egress)"
fi
grep -q "egress program attach mode" /tmp/xlb.log || fail "xlb did not log its attach mode"

# A restarted xlb adopts what is attached.
kill $XLB_PID; wait $XLB_PID 2>/dev/null
step "restarting xlb run"
start_xlb
# The datapath forwards on while no xlb runs: wait for the new process to adopt it.
i=0
until grep -q "adopted the datapath already attached" /tmp/xlb.log; do
    i=$((i + 1))
    [ $i -lt 120 ] || fail "the restarted xlb run did not adopt the datapath"
    kill -0 $XLB_PID 2>/dev/null || fail "the restarted xlb run exited"
    sleep 1
done
fetch 5
step "adopted; 5 requests answered after the restart"
if [ "$MODE" = legacy ]; then
    [ "$(filters)" = 1 ] || fail "after a restart tc shows: $(in_ns node /sbin/tc filter show dev eth0 egress)"
fi
kill $XLB_PID; wait $XLB_PID 2>/dev/null

step "xlb down"
in_ns node /usr/bin/xlb down --iface eth0 >>/tmp/xlb.log 2>&1 || fail "xlb down"
[ "$(filters)" = 0 ] || fail "xlb down left a filter"
in_ns node /sbin/ip link show eth0 | grep -q xdp && fail "xlb down left XDP attached"
[ -z "$(get)" ] || fail "the VIP answers after xlb down"
step "nothing left attached"
finish PASS "tc_attach=$MODE reply_rewritten=$REWRITTEN"
EOF
}

# --- boot --------------------------------------------------------------------------------------
# KVM when /dev/kvm works: a kernel started under it must print its banner within 10 s (nested
# KVM can be present and hang, or refuse the host CPU model). TCG otherwise.
pick_accel() {
    local kernel=$1 probe=$WORK/kvm-probe.console
    if [[ -r /dev/kvm && -w /dev/kvm ]]; then
        { timeout 10 qemu-system-x86_64 -accel kvm -cpu host -m 256 -nodefaults -no-user-config \
            -display none -no-reboot -nic none -serial "file:$probe" -kernel "$kernel" \
            -append "console=ttyS0 panic=-1" >/dev/null 2>&1 || true; } 2>/dev/null
        if grep -aq 'Linux version' "$probe" 2>/dev/null; then
            QEMU_ACCEL="-accel kvm -cpu host -smp 2"
            log "using KVM"
            return
        fi
        log "/dev/kvm does not boot a kernel here; using TCG"
    else
        log "no usable /dev/kvm; using TCG"
    fi
    QEMU_ACCEL="-accel tcg -cpu max -smp 1"
}

# Boots kernel package $1, expecting attach mode $2; prints the result line.
boot() {
    local deb=$1 want=$2 name root console rc line t0
    name=$(basename "$deb" .deb)
    root=$WORK/$name
    console=$WORK/$name.console
    build_initramfs "$deb" "$root" "$root.cpio.gz"
    [[ -n $QEMU_ACCEL ]] || pick_accel "$root.vmlinuz"
    t0=$(date +%s)
    set +e
    # no_timer_check: TCG on a busy host is too slow for the kernel's IO-APIC timer check.
    # shellcheck disable=SC2086
    timeout "$VM_TIMEOUT" qemu-system-x86_64 $QEMU_ACCEL -m 1024 \
        -nodefaults -no-user-config -display none -no-reboot -nic none \
        -serial "file:$console" -kernel "$root.vmlinuz" -initrd "$root.cpio.gz" \
        -append "console=ttyS0 rdinit=/init panic=-1 no_timer_check quiet loglevel=3 xlb.want=$want" \
        >"$WORK/$name.qemu" 2>&1
    rc=$?
    set -e
    line=$(grep -a '^XLB-KERNEL-TEST:' "$console" | tail -1 || true)
    if [[ $line != "XLB-KERNEL-TEST: PASS"* ]]; then
        log "$name: ${line:-no result line (qemu exit $rc$([[ $rc == 124 ]] && echo ", timed out after ${VM_TIMEOUT}s"))}"
        log "--- serial console of $name (last 60 lines)"
        tail -n 60 "$console" >&2 || true
        cat "$WORK/$name.qemu" >&2 || true
        return 1
    fi
    grep -a '^xlb-kernel-test \[' "$console" | sed "s/^/kernel-test: $name: /" >&2 || true
    log "$name: $line ($(($(date +%s) - t0)) s)"
}

failed=0
for k in $KERNELS; do
    case $k in
        stock) deb=$(fetch_kernel "") want=legacy ;;
        backports) deb=$(fetch_kernel "$CODENAME-backports") want=tcx ;;
        *) die "unknown kernel '$k' in XLB_KERNELS (stock, backports)" ;;
    esac
    boot "$deb" "$want" || failed=$((failed + 1))
done
n=$(wc -w <<<"$KERNELS")
log "$((n - failed)) of $n kernels passed in $(($(date +%s) - START)) s"
((failed == 0))
