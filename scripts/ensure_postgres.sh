#!/usr/bin/env bash
# Make sure the local PostgreSQL (127.0.0.1:5432, user postgres, trust auth) is up:
# the production storage profile's tests run against it. Starts the cluster if it is down.
set -euo pipefail
ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if ready; then exit 0; fi
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "PostgreSQL is not running and not installed; installing Debian's postgresql" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  installed=1
fi
version=$(ls /etc/postgresql | sort -V | tail -n 1)
if [ "${installed:-0}" = 1 ]; then
  # A fresh Debian cluster asks for passwords over TCP; the tests connect as postgres with
  # trust auth on loopback, as on the CI machines. Only a cluster installed here is changed.
  hba=/etc/postgresql/$version/main/pg_hba.conf
  printf 'host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n' | cat - "$hba" > "$hba.new"
  mv "$hba.new" "$hba" && chown postgres:postgres "$hba"
fi
pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
if [ "${installed:-0}" = 1 ]; then  # the package may have started it before the change above
  pg_ctlcluster --skip-systemctl-redirect "$version" main reload || true
fi
for _ in $(seq 1 60); do
  if ready; then exit 0; fi
  sleep 0.5
done
echo "PostgreSQL did not become ready on 127.0.0.1:5432" >&2
exit 1
