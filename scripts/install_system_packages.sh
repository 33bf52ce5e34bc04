#!/usr/bin/env bash
# Installs the system services the test suite drives for real: a Docker engine,
# Redis, PostgreSQL, debootstrap (offline base image), Chromium (browser tests), wrk (benchmarks).
set -euo pipefail
PKGS="docker.io redis-server postgresql debootstrap chromium chromium-driver wrk nginx"
missing=""
for p in $PKGS; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $missing
fi
