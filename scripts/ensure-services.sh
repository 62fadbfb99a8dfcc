#!/usr/bin/env bash
# Make sure the services the integration tests use are up (`make services`, run by `make test`).
# PostgreSQL: the machine's cluster on 127.0.0.1:5432, started if down.  When the tests
#   cannot log in as postgres over TCP (a fresh Debian cluster wants a password), a local
#   test role is created through the postgres OS user and its DSN written to
#   .cache/postgres.dsn (read by tests/services/postgres.py and the benchmarks).
# NATS JetStream: the machine's nats-server on 127.0.0.1:4222 if it has JetStream; else a
#   private one (installed if absent) on a free port, its URL written to .cache/nats.url.
# With SKYFERRY_REQUIRE_SERVICES=1 a service that cannot be had fails the script (exit 1).
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cache
missing=0

port_open() { python3 - "$1" <<'PY'
import socket, sys
s = socket.socket(); s.settimeout(0.5)
sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)
PY
}

# A NATS server announces "jetstream": true in its INFO line when JetStream is on.
nats_has_jetstream() { python3 - "$1" <<'PY'
import json, socket, sys
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2) as s:
        line = s.makefile("rb").readline().decode()
    sys.exit(0 if line.startswith("INFO ") and json.loads(line[5:]).get("jetstream") else 1)
except (OSError, ValueError):
    sys.exit(1)
PY
}

pg_login() { python3 - "$1" <<'PY'
import sys
try:
    import psycopg
except ImportError:
    sys.exit(0)  # cannot check without the driver; the tests will say so
try:
    psycopg.connect(sys.argv[1], connect_timeout=3).close()
except Exception:
    sys.exit(1)
PY
}

# --- PostgreSQL -----------------------------------------------------------------------------
if ! port_open 5432; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    for _ in $(seq 50); do port_open 5432 && break; sleep 0.2; done
  fi
fi
if port_open 5432; then
  dsn=${SKYFERRY_TEST_POSTGRES_DSN:-postgresql://postgres@127.0.0.1:5432/postgres}
  PY=python3; [ -x .venv/bin/python ] && PY=.venv/bin/python
  if ! PATH="$(dirname "$PY"):$PATH" pg_login "$dsn"; then
    if [ -f .cache/postgres.dsn ] && PATH="$(dirname "$PY"):$PATH" pg_login "$(cat .cache/postgres.dsn)"; then
      :
    elif [ "$(id -u)" = 0 ] && command -v runuser >/dev/null && command -v psql >/dev/null; then
      echo "creating the local test role skyferry_test (the tests cannot log in as postgres over TCP)"
      password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
      runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 -d postgres <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'skyferry_test') THEN
    CREATE ROLE skyferry_test LOGIN SUPERUSER;
  END IF;
END \$\$;
ALTER ROLE skyferry_test PASSWORD '$password';
SQL
      echo "postgresql://skyferry_test:$password@127.0.0.1:5432/postgres" > .cache/postgres.dsn
      chmod 600 .cache/postgres.dsn
    else
      echo "cannot log in to PostgreSQL as $dsn; set SKYFERRY_TEST_POSTGRES_DSN" >&2
      missing=1
    fi
  fi
else
  echo "PostgreSQL is not reachable on 127.0.0.1:5432 (tests that need it will say so)" >&2
  missing=1
fi

# --- NATS JetStream --------------------------------------------------------------------------
rm -f .cache/nats.url
if port_open 4222 && nats_has_jetstream 4222; then
  echo "nats://127.0.0.1:4222" > .cache/nats.url
else
  # A private server started by an earlier run and still alive is reused.
  if [ -f .cache/nats.pid ] && [ -f .cache/nats.port ] && kill -0 "$(cat .cache/nats.pid)" 2>/dev/null \
     && nats_has_jetstream "$(cat .cache/nats.port)"; then
    echo "nats://127.0.0.1:$(cat .cache/nats.port)" > .cache/nats.url
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
      echo "$port" > .cache/nats.port
      for _ in $(seq 50); do port_open "$port" && break; sleep 0.2; done
      port_open "$port" && nats_has_jetstream "$port" && echo "nats://127.0.0.1:$port" > .cache/nats.url
    fi
  fi
  if [ ! -f .cache/nats.url ]; then
    echo "no JetStream nats-server could be started (tests that need it will say so)" >&2
    missing=1
  fi
fi

if [ "$missing" = 1 ] && [ "${SKYFERRY_REQUIRE_SERVICES:-}" = 1 ]; then
  echo "SKYFERRY_REQUIRE_SERVICES=1 and a service is missing" >&2
  exit 1
fi
exit 0
