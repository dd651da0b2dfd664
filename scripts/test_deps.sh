#!/usr/bin/env bash
# System packages the test suite drives: headless Chromium and its WebDriver
# (tests/test_browse_page.py). Called by `make test` after bootstrap.sh.
# Idempotent and silent when both binaries are present; installs them only
# where we can (root with apt-get). Where we cannot, the browser test skips
# and says why -- the rest of the suite does not need them.
set -euo pipefail

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
CHROMEDRIVER="${CHROMEDRIVER:-/usr/bin/chromedriver}"

if [ -x "$CHROMIUM" ] && [ -x "$CHROMEDRIVER" ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "test_deps: $CHROMIUM or $CHROMEDRIVER missing and not root with apt-get; the browser test will skip" >&2
  exit 0
fi
echo "test_deps: installing chromium and chromium-driver (apt-get)"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null; }; then
  # Not fatal: the suite still runs; the browser test reports the missing binaries.
  echo "test_deps: apt-get could not install chromium/chromium-driver; the browser test will skip" >&2
fi
