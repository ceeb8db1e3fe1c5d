#!/usr/bin/env bash
# Install Debian's chromium, which tests/results/test_report.py uses to render the HTML report
# headless, when /usr/bin/chromium is missing; otherwise do nothing. Installing needs root or
# sudo.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ! -x "$CHROMIUM" ]; then
    echo "installing chromium from Debian's packages" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
fi
"$CHROMIUM" --version
