#!/bin/sh
# Installs what the fan-out benchmark needs and builds the load client.
# Idempotent: each step is skipped when its result is already there.
#   - nginx + nchan from Debian (the system service is never started: the
#     benchmark runs nginx with its own config and prefix on a loopback port)
#   - Node's `ws` package into bench/.work/node_modules
#   - bench/.work/loadclient, built from bench/loadclient.c
#   - Centrifugo at the version pinned in bench/servers.py (CENTRIFUGO_VERSION),
#     built with `go install` through the Go module proxy into
#     bench/.work/centrifugo-v<version>/ (skipped when that binary exists)
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

# callgrind counts the fan-out loop's instructions per frame (bench/fanout_loop.py).
command -v valgrind >/dev/null || {
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q valgrind; }

if [ ! -f "$WORK/node_modules/ws/package.json" ]; then
    command -v npm >/dev/null || {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm; }
    [ -f "$WORK/package.json" ] || printf '{"private": true}\n' > "$WORK/package.json"
    (cd "$WORK" && npm install --no-audit --no-fund --silent ws@8)
fi

# zlib: the load client inflates permessage-deflate messages (-Z, bench/bandwidth.py).
[ -f /usr/include/zlib.h ] || {
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q zlib1g-dev; }

WSFRAME="$HERE/../odinws_tools/loadtest/wsframe.h"
if [ ! -x "$WORK/loadclient" ] || [ "$HERE/loadclient.c" -nt "$WORK/loadclient" ] \
        || [ "$WSFRAME" -nt "$WORK/loadclient" ]; then
    gcc -O2 -Wall -Wextra -o "$WORK/loadclient" "$HERE/loadclient.c" -lm -lz
fi
CENTRIFUGO_VERSION=$(sed -n 's/^CENTRIFUGO_VERSION = "\(.*\)"$/\1/p' "$HERE/servers.py")
CENTRIFUGO_DIR="$WORK/centrifugo-v$CENTRIFUGO_VERSION"
if [ -z "$CENTRIFUGO_VERSION" ]; then
    echo "bench setup: no CENTRIFUGO_VERSION in bench/servers.py" >&2; exit 1
fi
if [ ! -x "$CENTRIFUGO_DIR/centrifugo" ]; then
    command -v go >/dev/null || { echo "bench setup: Centrifugo needs Go (go install)" >&2; exit 1; }
    # The version variable is what release builds set (centrifugo version).
    GOBIN="$CENTRIFUGO_DIR" go install \
        -ldflags "-s -w -X github.com/centrifugal/centrifugo/v6/internal/build.Version=$CENTRIFUGO_VERSION" \
        "github.com/centrifugal/centrifugo/v6@v$CENTRIFUGO_VERSION"
fi
echo "bench setup: ok"
