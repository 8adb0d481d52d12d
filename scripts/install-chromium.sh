#!/usr/bin/env bash
# Debian's chromium for the browser tests (never a downloaded browser build). Idempotent: does
# nothing when /usr/bin/chromium is already there. Needs root (or sudo) to install.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-chromium: /usr/bin/chromium is missing and this user cannot install it" >&2
        echo "  (run as root: apt-get install -y chromium)" >&2
        exit 1
    fi
fi
echo "installing Debian's chromium for the browser tests (apt-get)..." >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
test -x /usr/bin/chromium
