# Shell helpers of the package tests (sourced by test-packages.sh and test-arm64.sh).

T0=${RECODEX_PKGTEST_T0:-$(date +%s)}
export RECODEX_PKGTEST_T0=$T0
log() { printf '[%4ss] %s\n' "$(($(date +%s) - T0))" "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "  ok: $*"; }

# The Debian mirror this machine's apt uses (DEBIAN_MIRROR overrides it).
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

# wait_ports TIMEOUT_S PID PORT...: 0 once every port accepts on 127.0.0.1, 1 when the
# time is up or process PID has ended
wait_ports() {
    local deadline=$(($(date +%s%N) + $1 * 1000000000)) pid=$2 p
    shift 2
    for p in "$@"; do
        until (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do
            [ "$(date +%s%N)" -lt "$deadline" ] || return 1
            kill -0 "$pid" 2>/dev/null || return 1
            sleep 0.05
        done
    done
}
