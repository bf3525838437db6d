#!/usr/bin/env bash
# Idempotent installer of the benchmark peers (Debian 12, run as root).
#   - Debian packages: iperf3 socat haproxy nginx libnginx-mod-stream wrk
#   - the original Node.js l7mp (npm @l7mp/l7mp@0.5.7) into
#     ${L7MP_CACHE:-$HOME/.cache/l7mp}/node-l7mp
# Services the packages start (nginx, haproxy) are stopped and disabled: the
# benchmark starts its own instances on 127.0.0.1:15000-15999.
set -euo pipefail

L7MP_CACHE="${L7MP_CACHE:-$HOME/.cache/l7mp}"
NODE_DIR="$L7MP_CACHE/node-l7mp"
NODE_L7MP_VERSION="0.5.7"
PKGS=(iperf3 socat haproxy nginx libnginx-mod-stream wrk)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "setup.sh: must run as root (or with sudo available)" >&2; exit 1; fi
fi

have_all_pkgs() {
    local p
    for p in "${PKGS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || return 1
    done
}

stop_service() {
    local svc="$1"
    if command -v systemctl >/dev/null 2>&1; then
        if [ -d /run/systemd/system ]; then
            $SUDO systemctl stop "$svc" >/dev/null 2>&1 || true
        fi
        # disable works offline too (it only removes the wants/ symlinks)
        $SUDO systemctl disable "$svc" >/dev/null 2>&1 || true
    fi
    if command -v service >/dev/null 2>&1; then
        $SUDO service "$svc" stop >/dev/null 2>&1 || true
    fi
    # No init system (containers): the postinst may still have started the
    # daemon via invoke-rc.d; stop it through its pid file, by PID only.
    local pidfile
    for pidfile in "/run/$svc.pid" "/var/run/$svc.pid" "/run/$svc/$svc.pid"; do
        if [ -s "$pidfile" ]; then
            local pid
            pid="$(head -n1 "$pidfile" | tr -dc '0-9')"
            if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
                $SUDO kill "$pid" 2>/dev/null || true
            fi
        fi
    done
}

if have_all_pkgs; then
    echo "setup.sh: Debian packages already installed: ${PKGS[*]}"
else
    export DEBIAN_FRONTEND=noninteractive
    # Keep package postinst scripts from starting daemons where policy-rc.d is honoured.
    POLICY=/usr/sbin/policy-rc.d
    CREATED_POLICY=0
    if [ ! -e "$POLICY" ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
        $SUDO chmod +x "$POLICY"
        CREATED_POLICY=1
    fi
    trap '[ "$CREATED_POLICY" = 1 ] && $SUDO rm -f "$POLICY"' EXIT
    $SUDO apt-get update
    $SUDO apt-get install -y "${PKGS[@]}"
    if [ "$CREATED_POLICY" = 1 ]; then $SUDO rm -f "$POLICY"; CREATED_POLICY=0; fi
fi
# Whether or not we installed them now: make sure no system instance runs.
stop_service nginx
stop_service haproxy

# The original l7mp from npm.
if [ -f "$NODE_DIR/node_modules/@l7mp/l7mp/l7mp-proxy.js" ] && \
   grep -q "\"version\": *\"$NODE_L7MP_VERSION\"" "$NODE_DIR/node_modules/@l7mp/l7mp/package.json" 2>/dev/null; then
    echo "setup.sh: @l7mp/l7mp@$NODE_L7MP_VERSION already in $NODE_DIR"
else
    if ! command -v npm >/dev/null 2>&1; then
        echo "setup.sh: npm not found; installing Debian nodejs+npm" >&2
        $SUDO apt-get install -y nodejs npm
    fi
    mkdir -p "$NODE_DIR"
    ( cd "$NODE_DIR" && npm install --no-audit --no-fund --loglevel=error "@l7mp/l7mp@$NODE_L7MP_VERSION" )
    echo "setup.sh: installed @l7mp/l7mp@$NODE_L7MP_VERSION into $NODE_DIR"
fi

echo "setup.sh: done"
echo "  iperf3: $(command -v iperf3)  socat: $(command -v socat)  haproxy: $(command -v haproxy)"
echo "  nginx: $(command -v nginx)  wrk: $(command -v wrk)  node: $(command -v node) $(node --version 2>/dev/null || true)"
ls /usr/lib/nginx/modules/ngx_stream_module.so 2>/dev/null || echo "  WARNING: ngx_stream_module.so not found" >&2
