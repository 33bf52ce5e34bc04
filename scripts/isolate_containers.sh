#!/usr/bin/env bash
# Keeps MLPortal's containers off the services of the host that runs their Docker engine.
# Run it as root on that host once per boot (the worker does the same by itself when it drives
# the local engine as root; see compute/network.py). Idempotent.
#
# Service replicas live on the bridge mlp-services0 (network mlportal-services) and runs allowed
# the network on mlp-runs0 (mlportal-runs); both are made with inter-container traffic off. This
# drops every packet those bridges send to the host itself (its bridge gateway and every other
# address of it: Redis, PostgreSQL, the portal...), except replies to connections the host opened
# (the published ports the portal and the health checks use). Traffic to other networks is untouched.
set -euo pipefail
CHAIN=MLPORTAL-ISOLATE
ipt() { iptables -w "$@"; }
ipt -N "$CHAIN" 2>/dev/null || true
if [ "$(ipt -S "$CHAIN" | grep -c '^-A')" != 2 ] \
   || ! ipt -C "$CHAIN" -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN 2>/dev/null \
   || ! ipt -C "$CHAIN" -j DROP 2>/dev/null; then
  ipt -F "$CHAIN"
  ipt -A "$CHAIN" -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
  ipt -A "$CHAIN" -j DROP
fi
for bridge in mlp-services0 mlp-runs0; do
  ipt -C INPUT -i "$bridge" -j "$CHAIN" 2>/dev/null || ipt -I INPUT 1 -i "$bridge" -j "$CHAIN"
done
echo "MLPortal containers are kept off this host's services (iptables chain $CHAIN)"
