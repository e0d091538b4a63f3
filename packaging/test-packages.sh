#!/bin/bash
# Tests of the release artefacts: dist/recodex-monitor, the .rpm and the .deb.
#
#   npm ci && npm run build && npm run package && bash packaging/test-packages.sh
#
# Needs root (debootstrap, chroot, mount, unshare) and: rpm debootstrap systemd iproute2
# (apt-get install -y rpm debootstrap systemd iproute2), the Debian archive reachable via
# the mirror configured in /etc/apt/sources.list* (override: DEBIAN_MIRROR=URL,
# DEBIAN_SUITE=bookworm).
#
# What it does (step 1 on the host's network, steps 2-3 in a private network namespace with
# loopback only, and a private mount namespace, so all mounts vanish on exit):
#  1. systemd-analyze verify of the unit must print nothing; builds the "upgrade"
#     packages (release+1) into a temp dir while debootstrap --variant=minbase runs once;
#  2. .deb in a copy of that root: dpkg -i; user/group, files, modes, owners, unchanged
#     binary; no node anywhere; the installed binary run as recodex (chroot + setpriv,
#     env -i) with /tmp and /dev/shm mounted noexec and the unit's RestrictAddressFamilies=
#     enforced by a seccomp filter (packaging/restrict-families.pl): --version, startup
#     time, relay round trip (ZeroMQ in, WebSocket out, client on the host side), SIGTERM
#     -> exit 0; the clear
#     error when no directory can hold the addon; upgrade with an edited config (kept and
#     used); remove; purge (logs and user kept); in another root, purge with
#     RECODEX_PURGE_LOGS=yes (nothing left);
#  3. .rpm in another copy: a pre-existing recodex user left alone; rpm -i with scriptlets,
#     same checks, rpm -U keeps the edited config, rpm -e.
# Environment: KEEP=1 keeps the work directory; DEBOOTSTRAP_ROOT=DIR reuses (copies) an
# existing minbase root instead of running debootstrap (local iteration only).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NODE="$REPO/node_modules/.bin/node"

if [ "$(id -u)" != 0 ]; then
    echo "test-packages.sh: must run as root (debootstrap, chroot, mount)" >&2
    exit 2
fi

VERSION=$("$NODE" -p 'require(process.argv[1]).version' "$REPO/package.json")
BIN="$REPO/dist/recodex-monitor"
RPM="$REPO/dist/recodex-monitor-$VERSION-1.x86_64.rpm"
DEB="$REPO/dist/recodex-monitor_${VERSION}-1_amd64.deb"
for f in "$BIN" "$RPM" "$DEB"; do
    [ -f "$f" ] || { echo "missing $f: run npm run build && npm run package" >&2; exit 2; }
done
FAMILIES=$(sed -n 's/^RestrictAddressFamilies=//p' "$REPO/packaging/recodex-monitor.service")

T0=${RECODEX_PKGTEST_T0:-$(date +%s)}
log() { printf '[%4ss] %s\n' "$(($(date +%s) - T0))" "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "  ok: $*"; }

if [ -z "${RECODEX_PKGTEST_NS:-}" ]; then
    # --- 1. (host network) unit file, upgrade packages, base root ---------------------------
    WORK=$(mktemp -d /var/tmp/recodex-monitor-pkgtest.XXXXXX)
    UPGRADE_PID=""
    cleanup() {
        local rc=$?
        if [ -n "$UPGRADE_PID" ]; then kill "$UPGRADE_PID" 2>/dev/null || true; fi
        if [ "${KEEP:-0}" = 1 ]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
        if [ $rc -eq 0 ]; then echo "ALL PACKAGE TESTS PASSED"; else echo "PACKAGE TESTS FAILED (exit $rc)"; fi
    }
    trap cleanup EXIT

    log "systemd-analyze verify recodex-monitor.service"
    mkdir -p "$WORK/unit"
    sed "s#^ExecStart=/usr/bin/recodex-monitor #ExecStart=$BIN #" \
        "$REPO/packaging/recodex-monitor.service" > "$WORK/unit/recodex-monitor.service"
    grep -q "^ExecStart=$BIN -c /etc/recodex/monitor/config.yml$" "$WORK/unit/recodex-monitor.service" \
        || fail "unexpected ExecStart in the unit"
    out=$(systemd-analyze verify "$WORK/unit/recodex-monitor.service" 2>&1) || fail "systemd-analyze verify: $out"
    [ -z "$out" ] || fail "systemd-analyze verify printed: $out"
    if grep -q '^MemoryDenyWriteExecute' "$REPO/packaging/recodex-monitor.service"; then
        fail "MemoryDenyWriteExecute breaks V8"
    fi
    [ -n "$FAMILIES" ] || fail "the unit has no RestrictAddressFamilies="
    pass "systemd-analyze verify prints nothing"

    log "building upgrade packages (release 2) in the background"
    "$NODE" "$REPO/packaging/package.mjs" --release 2 --fast --outdir "$WORK/up" \
        > "$WORK/upgrade-build.log" 2>&1 &
    UPGRADE_PID=$!

    debian_mirror() {
        if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
        local f url
        # deb822 sources: the URIs line of a stanza that is not the security archive
        for f in /etc/apt/sources.list.d/*.sources; do
            [ -f "$f" ] || continue
            url=$(awk '/^URIs:/ {print $2}' "$f" | grep -v -- '-security' | grep '/debian/\?$' | head -n1)
            if [ -n "$url" ]; then echo "$url"; return; fi
        done
        # one-line sources
        url=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}' \
            | grep -v -- '-security' | grep '/debian/\?$' | head -n1)
        echo "${url:-http://deb.debian.org/debian}"
    }
    SUITE=${DEBIAN_SUITE:-$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")}
    if [ -n "${DEBOOTSTRAP_ROOT:-}" ] && [ -x "$DEBOOTSTRAP_ROOT/bin/sh" ]; then
        log "reusing minbase root $DEBOOTSTRAP_ROOT"
        cp -a "$DEBOOTSTRAP_ROOT" "$WORK/base"
    else
        MIRROR=$(debian_mirror)
        log "debootstrap --variant=minbase $SUITE from $MIRROR (once; copied for each test)"
        debootstrap --variant=minbase "$SUITE" "$WORK/base" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
            || { tail -n 30 "$WORK/debootstrap.log"; fail "debootstrap"; }
    fi
    [ ! -e "$WORK/base/usr/bin/node" ] || fail "base root has node"

    wait "$UPGRADE_PID" || { cat "$WORK/upgrade-build.log"; fail "building upgrade packages"; }
    UPGRADE_PID=""
    log "upgrade packages built"

    # --- the rest in a private network namespace (loopback only: the default ports cannot
    # collide with anything) and mount namespace (all mounts vanish with it)
    rc=0
    unshare --net --mount --propagation private \
        env RECODEX_PKGTEST_NS=1 RECODEX_PKGTEST_WORK="$WORK" RECODEX_PKGTEST_T0="$T0" \
        bash "${BASH_SOURCE[0]}" || rc=$?
    exit $rc
fi

ip link set lo up
WORK=$RECODEX_PKGTEST_WORK
BASE="$WORK/base"
UP_RPM="$WORK/up/recodex-monitor-$VERSION-2.x86_64.rpm"
UP_DEB="$WORK/up/recodex-monitor_${VERSION}-2_amd64.deb"
[ -f "$UP_RPM" ] && [ -f "$UP_DEB" ] || fail "upgrade packages missing"
MONITOR_PID=""
trap '[ -z "$MONITOR_PID" ] || kill -KILL "$MONITOR_PID" 2>/dev/null || true' EXIT

# --- helpers ------------------------------------------------------------------------------
new_root() { # DIR: fresh copy of the base root with proc and noexec /tmp, /dev/shm
    local r=$1
    cp -a "$BASE" "$r"
    mount -t proc proc "$r/proc"
    mount -t tmpfs -o mode=1777,nosuid,nodev,noexec tmpfs "$r/tmp"
    mount -t tmpfs -o mode=1777,nosuid,nodev,noexec tmpfs "$r/dev/shm"
}

in_root() { local r=$1; shift; chroot "$r" "$@"; }

expect_stat() { # ROOT PATH "MODE USER GROUP"
    local got
    got=$(in_root "$1" stat -c '%a %U %G' "$2" 2>&1) || fail "$2 missing: $got"
    [ "$got" = "$3" ] || fail "$2: expected '$3', got '$got'"
}

expect_absent() { [ ! -e "$1$2" ] && [ ! -L "$1$2" ] || fail "$2 should be gone"; }
expect_present() { [ -e "$1$2" ] || fail "$2 should still exist"; }

check_installed() { # ROOT UNITDIR
    local r=$1 unitdir=$2 line shell
    line=$(in_root "$r" getent passwd recodex) || fail "user recodex missing"
    in_root "$r" getent group recodex >/dev/null || fail "group recodex missing"
    shell=${line##*:}
    case "$shell" in */nologin|/bin/false) ;; *) fail "recodex has a login shell: $shell" ;; esac
    [ "$(echo "$line" | cut -d: -f3)" -lt 1000 ] || fail "recodex is not a system user: $line"
    expect_stat "$r" /usr/bin/recodex-monitor "755 root root"
    expect_stat "$r" "$unitdir/recodex-monitor.service" "644 root root"
    expect_stat "$r" /etc/recodex "755 recodex recodex"
    expect_stat "$r" /etc/recodex/monitor "750 recodex recodex"
    expect_stat "$r" /etc/recodex/monitor/config.yml "600 recodex recodex"
    expect_stat "$r" /var/log/recodex "755 recodex recodex"
    cmp -s "$r/usr/bin/recodex-monitor" "$BIN" || fail "installed binary differs from dist/recodex-monitor (stripped?)"
    cmp -s "$r$unitdir/recodex-monitor.service" "$REPO/packaging/recodex-monitor.service" || fail "unit differs"
    if in_root "$r" sh -c 'command -v node || command -v nodejs || ls /usr/lib/node_modules' >/dev/null 2>&1; then
        fail "node is present in the root"
    fi
    pass "user recodex ($line), files, modes, owners, unstripped binary, no node"
}

as_recodex() { # ROOT ENV... -- run /usr/bin/recodex-monitor ARGS as recodex with env -i
    local r=$1; shift
    chroot "$r" setpriv --reuid=recodex --regid=recodex --init-groups --inh-caps=-all \
        --no-new-privs env -i "$@"
}

wait_ports() { # TIMEOUT_S PORT... : 0 when all accept
    local deadline=$(($(date +%s%N) + $1 * 1000000000)) p; shift
    for p in "$@"; do
        until (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do
            [ "$(date +%s%N)" -lt "$deadline" ] || return 1
            [ -z "$MONITOR_PID" ] || kill -0 "$MONITOR_PID" 2>/dev/null || return 1
            sleep 0.02
        done
    done
}

make_runtime_dir() { # ROOT: what systemd's RuntimeDirectory=recodex-monitor provides
    rm -rf "$1/run/recodex-monitor"
    install -d -m 0700 "$1/run/recodex-monitor"
    in_root "$1" chown recodex:recodex /run/recodex-monitor
}

run_monitor_roundtrip() { # ROOT WS_PORT ZMQ_PORT LABEL
    local r=$1 ws=$2 zmq=$3 label=$4 start end rc uid
    make_runtime_dir "$r"
    # keep the owner, drop earlier runs' lines (the 'ready' check below is about this run)
    if [ -f "$r/var/log/recodex/monitor.log" ]; then : > "$r/var/log/recodex/monitor.log"; fi
    start=$(date +%s%N)
    # the unit's RestrictAddressFamilies= applied with a seccomp filter (as systemd does);
    # perl, chroot, setpriv and env exec each other: $! is the monitor's own PID
    perl "$REPO/packaging/restrict-families.pl" "$FAMILIES" -- \
    chroot "$r" setpriv --reuid=recodex --regid=recodex --init-groups --inh-caps=-all \
        --no-new-privs env -i RUNTIME_DIRECTORY=/run/recodex-monitor \
        /usr/bin/recodex-monitor -c /etc/recodex/monitor/config.yml \
        > "$WORK/monitor-$label.out" 2>&1 &
    MONITOR_PID=$!
    wait_ports 30 "$ws" "$zmq" || { cat "$WORK/monitor-$label.out"; fail "$label: ports $ws/$zmq not accepting"; }
    end=$(date +%s%N)
    echo "  startup ($label): $(((end - start) / 1000000)) ms from spawn until ports $ws and $zmq accept"
    uid=$(awk '/^Uid:/ {print $2}' "/proc/$MONITOR_PID/status")
    [ "$uid" = "$(in_root "$r" id -u recodex)" ] || fail "$label: monitor runs as uid $uid, not recodex"
    "$NODE" "$REPO/packaging/roundtrip.mjs" --ws-port "$ws" --zmq-port "$zmq" \
        || { cat "$WORK/monitor-$label.out"; fail "$label: relay round trip"; }
    start=$(date +%s%N)
    kill -TERM "$MONITOR_PID"
    rc=0
    timeout 10 tail --pid="$MONITOR_PID" -f /dev/null || fail "$label: no exit within 10 s of SIGTERM"
    wait "$MONITOR_PID" || rc=$?
    MONITOR_PID=""
    end=$(date +%s%N)
    [ $rc -eq 0 ] || { cat "$WORK/monitor-$label.out"; fail "$label: exit $rc after SIGTERM"; }
    pass "$label: ran as recodex (env -i, noexec /tmp and /dev/shm, RestrictAddressFamilies=$FAMILIES), round trip, SIGTERM -> exit 0 in $(((end - start) / 1000000)) ms"
    [ -z "$(ls -A "$r/run/recodex-monitor")" ] || fail "$label: addon left behind in the runtime directory"
    expect_stat "$r" /var/log/recodex/monitor.log "$(in_root "$r" stat -c '%a' /var/log/recodex/monitor.log) recodex recodex"
    grep -q ready "$r/var/log/recodex/monitor.log" || fail "$label: no 'ready' in /var/log/recodex/monitor.log"
    pass "$label: /var/log/recodex/monitor.log written by recodex, contains 'ready'"
}

check_binary() { # ROOT
    local r=$1 out rc
    make_runtime_dir "$r"
    out=$(as_recodex "$r" RUNTIME_DIRECTORY=/run/recodex-monitor /usr/bin/recodex-monitor --version 2>&1) \
        || fail "--version: $out"
    [[ "$out" == *"$VERSION"* ]] || fail "--version printed '$out'"
    pass "--version as recodex under env -i: $out"
    # nowhere to put the addon (no RUNTIME_DIRECTORY, /tmp and /dev/shm noexec, /usr/bin
    # read-only for recodex): a clear error naming what was tried, not a crash
    rc=0
    out=$(as_recodex "$r" timeout 20 /usr/bin/recodex-monitor -c /etc/recodex/monitor/config.yml 2>&1) || rc=$?
    [ $rc -ne 0 ] || fail "the monitor started although no directory allows loading the addon"
    [[ "$out" == *"Tried:"*"/dev/shm"*"/usr/bin"*"/tmp"* ]] || fail "unclear addon error: $out"
    pass "no exec-capable directory: exit $rc with: $(echo "$out" | head -n1 | cut -c1-100)..."
}

edit_config() { # ROOT: admin moves the WebSocket port to 4577 and adds a comment
    local f="$1/etc/recodex/monitor/config.yml"
    sed -i 's/^websocket_uri: \["127.0.0.1", 4567\]$/websocket_uri: ["127.0.0.1", 4577]/' "$f"
    grep -q '4577' "$f" || fail "could not edit the config (format of config.yml changed?)"
    echo "# edited by the admin" >> "$f"
    cp "$f" "$WORK/edited-config.yml"
}

# --- 2. deb -------------------------------------------------------------------------------
log "DEB: fresh minbase root, dpkg -i $(basename "$DEB")"
R="$WORK/deb-root"
new_root "$R"
cp "$DEB" "$UP_DEB" "$R/var/tmp/"
in_root "$R" dpkg -i "/var/tmp/$(basename "$DEB")" > "$WORK/dpkg-install.log" 2>&1 \
    || { cat "$WORK/dpkg-install.log"; fail "dpkg -i"; }
[ -e "$R/var/lib/recodex-monitor/created-user" ] || fail "postinst did not record creating the user"
check_installed "$R" /lib/systemd/system
cmp -s "$R/etc/recodex/monitor/config.yml" "$REPO/config.yml" || fail "config.yml differs from the repo's"
check_binary "$R"
run_monitor_roundtrip "$R" 4567 7894 deb-install

log "DEB: upgrade to ${VERSION}-2 with an edited config"
edit_config "$R"
in_root "$R" dpkg -i "/var/tmp/$(basename "$UP_DEB")" > "$WORK/dpkg-upgrade.log" 2>&1 \
    || { cat "$WORK/dpkg-upgrade.log"; fail "dpkg -i (upgrade)"; }
[ "$(in_root "$R" dpkg-query -W -f '${Version}' recodex-monitor)" = "${VERSION}-2" ] || fail "not upgraded"
cmp -s "$R/etc/recodex/monitor/config.yml" "$WORK/edited-config.yml" || fail "upgrade changed the edited config"
ls "$R/etc/recodex/monitor/" | grep -q dpkg && fail "dpkg left config.yml.dpkg-* files: $(ls "$R/etc/recodex/monitor/")"
check_installed "$R" /lib/systemd/system
run_monitor_roundtrip "$R" 4577 7894 deb-upgraded
pass "edited config survived the upgrade and is used (WebSocket on 4577)"

log "DEB: dpkg -r"
in_root "$R" dpkg -r recodex-monitor > "$WORK/dpkg-remove.log" 2>&1 || { cat "$WORK/dpkg-remove.log"; fail "dpkg -r"; }
expect_absent "$R" /usr/bin/recodex-monitor
expect_absent "$R" /lib/systemd/system/recodex-monitor.service
expect_present "$R" /etc/recodex/monitor/config.yml
expect_present "$R" /var/log/recodex/monitor.log
in_root "$R" getent passwd recodex >/dev/null || fail "remove deleted the user"
pass "remove: binary and unit gone; config, logs, user kept"

log "DEB: dpkg --purge (logs kept by default)"
in_root "$R" dpkg --purge recodex-monitor > "$WORK/dpkg-purge.log" 2>&1 || { cat "$WORK/dpkg-purge.log"; fail "dpkg --purge"; }
expect_absent "$R" /etc/recodex/monitor
expect_absent "$R" /etc/recodex
expect_absent "$R" /var/lib/recodex-monitor
expect_present "$R" /var/log/recodex/monitor.log
in_root "$R" getent passwd recodex >/dev/null || fail "purge deleted the user while its logs remain"
pass "purge: /etc/recodex and package state gone; logs and their owner recodex kept"

umount "$R/proc" "$R/tmp" "$R/dev/shm"
rm -rf "$R"

log "DEB: another fresh root: install, run, RECODEX_PURGE_LOGS=yes dpkg --purge"
R="$WORK/deb-root2"
new_root "$R"
cp "$DEB" "$R/var/tmp/"
in_root "$R" dpkg -i "/var/tmp/$(basename "$DEB")" > "$WORK/dpkg-install2.log" 2>&1 \
    || { cat "$WORK/dpkg-install2.log"; fail "dpkg -i"; }
run_monitor_roundtrip "$R" 4567 7894 deb-install2
expect_present "$R" /var/log/recodex/monitor.log
in_root "$R" env RECODEX_PURGE_LOGS=yes dpkg --purge recodex-monitor > "$WORK/dpkg-purge2.log" 2>&1 \
    || { cat "$WORK/dpkg-purge2.log"; fail "dpkg --purge (with logs)"; }
for p in /usr/bin/recodex-monitor /lib/systemd/system/recodex-monitor.service /etc/recodex \
    /var/log/recodex /var/lib/recodex-monitor; do
    expect_absent "$R" "$p"
done
! in_root "$R" getent passwd recodex >/dev/null || fail "user recodex not removed"
! in_root "$R" getent group recodex >/dev/null || fail "group recodex not removed"
[ -z "$(in_root "$R" dpkg-query -W -f '${db:Status-Status}' recodex-monitor 2>/dev/null | grep -v not-installed)" ] \
    || fail "dpkg still knows the package"
pass "purge with RECODEX_PURGE_LOGS=yes: nothing left (files, logs, log dir, user and group it created)"
umount "$R/proc" "$R/tmp" "$R/dev/shm"
rm -rf "$R"

# --- 3. rpm -------------------------------------------------------------------------------
log "RPM: fresh minbase root with an existing user recodex, rpm -i $(basename "$RPM")"
R="$WORK/rpm-root"
new_root "$R"
in_root "$R" groupadd -r -g 987 recodex
in_root "$R" useradd -r -u 987 -g recodex -d /srv/recodex -s /usr/sbin/nologin -c "pre-existing" recodex
BEFORE=$(in_root "$R" getent passwd recodex)
rpm --root "$R" --initdb
rpm --root "$R" -i --nodeps "$RPM" > "$WORK/rpm-install.log" 2>&1 || { cat "$WORK/rpm-install.log"; fail "rpm -i"; }
if grep -qiE 'warning|error' "$WORK/rpm-install.log"; then cat "$WORK/rpm-install.log"; fail "rpm -i printed warnings"; fi
[ "$(in_root "$R" getent passwd recodex)" = "$BEFORE" ] || fail "rpm changed the existing user"
pass "existing user recodex left alone: $BEFORE"
check_installed "$R" /usr/lib/systemd/system
cmp -s "$R/etc/recodex/monitor/config.yml" "$REPO/config.yml" || fail "config.yml differs from the repo's"
[ "$(rpm --root "$R" -q --qf '%{ARCH}' recodex-monitor)" = x86_64 ] || fail "rpm arch"
check_binary "$R"
run_monitor_roundtrip "$R" 4567 7894 rpm-install

log "RPM: rpm -U to ${VERSION}-2 with an edited config"
edit_config "$R"
rpm --root "$R" -U --nodeps "$UP_RPM" > "$WORK/rpm-upgrade.log" 2>&1 || { cat "$WORK/rpm-upgrade.log"; fail "rpm -U"; }
[ "$(rpm --root "$R" -q --qf '%{VERSION}-%{RELEASE}' recodex-monitor)" = "${VERSION}-2" ] || fail "not upgraded"
cmp -s "$R/etc/recodex/monitor/config.yml" "$WORK/edited-config.yml" || fail "upgrade changed the edited config"
ls "$R/etc/recodex/monitor/" | grep -qE 'rpmnew|rpmsave' && fail "rpm left .rpmnew/.rpmsave: $(ls "$R/etc/recodex/monitor/")"
check_installed "$R" /usr/lib/systemd/system
run_monitor_roundtrip "$R" 4577 7894 rpm-upgraded
pass "edited config survived the upgrade and is used (WebSocket on 4577)"

log "RPM: rpm -e"
rpm --root "$R" -e recodex-monitor > "$WORK/rpm-erase.log" 2>&1 || { cat "$WORK/rpm-erase.log"; fail "rpm -e"; }
expect_absent "$R" /usr/bin/recodex-monitor
expect_absent "$R" /usr/lib/systemd/system/recodex-monitor.service
expect_absent "$R" /etc/recodex/monitor/config.yml
expect_present "$R" /etc/recodex/monitor/config.yml.rpmsave
expect_present "$R" /var/log/recodex/monitor.log
[ "$(in_root "$R" getent passwd recodex)" = "$BEFORE" ] || fail "rpm -e touched the user"
pass "erase: binary and unit gone; edited config saved as config.yml.rpmsave; logs and user kept"
umount "$R/proc" "$R/tmp" "$R/dev/shm"
rm -rf "$R"

log "done"
