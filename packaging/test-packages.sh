#!/bin/bash
# Tests of the release artefacts: the executables and the four packages.
#
#   npm ci && npm run build && npm run package && bash packaging/test-packages.sh
#
# Needs root and (apt-get install -y ...) rpm debootstrap systemd systemd-container
# qemu-user-static lintian rpmlint binutils iproute2, and the Debian archive through the
# mirror of /etc/apt/sources.list* (override: DEBIAN_MIRROR=URL). Linux >= 6.7 for the
# arm64 part (a binfmt_misc instance of its own, see test-arm64.sh).
#
#  1. static: systemd-analyze verify of the unit (and its man: link) prints nothing, the
#     man page renders without a warning, lintian (both .debs) and rpmlint (both .rpms,
#     with packaging/rpmlint.toml) report no error and no warning; architectures, sizes.
#     Meanwhile, on the host's network, debootstrap makes four pristine roots (bookworm
#     with systemd and rpm; bullseye and trixie with systemd; bookworm arm64, foreign)
#     and package.mjs the "upgrade" packages (release 2).
#  2. under a live systemd: a throw-away copy of the bookworm root is booted with
#     systemd-nspawn (systemd as PID 1, loopback-only network) for the .deb, another for
#     the .rpm, and packaging/live-systemd.mjs runs the install / service / upgrade /
#     removal checks in there;
#  3. the .deb on the oldest and the newest Debian the mirror serves (bullseye, glibc
#     2.31; trixie): booted the same way, installed, running, self-test, stop;
#  4. aarch64 (in the background during 2 and 3): packaging/test-arm64.sh.
# Environment: KEEP=1 keeps the work directory; PKGTEST_ROOTS=DIR keeps the pristine
# roots in DIR and reuses them next time (local iteration: CI starts from nothing).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
# shellcheck source=packaging/test-lib.sh
. "$HERE/test-lib.sh"
NODE="$REPO/node_modules/.bin/node"

[ "$(id -u)" = 0 ] || { echo "test-packages.sh: must run as root (debootstrap, systemd-nspawn)" >&2; exit 2; }
VERSION=$("$NODE" -p 'require(process.argv[1]).version' "$REPO/package.json")
BIN_X64="$REPO/dist/recodex-monitor"
BIN_ARM64="$REPO/dist/arm64/recodex-monitor"
RPM_X64="$REPO/dist/recodex-monitor-$VERSION-1.x86_64.rpm"
RPM_ARM64="$REPO/dist/recodex-monitor-$VERSION-1.aarch64.rpm"
DEB_X64="$REPO/dist/recodex-monitor_${VERSION}-1_amd64.deb"
DEB_ARM64="$REPO/dist/recodex-monitor_${VERSION}-1_arm64.deb"
for f in "$BIN_X64" "$BIN_ARM64" "$RPM_X64" "$RPM_ARM64" "$DEB_X64" "$DEB_ARM64"; do
    [ -f "$f" ] || { echo "missing $f: run npm run build && npm run package" >&2; exit 2; }
done

WORK=$(mktemp -d /var/tmp/recodex-monitor-pkgtest.XXXXXX)
BACKGROUND=() # pids of what this script started in the background
NSPAWN="" LEADER=""
cleanup() {
    local rc=$? p
    if [ -n "$NSPAWN" ]; then kill -TERM "$NSPAWN" 2>/dev/null || true; fi
    for p in "${BACKGROUND[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
    if [ $rc -eq 0 ]; then log "ALL PACKAGE TESTS PASSED"; else log "PACKAGE TESTS FAILED (exit $rc)"; fi
}
trap cleanup EXIT

# --- pristine roots and upgrade packages, in the background ---------------------------
MIRROR=$(debian_mirror)
make_root() { # NAME -- DEBOOTSTRAP ARGS...: $WORK/roots/NAME
    local name=$1 dest="$WORK/roots/$1"
    shift 2
    if [ -n "${PKGTEST_ROOTS:-}" ] && [ -d "$PKGTEST_ROOTS/$name" ]; then
        cp -a "$PKGTEST_ROOTS/$name" "$dest"
        return
    fi
    debootstrap "$@" "$dest" "$MIRROR" > "$WORK/debootstrap-$name.log" 2>&1 \
        || { tail -n 20 "$WORK/debootstrap-$name.log"; return 1; }
    if [ -e "$dest/usr/lib/systemd/systemd" ] && [ ! -d "$dest/debootstrap" ]; then
        # boots as a fresh machine, without timers that would run apt or fstrim meanwhile
        : > "$dest/etc/machine-id"
        chroot "$dest" systemctl mask apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
            e2scrub_all.timer e2scrub_reap.service fstrim.timer >/dev/null 2>&1
    fi
    if [ -n "${PKGTEST_ROOTS:-}" ]; then mkdir -p "$PKGTEST_ROOTS" && cp -a "$dest" "$PKGTEST_ROOTS/$name"; fi
}
mkdir -p "$WORK/roots"
BOOT_PKGS=systemd,systemd-sysv,dbus,procps
log "debootstrap from $MIRROR in the background: bookworm, bullseye, trixie (amd64), bookworm (arm64)"
make_root bookworm -- --variant=minbase --include=$BOOT_PKGS,rpm bookworm & BACKGROUND+=($!); ROOT_BOOKWORM=$!
make_root bullseye -- --variant=minbase --include=$BOOT_PKGS bullseye & BACKGROUND+=($!); ROOT_BULLSEYE=$!
make_root trixie -- --variant=minbase --include=$BOOT_PKGS trixie & BACKGROUND+=($!); ROOT_TRIXIE=$!
make_root arm64 -- --foreign --arch=arm64 --variant=minbase --include=procps bookworm & BACKGROUND+=($!); ROOT_ARM64=$!
"$NODE" "$HERE/package.mjs" --arch x64 --release 2 --fast --outdir "$WORK/up" > "$WORK/upgrade-build.log" 2>&1 &
BACKGROUND+=($!); UPGRADE_BUILD=$!

# --- 1. static checks --------------------------------------------------------------------
log "systemd-analyze verify recodex-monitor.service"
mkdir -p "$WORK/unit" "$WORK/deb-x64"
dpkg-deb -x "$DEB_X64" "$WORK/deb-x64"
sed "s#^ExecStart=/usr/bin/recodex-monitor #ExecStart=$BIN_X64 #" "$HERE/recodex-monitor.service" > "$WORK/unit/recodex-monitor.service"
grep -q "^ExecStart=$BIN_X64 -c /etc/recodex/monitor/config.yml$" "$WORK/unit/recodex-monitor.service" || fail "unexpected ExecStart in the unit"
# the unit's Documentation=man:recodex-monitor(1) is checked against the packaged page
out=$(MANPATH="$WORK/deb-x64/usr/share/man" systemd-analyze verify "$WORK/unit/recodex-monitor.service" 2>&1) || fail "systemd-analyze verify: $out"
[ -z "$out" ] || fail "systemd-analyze verify printed: $out"
! grep -q '^MemoryDenyWriteExecute' "$HERE/recodex-monitor.service" || fail "MemoryDenyWriteExecute breaks V8"
pass "systemd-analyze verify prints nothing (man page found)"

out=$(MANROFFSEQ='' MANWIDTH=80 man --warnings -l "$WORK/deb-x64/usr/share/man/man1/recodex-monitor.1.gz" 2>&1 >"$WORK/man.txt") || fail "man: $out"
[ -z "$out" ] || fail "the man page has groff warnings: $out"
for section in SYNOPSIS OPTIONS COMMANDS CONFIGURATION SIGNALS "EXIT STATUS" ENVIRONMENT FILES; do
    grep -q "^$section" "$WORK/man.txt" || fail "man page without $section"
done
grep -q "retention.idle_ttl" "$WORK/man.txt" || fail "the man page lacks the configuration keys"
pass "man recodex-monitor: $(wc -l < "$WORK/man.txt") lines, no groff warning, config keys and exit codes from README.md"

log "lintian, rpmlint"
for deb in "$DEB_X64" "$DEB_ARM64"; do
    out=$(lintian --pedantic --display-info --fail-on none "$deb" 2>&1 | grep -v '^running with root privileges' || true)
    echo "$out" | sed 's/^/    /'
    ! echo "$out" | grep -qE '^[EW]:' || fail "lintian $(basename "$deb"): errors or warnings"
    pass "lintian --pedantic --display-info $(basename "$deb"): no error, no warning ($(echo "$out" | grep -cE '^[IPX]:' || true) info/pedantic tags)"
done
for rpm in "$RPM_X64" "$RPM_ARM64"; do
    out=$(rpmlint -c "$HERE/rpmlint.toml" "$rpm" 2>&1) || true
    summary=$(echo "$out" | grep 'packages and')
    echo "$out" | grep -E '^recodex-monitor' | sed 's/^/    /' || true
    echo "$summary" | grep -q ' 0 errors, 0 warnings' || fail "rpmlint $(basename "$rpm"): $summary"
    pass "rpmlint $(basename "$rpm"):$(echo "$summary" | sed 's/.*checked;\([^;]*\);.*/\1/')"
done

[ "$(rpm -qp --qf '%{ARCH}' "$RPM_X64")" = x86_64 ] && [ "$(rpm -qp --qf '%{ARCH}' "$RPM_ARM64")" = aarch64 ] || fail "rpm architectures"
[ "$(dpkg-deb -f "$DEB_X64" Architecture)" = amd64 ] && [ "$(dpkg-deb -f "$DEB_ARM64" Architecture)" = arm64 ] || fail "deb architectures"
readelf -h "$BIN_X64" | grep -q 'Machine:.*X86-64' && readelf -h "$BIN_ARM64" | grep -q 'Machine:.*AArch64' || fail "executable architectures"
for f in "$RPM_X64" "$DEB_X64" "$RPM_ARM64" "$DEB_ARM64"; do
    echo "  $(basename "$f"): $(stat -c %s "$f") bytes ($(($(stat -c %s "$f") / 1000000)) MB)"
done
echo "  deb Depends: $(dpkg-deb -f "$DEB_X64" Depends) (amd64); $(dpkg-deb -f "$DEB_ARM64" Depends) (arm64)"
pass "architectures: x86_64/amd64 and aarch64/arm64"

wait "$UPGRADE_BUILD" || { cat "$WORK/upgrade-build.log"; fail "building the upgrade packages"; }
UP_RPM="$WORK/up/recodex-monitor-$VERSION-2.x86_64.rpm"
UP_DEB="$WORK/up/recodex-monitor_${VERSION}-2_amd64.deb"

# --- 2.-4. booted roots ------------------------------------------------------------------
boot() { # ROOT NAME: boots a copy of ROOT; sets NSPAWN (its pid) and LEADER (systemd)
    local copy="$WORK/boot-$2" state deadline
    rm -rf "$copy"
    cp -a "$1" "$copy"
    systemd-nspawn -D "$copy" -M "$2" --register=no --keep-unit --private-network --console=pipe -b \
        > "$WORK/console-$2.log" 2>&1 < /dev/null &
    NSPAWN=$!
    deadline=$(($(date +%s) + 60))
    state=""
    while :; do
        [ "$(date +%s)" -lt "$deadline" ] || { cat "$WORK/console-$2.log"; fail "$2: systemd did not come up ($state)"; }
        kill -0 "$NSPAWN" 2>/dev/null || { cat "$WORK/console-$2.log"; fail "$2: systemd-nspawn exited"; }
        # the container's PID 1: the child of systemd-nspawn that runs systemd (nspawn has
        # short-lived helper children of its own while it sets the container up)
        LEADER=""
        for c in $(pgrep -P "$NSPAWN" || true); do
            [ "$(cat "/proc/$c/comm" 2>/dev/null)" = systemd ] && LEADER=$c
        done
        if [ -n "$LEADER" ]; then
            # --wait: returns once start-up has finished (no answer before the bus is up)
            state=$(nsenter -t "$LEADER" -a systemctl is-system-running --wait 2>/dev/null || true)
            case "$state" in running | degraded | maintenance) break ;; esac
        fi
        sleep 0.1
    done
    if [ "$state" != running ]; then
        nsenter -t "$LEADER" -a systemctl --failed --no-pager || true
        fail "$2: the booted system is $state"
    fi
    pass "$2 booted: PID 1 is $(nsenter -t "$LEADER" -a readlink /proc/1/exe) ($(nsenter -t "$LEADER" -a systemctl --version | head -n1)), system running"
    BOOTED="$copy"
}

poweroff() {
    nsenter -t "$LEADER" -a systemctl poweroff >/dev/null 2>&1 || true
    timeout 30 tail --pid="$NSPAWN" -f /dev/null || kill -KILL "$NSPAWN" 2>/dev/null || true
    wait "$NSPAWN" 2>/dev/null || true
    NSPAWN=""
    rm -rf "$BOOTED"
}

live() { # ROOT NAME FORMAT PACKAGE BINARY [UPGRADE]
    boot "$1" "$2"
    cp "$4" "$BOOTED/var/tmp/"
    local up=()
    if [ -n "${6:-}" ]; then cp "$6" "$BOOTED/var/tmp/"; up=(--upgrade "$6"); fi
    nsenter --net="/proc/$LEADER/ns/net" "$NODE" "$HERE/live-systemd.mjs" --leader "$LEADER" --root "$BOOTED" \
        --format "$3" --package "$4" --binary "$5" "${up[@]}" || fail "$2: live-systemd.mjs"
    poweroff
}

wait "$ROOT_ARM64" || fail "debootstrap arm64"
log "aarch64 in the background: packaging/test-arm64.sh (log: $WORK/arm64.log)"
bash "$HERE/test-arm64.sh" "$WORK/roots/arm64" "$DEB_ARM64" "$BIN_ARM64" "$WORK" > "$WORK/arm64.log" 2>&1 &
BACKGROUND+=($!); ARM64_TEST=$!

wait "$ROOT_BOOKWORM" || fail "debootstrap bookworm"
log "DEB under a live systemd (bookworm)"
live "$WORK/roots/bookworm" rmon-deb deb "$DEB_X64" "$BIN_X64" "$UP_DEB"
log "RPM under a live systemd (bookworm with rpm)"
live "$WORK/roots/bookworm" rmon-rpm rpm "$RPM_X64" "$BIN_X64" "$UP_RPM"

wait "$ROOT_BULLSEYE" || fail "debootstrap bullseye"
log "DEB on bullseye (the oldest Debian the mirror serves)"
live "$WORK/roots/bullseye" rmon-bullseye smoke "$DEB_X64" "$BIN_X64"
wait "$ROOT_TRIXIE" || fail "debootstrap trixie"
log "DEB on trixie (the newest)"
live "$WORK/roots/trixie" rmon-trixie smoke "$DEB_X64" "$BIN_X64"

log "waiting for the aarch64 tests"
rc=0
wait "$ARM64_TEST" || rc=$?
cat "$WORK/arm64.log"
[ $rc -eq 0 ] || fail "aarch64 tests (exit $rc)"
log "done"
