#!/usr/bin/env bash
# The Debian package from build to purge (make test-deb; CI runs it as root):
# build with dh-virtualenv, lintian without errors, install, check what was
# installed, run the installed odinws end to end (tests/deb/e2e.py), remove,
# purge, and check that nothing is left. Cleans up after itself on failure.
# Ends with "N passed, N failed".
set -uo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
venv_py=${VENV_PY:-$repo/.venv/bin/python}
export DEBIAN_FRONTEND=noninteractive
VENV=/opt/venvs/odinws
passed=0
failed=0
installed=0
work=""
user_existed=1

pass() { passed=$((passed + 1)); echo "ok: $1"; }
fail() { failed=$((failed + 1)); echo "not ok: $1"; }
# check NAME COMMAND...: one check, its output shown only when it fails.
check() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then pass "$name"; else fail "$name"; printf '%s\n' "$out" | tail -n 30; fi
}
finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
}
cleanup() {
    if [ "$installed" = 1 ]; then
        apt-get purge -y -qq odinws >/dev/null 2>&1 || true
    fi
    # Purge keeps the package's system user; the test made it, so it goes.
    if [ "$user_existed" = 0 ]; then
        deluser --quiet --system odinws >/dev/null 2>&1 || true
        delgroup --quiet --system --only-if-empty odinws >/dev/null 2>&1 || true
    fi
    if [ -n "$work" ]; then rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'fail "interrupted"; finish; exit 130' INT TERM

if [ "$(id -u)" != 0 ]; then
    fail "runs as root (it installs and purges a package)"
    finish; exit 1
fi
if dpkg-query -W -f '${Status}' odinws 2>/dev/null | grep -q 'installed\|config-files'; then
    fail "odinws is not installed already (purge it first: apt-get purge odinws)"
    finish; exit 1
fi
if [ ! -x "$venv_py" ]; then
    fail "the repo's virtualenv exists ($venv_py; make venv)"
    finish; exit 1
fi
# The package leaves its system user behind on purge; the test removes it
# at the end (cleanup) only if it made it.
if ! getent passwd odinws >/dev/null; then user_existed=0; fi
work=$(mktemp -d "${TMPDIR:-/tmp}/odinws-test-deb.XXXXXX")
# /opt/venvs may hold other dh-virtualenv packages; it must go only if ours made it.
own_opt_venvs=/opt/venvs
if [ -d /opt/venvs ]; then own_opt_venvs=""; fi

# --- build --------------------------------------------------------------
build_deps=(dh-virtualenv debhelper build-essential python3 python3-venv python3-dev lintian)
if ! apt-get install -y -qq --no-install-recommends "${build_deps[@]}" >"$work/apt.log" 2>&1; then
    apt-get update -qq >>"$work/apt.log" 2>&1
    apt-get install -y -qq --no-install-recommends "${build_deps[@]}" >>"$work/apt.log" 2>&1
fi
installed_all() {
    local p
    for p in "$@"; do
        dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'ok installed$' || { echo "$p"; return 1; }
    done
}
check "build dependencies installed" installed_all "${build_deps[@]}"

if "$repo/packaging/build-deb.sh" "$work/out" >"$work/build.log" 2>&1; then
    pass "package builds (dpkg-buildpackage with dh-virtualenv)"
else
    fail "package builds (dpkg-buildpackage with dh-virtualenv)"
    tail -n 40 "$work/build.log"
    finish; exit 1
fi
deb=$(ls "$work"/out/odinws_*.deb)
changes=$(ls "$work"/out/odinws_*.changes)

# One lintian run (it takes minutes), read twice.
lintian --allow-root --fail-on error --display-info "$changes" >"$work/lintian.txt" 2>&1
lintian_status=$?
check "lintian reports no errors" \
    sh -c "if grep '^E: ' '$work/lintian.txt' || [ $lintian_status != 0 ]; then tail -n 5 '$work/lintian.txt'; exit 1; fi"
# An override whose file pattern matches nothing is stale (lintian says
# unused-override or mismatched-override): each one must still silence a tag.
check "every lintian override matches a file of the package" \
    sh -c "! grep -E ': (unused-override|mismatched-override) ' '$work/lintian.txt'"

# --- install ------------------------------------------------------------
installed=1
check "apt-get installs the package" apt-get install -y -qq "$deb"
check "twistd, wrapper, unit, config and defaults are installed" \
    test -x $VENV/bin/twistd -a -x /usr/bin/odinws -a -f /lib/systemd/system/odinws.service \
         -a -f /etc/odinws/odinws.yaml -a -f /etc/default/odinws
check "the config file is a conffile" grep -qx /etc/odinws/odinws.yaml /var/lib/dpkg/info/odinws.conffiles
check "system user and group odinws exist" \
    sh -c 'getent passwd odinws | grep -q ":/usr/sbin/nologin$" && getent group odinws >/dev/null'
check "the config is readable by group odinws only (root:odinws 0640)" \
    sh -c '[ "$(stat -c %U:%G:%a /etc/odinws/odinws.yaml)" = root:odinws:640 ]'
check "/etc/default/odinws (it may hold secrets) is root:odinws 0640 too" \
    sh -c '[ "$(stat -c %U:%G:%a /etc/default/odinws)" = root:odinws:640 ]'
check "postinst built Twisted's plugin cache" \
    sh -c "ls $VENV/lib/python3*/site-packages/twisted/plugins/dropin.cache"
check "the venv runs Debian's interpreter" \
    sh -c "readlink -f $VENV/bin/python | grep -qx '/usr/bin/python3\.[0-9]*'"
check "the venv holds exactly the pins of requirements.lock" \
    "$VENV/bin/python" "$repo/tests/deb/check_pins.py" "$repo/requirements.lock"
check "the installed unit waits for READY=1 and watches the parent (Type=notify, WatchdogSec)" \
    sh -c 'grep -qx "Type=notify" /lib/systemd/system/odinws.service && grep -qx "WatchdogSec=[1-9][0-9]*" /lib/systemd/system/odinws.service'
check "systemd-analyze verify accepts the installed unit" \
    sh -c 'out=$(systemd-analyze verify /lib/systemd/system/odinws.service 2>&1); echo "$out"; [ -z "$out" ]'
check "the daemon's package ships no Python client (odinws_client: a distribution of its own)" \
    sh -c "! ls -d $VENV/lib/python3*/site-packages/odinws_client* 2>/dev/null"
check "the daemon's package ships no tools (odinws_tools, odinws-simulate, odinws-loadtest)" \
    sh -c "! ls -d $VENV/lib/python3*/site-packages/odinws_tools 2>/dev/null && [ ! -e $VENV/bin/odinws-simulate ] && [ ! -e $VENV/bin/odinws-loadtest ] && [ ! -e /usr/bin/odinws-simulate ]"
check "the fan-out's C send loop is built and loads (outbound.native: on would start)" \
    "$VENV/bin/python" -c "from odin_ws.shard.delivery import nativesend; assert nativesend.select('on').state == 'native'"
touch "$work/mark"
check "the odinws user finds the odinws plugin (odinws --help)" \
    setpriv --reuid=odinws --regid=odinws --init-groups -- /usr/bin/odinws --help
check "running it writes nothing into the venv (hash-checked byte code, cache present)" \
    sh -c "/usr/bin/odinws --help >/dev/null && [ -z \"\$(find $VENV -newer $work/mark)\" ]"

# --- run ----------------------------------------------------------------
"$venv_py" "$repo/tests/deb/e2e.py" >"$work/e2e.log" 2>&1
e2e_status=$?
cat "$work/e2e.log"
passed=$((passed + $(grep -c '^ok: ' "$work/e2e.log")))
failed=$((failed + $(grep -c '^not ok: ' "$work/e2e.log")))
if [ "$e2e_status" != 0 ] && ! grep -q '^not ok: ' "$work/e2e.log"; then
    fail "end-to-end run (exit status $e2e_status)"
fi

# --- upgrade --------------------------------------------------------------
# The same package under a higher version whose default config also changed,
# over a locally edited config: dpkg must keep the admin's file (confold) and
# put the new default beside it; the maintainer scripts' upgrade paths must
# keep the user, the statoverride and a fresh plugin cache.
repack_upgrade() {
    local tree=$work/upgrade sum
    rm -rf "$tree"
    dpkg-deb -R "$deb" "$tree" || return 1
    sed -i 's/^Version: .*/&+upgradetest1/' "$tree/DEBIAN/control" || return 1
    echo "# changed in the upgrade test package" >>"$tree/etc/odinws/odinws.yaml" || return 1
    sum=$(cd "$tree" && md5sum etc/odinws/odinws.yaml) || return 1
    sed -i "s#^[0-9a-f]*  etc/odinws/odinws.yaml\$#$sum#" "$tree/DEBIAN/md5sums" || return 1
    dpkg-deb --root-owner-group -Zgzip -z1 -b "$tree" "$work/out/odinws-upgrade.deb" >/dev/null \
        || return 1
    rm -rf "$tree"
}
echo "# local change" >>/etc/odinws/odinws.yaml
check "an upgrade package can be made (repacked, higher version)" repack_upgrade
check "apt-get upgrades to it (keeping the changed config)" \
    apt-get install -y -qq -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "$work/out/odinws-upgrade.deb"
check "the new version is installed" \
    sh -c 'dpkg-query -W -f "\${Version}" odinws | grep -q "+upgradetest1$"'
check "the admin's config is kept and the new default put beside it" \
    sh -c 'grep -qx "# local change" /etc/odinws/odinws.yaml && test -f /etc/odinws/odinws.yaml.dpkg-dist'
check "the config keeps root:odinws 0640 and the user stays" \
    sh -c '[ "$(stat -c %U:%G:%a /etc/odinws/odinws.yaml)" = root:odinws:640 ] && getent passwd odinws >/dev/null'
check "the upgraded odinws runs as its user (plugin cache rebuilt)" \
    sh -c "ls $VENV/lib/python3*/site-packages/twisted/plugins/dropin.cache >/dev/null &&
           setpriv --reuid=odinws --regid=odinws --init-groups -- /usr/bin/odinws --help >/dev/null"

# --- remove and purge ---------------------------------------------------
dpkg -L odinws | sort >"$work/files"
check "apt-get remove removes the package" apt-get remove -y -qq odinws
check "remove leaves no venv behind" test ! -e $VENV
check "remove keeps the config and the user" \
    sh -c 'test -f /etc/odinws/odinws.yaml && getent passwd odinws >/dev/null'
check "apt-get purge purges the package" apt-get purge -y -qq odinws
installed=0
check "dpkg no longer knows odinws" sh -c '! dpkg-query -W odinws 2>/dev/null'
leftover() {
    # Every file and link the package had, and the directories that were its own.
    local f
    while IFS= read -r f; do
        if [ -e "$f" ] || [ -L "$f" ]; then
            if [ ! -d "$f" ]; then echo "left: $f"; fi
        fi
    done <"$work/files"
    for f in /opt/venvs/odinws $own_opt_venvs /etc/odinws /var/log/odinws /usr/share/doc/odinws \
             /etc/systemd/system/multi-user.target.wants/odinws.service \
             /var/lib/systemd/deb-systemd-helper-enabled/odinws.service.dsh-also; do
        if [ -e "$f" ]; then echo "left: $f"; fi
    done
}
left=$(leftover)
if [ -z "$left" ]; then pass "purge leaves none of the package's files"
else fail "purge leaves none of the package's files"; echo "$left"; fi
check "purge keeps the odinws system user and group (Debian practice)" \
    sh -c 'getent passwd odinws | grep -q ":/usr/sbin/nologin$" && getent group odinws >/dev/null'
check "purge removes the config's stat overrides" \
    sh -c '! dpkg-statoverride --list /etc/odinws/odinws.yaml && ! dpkg-statoverride --list /etc/default/odinws'

finish
