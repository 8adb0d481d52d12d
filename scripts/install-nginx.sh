#!/usr/bin/env bash
# Installs Debian's nginx for the load-balancer test (tests/ops/test_nginx.py) when it is missing.
# Idempotent: does nothing when `nginx` is already on PATH (or in /usr/sbin). Needs root or sudo
# the first time. The test only runs nginx as its own process (own prefix, `daemon off;`); the
# Debian package's system service is never started here (policy-rc.d) and never used.
set -euo pipefail

if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-nginx: nginx is missing and this is not root (and no sudo): install nginx-light" >&2
        exit 1
    fi
fi

# Keep the package's own service from starting (it would take port 80): the test runs its own.
POLICY=/usr/sbin/policy-rc.d
CREATED_POLICY=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod +x "$POLICY"
    CREATED_POLICY=1
fi
cleanup() {
    if [ "$CREATED_POLICY" = 1 ]; then $SUDO rm -f "$POLICY"; fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq nginx-light >/dev/null || $SUDO apt-get install -y -qq nginx >/dev/null
echo "install-nginx: $(/usr/sbin/nginx -v 2>&1)"
