#!/bin/bash
# The aarch64 artefacts on this x86_64 machine, under qemu-user (apt: qemu-user-static):
#
#   bash packaging/test-arm64.sh ROOT DEB BINARY WORK
#
# ROOT is a pristine `debootstrap --foreign --arch=arm64 --variant=minbase` root (not
# touched: a copy is used), DEB the _arm64.deb, BINARY dist/arm64/recodex-monitor, WORK a
# scratch directory. Called by packaging/test-packages.sh.
#
# Everything runs in a user namespace with its own binfmt_misc instance (Linux >= 6.7):
# qemu-aarch64-static is registered there for arm64 ELF files, so that the arm64 root's
# own programs run (debootstrap's second stage, dpkg and the package's scripts) without
# registering anything on the host; the namespace also has a private loopback-only
# network and private mounts. In that root: debootstrap --second-stage, dpkg -i of the
# .deb with its scripts, then the installed binary as the user recodex under env -i:
# --version, a ZeroMQ -> WebSocket round trip with the exact bytes (the client is the
# host's node on the same loopback), SIGTERM -> exit 0.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
# shellcheck source=packaging/test-lib.sh
. "$HERE/test-lib.sh"

if [ "${1:-}" != --inner ]; then
    [ $# -eq 4 ] || { echo "usage: $0 ROOT DEB BINARY WORK" >&2; exit 2; }
    FOREIGN=$1 DEB=$2 BINARY=$3 WORK=$4
    [ -x /usr/bin/qemu-aarch64-static ] || fail "qemu-aarch64-static missing (apt-get install qemu-user-static)"
    R="$WORK/arm64-root"
    rm -rf "$R"
    cp -a "$FOREIGN" "$R"
    cp "$DEB" "$R/var/tmp/recodex-monitor.deb"
    unshare --user --mount --net --propagation private \
        bash "${BASH_SOURCE[0]}" --inner "$R" "$BINARY" "$WORK" &
    inner=$!
    # identity map of uids/gids 0..65535 (we are root outside: no newuidmap needed), once
    # the child has its own user namespace
    deadline=$(($(date +%s) + 10))
    while [ "$(readlink "/proc/$inner/ns/user" 2>/dev/null)" = "$(readlink /proc/self/ns/user)" ]; do
        [ "$(date +%s)" -lt "$deadline" ] || fail "no user namespace"
        sleep 0.01
    done
    echo "0 0 65536" > "/proc/$inner/uid_map"
    echo "0 0 65536" > "/proc/$inner/gid_map"
    rc=0
    wait "$inner" || rc=$?
    rm -rf "$R"
    exit $rc
fi

shift
R=$1 BINARY=$2 WORK=$3
deadline=$(($(date +%s) + 10))
until [ "$(id -u)" = 0 ]; do # the parent writes our uid map
    [ "$(date +%s)" -lt "$deadline" ] || fail "no uid map"
    sleep 0.01
done
if [ -z "${RECODEX_ARM64_PIDNS:-}" ]; then
    # a pid namespace of this user namespace, so that proc can be mounted in the root
    exec env RECODEX_ARM64_PIDNS=1 unshare --pid --fork --mount-proc bash "${BASH_SOURCE[0]}" --inner "$R" "$BINARY" "$WORK"
fi

mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
# Debian's registration for qemu-aarch64 (flag F: the interpreter is opened now, so it
# also works inside the chroot)
grep -v '^#' /usr/lib/binfmt.d/qemu-aarch64.conf | head -n1 > /proc/sys/fs/binfmt_misc/register
ip link set lo up
mount --rbind /dev "$R/dev"
mount -t proc proc "$R/proc"
mount -t tmpfs -o mode=1777,nosuid,nodev,noexec tmpfs "$R/tmp"
MONITOR_PID=""
trap '[ -z "$MONITOR_PID" ] || kill -KILL "$MONITOR_PID" 2>/dev/null || true' EXIT

log "arm64: debootstrap --second-stage under qemu-user"
# every package's files are fsync()ed by default: not worth it in a throw-away root
echo force-unsafe-io > "$R/etc/dpkg/dpkg.cfg.d/unsafe-io"
# container=lxc: debootstrap then uses the /dev bound above instead of mknod
container=lxc chroot "$R" /debootstrap/debootstrap --second-stage > "$WORK/arm64-second-stage.log" 2>&1 \
    || { tail -n 30 "$WORK/arm64-second-stage.log"; fail "arm64 second stage"; }
[ "$(chroot "$R" dpkg --print-architecture)" = arm64 ] || fail "the root is not arm64"
[ "$(chroot "$R" uname -m)" = aarch64 ] || fail "uname -m in the root is not aarch64"
pass "arm64 Debian root ($(chroot "$R" cat /etc/debian_version)), its programs run under qemu-aarch64 (uname -m: aarch64)"

log "arm64: dpkg -i $(basename "$(readlink -f "$R/var/tmp/recodex-monitor.deb")")"
chroot "$R" dpkg -i /var/tmp/recodex-monitor.deb > "$WORK/arm64-dpkg.log" 2>&1 \
    || { cat "$WORK/arm64-dpkg.log"; fail "dpkg -i of the arm64 .deb"; }
chroot "$R" getent passwd recodex >/dev/null || fail "postinst did not create the user recodex"
[ "$(chroot "$R" stat -c '%U:%G %a' /etc/recodex/monitor/config.yml)" = "root:recodex 640" ] || fail "config.yml owner/mode"
[ -L "$R/etc/systemd/system/multi-user.target.wants/recodex-monitor.service" ] || fail "not enabled (no wants link)"
cmp -s "$R/usr/bin/recodex-monitor" "$BINARY" || fail "installed binary differs from $BINARY"
pass "installed with its scripts: user recodex, config root:recodex 0640, enabled for the next boot, binary unchanged"

as_recodex() {
    chroot "$R" setpriv --reuid=recodex --regid=recodex --init-groups --inh-caps=-all \
        --no-new-privs env -i "$@"
}
install -d -m 0700 "$R/run/recodex-monitor"
chroot "$R" chown recodex:recodex /run/recodex-monitor
out=$(as_recodex RUNTIME_DIRECTORY=/run/recodex-monitor /usr/bin/recodex-monitor --version 2>&1) || fail "--version: $out"
VERSION=$("$REPO/node_modules/.bin/node" -p 'require(process.argv[1]).version' "$REPO/package.json")
[ "$out" = "recodex-monitor $VERSION" ] || fail "--version printed '$out'"
pass "env -i /usr/bin/recodex-monitor --version (aarch64, as recodex): $out"

log "arm64: the installed monitor, relay round trip, SIGTERM"
start=$(date +%s%N)
# not through as_recodex: $! must be the monitor itself (chroot, setpriv and env exec it)
chroot "$R" setpriv --reuid=recodex --regid=recodex --init-groups --inh-caps=-all --no-new-privs \
    env -i RUNTIME_DIRECTORY=/run/recodex-monitor /usr/bin/recodex-monitor -c /etc/recodex/monitor/config.yml \
    > "$WORK/arm64-monitor.out" 2>&1 &
MONITOR_PID=$!
wait_ports 60 "$MONITOR_PID" 4567 7894 || { cat "$WORK/arm64-monitor.out"; fail "ports 4567/7894 not accepting"; }
echo "  startup under qemu-user: $((($(date +%s%N) - start) / 1000000)) ms until both ports accept"
"$REPO/node_modules/.bin/node" "$REPO/packaging/roundtrip.mjs" --ws-port 4567 --zmq-port 7894 --timeout 30000 \
    || { cat "$WORK/arm64-monitor.out"; fail "round trip"; }
kill -TERM "$MONITOR_PID"
timeout 20 tail --pid="$MONITOR_PID" -f /dev/null || fail "no exit within 20 s of SIGTERM"
rc=0
wait "$MONITOR_PID" || rc=$?
MONITOR_PID=""
[ $rc -eq 0 ] || { cat "$WORK/arm64-monitor.out"; fail "exit $rc after SIGTERM"; }
grep -q "stopped" "$R/var/log/recodex/monitor.log" || fail "no 'stopped' in the log"
pass "aarch64 monitor: round trip with the exact bytes, SIGTERM -> exit 0"
