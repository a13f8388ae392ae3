#!/usr/bin/env bash
# Makes sure PostgreSQL server binaries (initdb, postgres) are present.
# Installs Debian's `postgresql` package when they are missing and we are root,
# without letting the package create or start a cluster of its own.
set -euo pipefail

have_server() {
  if [ -n "${TENANTRY_PG_BIN:-}" ] && [ -x "$TENANTRY_PG_BIN/initdb" ]; then return 0; fi
  if command -v initdb >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1; then return 0; fi
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

if have_server; then exit 0; fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  cat >&2 <<'MSG'
PostgreSQL server binaries (initdb, postgres) were not found.
Install them, then run this again:
  Debian/Ubuntu:  sudo apt-get install postgresql
  elsewhere:      install PostgreSQL 14 or newer and set TENANTRY_PG_BIN to the folder holding initdb
MSG
  exit 1
fi

echo "Installing PostgreSQL server binaries (Debian package postgresql)…" >&2
# No "main" cluster from the package, and no service started by its install scripts:
# Tenantry runs its own private clusters.
mkdir -p /etc/postgresql-common
if ! grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf; then
  echo 'create_main_cluster = false' >> /etc/postgresql-common/createcluster.conf
fi
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod +x "$policy"
  made_policy=1
fi
trap '[ "$made_policy" = 1 ] && rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql >/dev/null
have_server || { echo "postgresql was installed but initdb is still not found" >&2; exit 1; }
echo "PostgreSQL installed." >&2
