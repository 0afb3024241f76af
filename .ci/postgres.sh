#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on 127.0.0.1 for the tuning-database tests.
#
# Installs the Debian server package when it is missing (apt-get, non-interactive), creates a
# cluster in a temporary directory owned by an unprivileged user, starts it on loopback, creates
# a database and prints the line to eval:
#
#   eval "$(bash .ci/postgres.sh)"     # sets TILEWRIGHT_TEST_PG_URL (and TILEWRIGHT_TEST_PG_DIR)
#
# Stop it with: pg_ctl -D "$TILEWRIGHT_TEST_PG_DIR/data" stop (as the same user).
# Environment: PG_PORT (default: a free port), PG_DB (default tilewright_test).
set -euo pipefail

log() { echo "postgres.sh: $*" >&2; }

find_bin() {
  local name=$1 dir
  for dir in /usr/lib/postgresql/*/bin; do
    if [ -x "$dir/$name" ]; then echo "$dir/$name"; return 0; fi
  done
  command -v "$name" 2>/dev/null || return 1
}

if ! find_bin initdb >/dev/null || ! find_bin postgres >/dev/null; then
  log "installing the PostgreSQL server from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends postgresql >&2
fi
INITDB=$(find_bin initdb)
PG_CTL=$(find_bin pg_ctl)
BINDIR=$(dirname "$INITDB")

# initdb and postgres refuse to run as root: use the 'postgres' user (created by the package)
# or a throwaway one.
RUN_AS=()
if [ "$(id -u)" = "0" ]; then
  PG_USER=postgres
  if ! id "$PG_USER" >/dev/null 2>&1; then
    PG_USER=tilewright_pg
    id "$PG_USER" >/dev/null 2>&1 || useradd --system --no-create-home "$PG_USER"
  fi
  RUN_AS=(runuser -u "$PG_USER" --)
else
  PG_USER=$(id -un)
fi

PG_DIR=$(mktemp -d /tmp/tilewright-pg.XXXXXX)
chmod 755 "$PG_DIR"
[ "${#RUN_AS[@]}" -gt 0 ] && chown "$PG_USER" "$PG_DIR"
PG_PORT=${PG_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
PG_DB=${PG_DB:-tilewright_test}
PG_PASSWORD=tilewright

log "cluster in $PG_DIR/data on 127.0.0.1:$PG_PORT (user $PG_USER)"
echo "$PG_PASSWORD" > "$PG_DIR/pwfile"
[ "${#RUN_AS[@]}" -gt 0 ] && chown "$PG_USER" "$PG_DIR/pwfile"
"${RUN_AS[@]}" "$INITDB" -D "$PG_DIR/data" -U tilewright --pwfile="$PG_DIR/pwfile" \
  --auth=md5 --encoding=UTF8 --locale=C.UTF-8 >&2 || \
  "${RUN_AS[@]}" "$INITDB" -D "$PG_DIR/data" -U tilewright --pwfile="$PG_DIR/pwfile" \
  --auth=md5 --encoding=UTF8 --no-locale >&2
"${RUN_AS[@]}" "$PG_CTL" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
  -o "-h 127.0.0.1 -p $PG_PORT -k $PG_DIR -c max_connections=200 -c fsync=off" start >&2
PGPASSWORD=$PG_PASSWORD "$BINDIR/createdb" -h 127.0.0.1 -p "$PG_PORT" -U tilewright "$PG_DB" >&2
log "ready"
echo "export TILEWRIGHT_TEST_PG_URL=postgresql+psycopg2://tilewright:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
echo "export TILEWRIGHT_TEST_PG_DIR=$PG_DIR"
