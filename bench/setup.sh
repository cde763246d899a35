#!/bin/sh
# Installs what the fan-out benchmark needs and builds the load client.
# Idempotent: each step is skipped when its result is already there.
#   - nginx + nchan from Debian (the system service is never started: the
#     benchmark runs nginx with its own config and prefix on a loopback port)
#   - Node's `ws` package into bench/.work/node_modules
#   - bench/.work/loadclient, built from bench/loadclient.c
# Python peers (websockets) and the Kafka producer use the project virtualenv
# (`make venv`), which the Makefile's bench rule builds first.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
WORK="$HERE/.work"
mkdir -p "$WORK"

if ! dpkg -s nginx libnginx-mod-nchan >/dev/null 2>&1; then
    # Keep apt from starting the system nginx: a policy-rc.d that refuses
    # service starts, only while we install, only if none exists.
    made_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx libnginx-mod-nchan
    [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
fi

if [ ! -f "$WORK/node_modules/ws/package.json" ]; then
    command -v npm >/dev/null || {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm; }
    [ -f "$WORK/package.json" ] || printf '{"private": true}\n' > "$WORK/package.json"
    (cd "$WORK" && npm install --no-audit --no-fund --silent ws@8)
fi

if [ ! -x "$WORK/loadclient" ] || [ "$HERE/loadclient.c" -nt "$WORK/loadclient" ]; then
    gcc -O2 -Wall -Wextra -o "$WORK/loadclient" "$HERE/loadclient.c" -lm
fi
echo "bench setup: ok"
