#!/usr/bin/env bash
# Install (Debian package), start and prepare a PostgreSQL server for the registry tests; prints
# the URL to export as ACTIVEDAEMON_TEST_PG_URL. Safe to run twice.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if ! command -v pg_lsclusters >/dev/null; then
    apt-get install -y -qq postgresql >/dev/null
fi
version=$(pg_lsclusters -h | awk 'NR==1 {print $1}')
if [ -z "$version" ]; then
    version=$(ls /usr/lib/postgresql | sort -n | tail -1)
    pg_createcluster "$version" main >/dev/null
fi
pg_ctlcluster "$version" main start >/dev/null 2>&1 || true
for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 && break; sleep 1; done
pg_isready -h 127.0.0.1 >/dev/null
run_psql() { su postgres -c "psql -v ON_ERROR_STOP=1 -qtA -c \"$1\""; }
if [ "$(run_psql "SELECT 1 FROM pg_roles WHERE rolname = 'activedaemon'")" != "1" ]; then
    run_psql "CREATE ROLE activedaemon LOGIN PASSWORD 'activedaemon'" >/dev/null
fi
# A second login role that owns nothing: the registry tests grant it the service's insert-only
# rights (Registry.grant_service_role) and check what it cannot do to the audit log.
if [ "$(run_psql "SELECT 1 FROM pg_roles WHERE rolname = 'activedaemon_svc'")" != "1" ]; then
    run_psql "CREATE ROLE activedaemon_svc LOGIN PASSWORD 'activedaemon_svc'" >/dev/null
fi
if [ "$(run_psql "SELECT 1 FROM pg_database WHERE datname = 'activedaemon_test'")" != "1" ]; then
    run_psql "CREATE DATABASE activedaemon_test OWNER activedaemon" >/dev/null
fi
echo "postgresql+psycopg://activedaemon:activedaemon@127.0.0.1:5432/activedaemon_test"
