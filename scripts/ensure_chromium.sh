#!/usr/bin/env bash
# Debian's Chromium for tests/browser, installed when /usr/bin/chromium is missing. Playwright
# drives this system browser; nothing ever runs `playwright install`.
set -euo pipefail
CHROMIUM=/usr/bin/chromium
[ -x "$CHROMIUM" ] && exit 0
[ "${ASRU_LAB_SKIP_BROWSER:-}" = 1 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO=(sudo)
else
    SUDO=(missing)
fi
if ! command -v apt-get >/dev/null || [ "${SUDO[*]}" = missing ]; then
    echo "ensure_chromium: $CHROMIUM is missing and cannot be installed here (needs apt-get as" \
        "root); install Chromium, or set ASRU_LAB_SKIP_BROWSER=1 to skip the browser test" >&2
    exit 1
fi

echo "ensure_chromium: installing Chromium from Debian packages"
export DEBIAN_FRONTEND=noninteractive
# wait for another apt run instead of failing on its lock
apt_get() { "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=300 -qq "$@" >/dev/null; }
apt_get install -y chromium || { apt_get update && apt_get install -y chromium; }
