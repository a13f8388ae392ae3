#!/usr/bin/env bash
# Makes sure headless Chromium and its WebDriver (chromedriver) are present, for the
# console's browser tests. Installs Debian's `chromium` and `chromium-driver` packages
# when they are missing and we are root.
set -euo pipefail

have_browser() {
  local browser="${TENANTRY_CHROMIUM:-$(command -v chromium || true)}"
  local driver="${TENANTRY_CHROMEDRIVER:-$(command -v chromedriver || true)}"
  [ -n "$browser" ] && [ -x "$browser" ] && [ -n "$driver" ] && [ -x "$driver" ]
}

if have_browser; then exit 0; fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  cat >&2 <<'MSG'
Chromium and chromedriver (for the console's browser tests) were not found.
Install them, then run this again:
  Debian/Ubuntu:  sudo apt-get install chromium chromium-driver
  elsewhere:      install Chromium and a matching chromedriver, and set TENANTRY_CHROMIUM
                  and TENANTRY_CHROMEDRIVER to their paths
MSG
  exit 1
fi

echo "Installing Chromium and chromedriver (Debian packages chromium, chromium-driver)…" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
have_browser || { echo "chromium and chromium-driver were installed but are still not found (are TENANTRY_CHROMIUM and TENANTRY_CHROMEDRIVER, when set, right?)" >&2; exit 1; }
echo "Chromium installed." >&2
