#!/usr/bin/env bash
# Starts the Docker engine, Redis and PostgreSQL in the background (no systemd on these machines)
# and creates the PostgreSQL role and database the team-configuration tests use. Idempotent.
set -euo pipefail

wait_for() {  # wait_for NAME SECONDS COMMAND...
  local name=$1 secs=$2; shift 2
  for _ in $(seq "$secs"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  echo "error: $name did not start within ${secs}s" >&2; return 1
}

if ! docker info >/dev/null 2>&1; then
  nohup dockerd >/var/log/dockerd.log 2>&1 &
  wait_for dockerd 60 docker info
fi

if ! redis-cli ping >/dev/null 2>&1; then
  # Loopback only: containers reach the host through their bridge's gateway, and must not reach Redis.
  redis-server --daemonize yes --save '' --appendonly no --bind 127.0.0.1 ::1
  wait_for redis 20 redis-cli ping
fi

PGVER=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_isready -q; then
  pg_ctlcluster "$PGVER" main start || true
  wait_for postgresql 30 pg_isready
fi
su postgres -c "psql -tAc \"SELECT 1 FROM pg_roles WHERE rolname='mlportal'\"" | grep -q 1 \
  || su postgres -c "psql -c \"CREATE ROLE mlportal LOGIN SUPERUSER PASSWORD 'mlportal'\""
su postgres -c "psql -tAc \"SELECT 1 FROM pg_database WHERE datname='mlportal'\"" | grep -q 1 \
  || su postgres -c "createdb -O mlportal mlportal"
# PostgreSQL must listen on loopback only, for the same reason (Debian's default).
if su postgres -c "psql -tAc 'SHOW listen_addresses'" | grep -qv '^localhost$'; then
  echo "warning: PostgreSQL listens on $(su postgres -c "psql -tAc 'SHOW listen_addresses'"); set listen_addresses = 'localhost'" >&2
fi
# Containers must not reach the host's services through any address (compute/network.py).
bash "$(dirname "$0")/isolate_containers.sh" || echo "warning: could not install the container isolation rules (needs root and iptables)" >&2
echo "services up: docker $(docker version -f '{{.Server.Version}}'), $(redis-cli ping), postgres $PGVER"
