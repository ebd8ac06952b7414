#!/usr/bin/env bash
# Install Debian's chromium (and fonts, so screenshots show text and the status emoji) for the browser
# end-to-end tests, which drive /usr/bin/chromium through Playwright. Playwright's own
# browser download (`playwright install`) is never used. Idempotent: exits 0 at once
# when everything is already installed; runs `apt-get update` only when something is missing.
set -euo pipefail

packages=(chromium fonts-dejavu-core fonts-liberation fonts-noto-color-emoji)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
for pkg in "${packages[@]}"; do
  installed "$pkg" || missing+=("$pkg")
done

if [ "${#missing[@]}" -eq 0 ] && [ -x /usr/bin/chromium ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=sudo
  else
    echo "install_browser.sh: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
else
  SUDO=
fi

echo "installing Debian packages: ${missing[*]:-chromium}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]:-chromium}" >/dev/null

if [ ! -x /usr/bin/chromium ]; then
  echo "install_browser.sh: /usr/bin/chromium is still missing after installing chromium" >&2
  exit 1
fi
/usr/bin/chromium --version >&2 || true
