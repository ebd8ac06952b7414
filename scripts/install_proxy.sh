#!/usr/bin/env bash
# Install Debian's HAProxy for the compose topology test (tests/e2e/test_compose_topology.py runs
# deploy/haproxy.cfg with the real binary in front of two receivers). The package's service is
# never started here: the test runs its own haproxy process. Idempotent: exits 0 at once when
# /usr/sbin/haproxy is there; runs `apt-get update` only when something is missing.
set -euo pipefail

if [ -x /usr/sbin/haproxy ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=sudo
  else
    echo "install_proxy.sh: need root (or sudo) to install haproxy" >&2
    exit 1
  fi
else
  SUDO=
fi

echo "installing Debian package: haproxy" >&2
$SUDO apt-get update -qq
# policy-rc.d-less containers may try to start the service; the test never uses it
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends haproxy >/dev/null

if [ ! -x /usr/sbin/haproxy ]; then
  echo "install_proxy.sh: /usr/sbin/haproxy is still missing after installing haproxy" >&2
  exit 1
fi
/usr/sbin/haproxy -v | head -n 1 >&2 || true
