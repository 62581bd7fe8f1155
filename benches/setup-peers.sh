#!/usr/bin/env bash
# Installs the gateway bench's peers (benches/benches/gateway.rs, section `peers`):
#   nginx from Debian's packages, and rathole 0.5.0 (with its Noise transport) into a tools
#   folder outside the workspace: $POSTERN_TOOLS_DIR (default /var/tmp/postern-tools)/bin.
# rathole is a benchmark peer, never a dependency of the workspace. Idempotent: what is
# already installed is left alone. Without root, nginx is skipped with a message (rathole is
# still installed); the bench then skips the peers that need nginx.
#
#   bash benches/setup-peers.sh
#   cargo bench -p postern-benches --bench gateway     # POSTERN_BENCH_ONLY=peers for just them
set -euo pipefail

tools="${POSTERN_TOOLS_DIR:-/var/tmp/postern-tools}"
rathole_version=0.5.0

have_nginx() { command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; }

if have_nginx; then
  echo "setup-peers: nginx already installed"
elif [ "$(id -u)" -ne 0 ]; then
  echo "setup-peers: nginx is missing and this is not root: skipped" \
    "(as root: apt-get update && apt-get install -y nginx-light)" >&2
else
  # The package's scripts must not start a system nginx (it would take port 80 and run on
  # after the bench): policy-rc.d refuses every service start while apt runs, and is put back
  # as it was however apt ends.
  policy=/usr/sbin/policy-rc.d
  kept=""
  if [ -e "$policy" ]; then
    kept="$(mktemp)"
    cp -p "$policy" "$kept"
  fi
  restore_policy() {
    if [ -n "$kept" ]; then mv -f "$kept" "$policy"; else rm -f "$policy"; fi
  }
  trap restore_policy EXIT
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod +x "$policy"
  apt-get update
  # nginx-light is the smaller build (it has the ssl, map and upstream keepalive modules the
  # bench uses); Debian releases without it have nginx.
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y nginx-light; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y nginx
  fi
  restore_policy
  trap - EXIT
fi

rathole="$tools/bin/rathole"
if [ -x "$rathole" ] && "$rathole" --version 2>/dev/null | grep -q "Build Version: *$rathole_version\$"; then
  echo "setup-peers: rathole $rathole_version already at $rathole"
else
  # Without --locked: rathole's lockfile pins a `time` release that no longer compiles.
  # Only what the bench uses: server, client and the Noise transport. Leaving out the default
  # `tls` and `websocket` features leaves out native-tls, so no OpenSSL headers are needed,
  # and `hot-reload` (a file watcher the bench has no use for).
  cargo install rathole --version "$rathole_version" --root "$tools" --force \
    --no-default-features --features server,client,noise
fi

nginx="$(command -v nginx || echo /usr/sbin/nginx)"
if [ -x "$nginx" ]; then
  echo "setup-peers: $("$nginx" -v 2>&1) at $nginx"
fi
echo "setup-peers: rathole at $rathole"
