#!/usr/bin/env bash
# Install the system Chromium (Debian package) for the playground browser tests, unless one is there.
# Idempotent; Playwright drives this browser (no `playwright install` download is ever needed).
set -euo pipefail

if [ -n "${FAL_ONPREM_CHROMIUM:-}" ] && [ -x "$FAL_ONPREM_CHROMIUM" ]; then
  exit 0
fi
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure_chromium: no apt-get here; install Chromium yourself or set FAL_ONPREM_CHROMIUM" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium
command -v chromium >/dev/null 2>&1
