#!/usr/bin/env bash
# Installs the gateway bench's peers (benches/benches/gateway.rs, section `peers`):
#   nginx from Debian's packages, and rathole 0.5.0 (with its Noise transport) into a tools
#   folder outside the workspace: $POSTERN_TOOLS_DIR (default /var/tmp/postern-tools)/bin.
# rathole is a benchmark peer, never a dependency of the workspace. Idempotent.
#
#   bash benches/setup-peers.sh
#   cargo bench -p postern-benches --bench gateway     # POSTERN_BENCH_ONLY=peers for just them
set -euo pipefail

tools="${POSTERN_TOOLS_DIR:-/var/tmp/postern-tools}"

if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup-peers: nginx is missing and this is not root: apt-get install nginx-light" >&2
    exit 1
  fi
  # No service is started by the package's scripts: the bench runs its own nginx on loopback.
  had_policy=0
  if [ -e /usr/sbin/policy-rc.d ]; then had_policy=1; cp /usr/sbin/policy-rc.d /tmp/policy-rc.d.keep; fi
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  apt-get update
  apt-get install -y nginx-light || apt-get install -y nginx
  if [ "$had_policy" = 1 ]; then mv /tmp/policy-rc.d.keep /usr/sbin/policy-rc.d; else rm -f /usr/sbin/policy-rc.d; fi
fi

if [ ! -x "$tools/bin/rathole" ]; then
  # Without --locked: rathole's lockfile pins a `time` release that no longer compiles.
  # Only what the bench uses: server, client and the Noise transport (no native-tls, so no
  # OpenSSL headers are needed).
  cargo install rathole --version 0.5.0 --root "$tools" \
    --no-default-features --features server,client,noise
fi

echo "setup-peers: nginx $(nginx -v 2>&1 | sed 's/.*\///'), rathole at $tools/bin/rathole"
