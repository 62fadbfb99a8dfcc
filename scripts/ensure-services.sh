#!/usr/bin/env bash
# Make sure the services the integration tests use are up (ARCHITECTURE.md §7).
# PostgreSQL: the machine's cluster on 127.0.0.1:5432, started if down.
# NATS JetStream: the machine's nats-server on 127.0.0.1:4222; if down or absent, a private
# one is installed and started on a free port, and its URL written to .cache/nats.url.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cache

port_open() { python3 - "$1" <<'PY'
import socket, sys
s = socket.socket(); s.settimeout(0.5)
sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)
PY
}

if ! port_open 5432; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    for _ in $(seq 50); do port_open 5432 && break; sleep 0.2; done
  fi
  port_open 5432 || echo "PostgreSQL is not reachable on 127.0.0.1:5432 (tests that need it will say so)" >&2
fi

rm -f .cache/nats.url
if port_open 4222; then
  echo "nats://127.0.0.1:4222" > .cache/nats.url
else
  if ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ]; then
    echo "installing nats-server"
    (apt-get update -qq && apt-get install -y -qq nats-server) >/dev/null 2>&1 || true
  fi
  bin=$(command -v nats-server || echo /usr/sbin/nats-server)
  if [ -x "$bin" ]; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    mkdir -p .cache/nats-data
    echo "starting a private nats-server with JetStream on 127.0.0.1:$port"
    nohup "$bin" -a 127.0.0.1 -p "$port" -js -sd "$PWD/.cache/nats-data" >.cache/nats.log 2>&1 &
    echo $! > .cache/nats.pid
    for _ in $(seq 50); do port_open "$port" && break; sleep 0.2; done
    port_open "$port" && echo "nats://127.0.0.1:$port" > .cache/nats.url
  fi
  [ -f .cache/nats.url ] || echo "no JetStream nats-server could be started (tests that need it will say so)" >&2
fi
exit 0
