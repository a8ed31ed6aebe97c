#!/usr/bin/env bash
# The store's test helper: a throwaway PostgreSQL 15 cluster for the PostgreSQL cases of
# the store tests.
#   scripts/pg-test-server.sh start DIR   -> prints the URL to put in TARTARUS_TEST_PG_URL
#   scripts/pg-test-server.sh stop DIR    -> stops the cluster and removes DIR
# The cluster listens on a Unix socket in DIR and on 127.0.0.1 (a free port), trusts local
# connections, and runs with fsync off: never use it for data you want to keep.
# As root it runs the server as user postgres (initdb refuses root); DIR must then be
# reachable by that user (e.g. under /tmp).
set -euo pipefail

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

usage() {
  echo "usage: $0 start DIR | stop DIR" >&2
  exit 2
}

# Runs a PostgreSQL binary as the cluster owner.
as_owner() {
  if [[ $(id -u) == 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
  local dir=$1
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if [[ -e $dir/data ]]; then
    echo "$dir/data already exists: stop it first" >&2
    exit 1
  fi
  if [[ $(id -u) == 0 ]]; then
    id postgres >/dev/null 2>&1 || { echo "no user postgres (install postgresql-15)" >&2; exit 1; }
    chown postgres "$dir"
  fi
  as_owner "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync \
    >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }

  local port tries=0
  while :; do
    port=$((20000 + RANDOM % 40000))
    port_in_use "$port" || break
    tries=$((tries + 1))
    [[ $tries -lt 50 ]] || { echo "no free port found" >&2; exit 1; }
  done
  echo "$port" >"$dir/port"

  as_owner "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-k $dir -h 127.0.0.1 -p $port -c fsync=off -c synchronous_commit=off \
        -c full_page_writes=off -c max_connections=200" start >/dev/null ||
    { cat "$dir/server.log" >&2; exit 1; }
  as_owner "$PG_BIN/createdb" -h "$dir" -p "$port" -U postgres tartarus
  echo "postgresql://postgres@/tartarus?host=$dir&port=$port"
}

stop() {
  local dir=$1
  [[ -d $dir ]] || exit 0
  dir=$(cd "$dir" && pwd)
  if [[ -f $dir/data/postmaster.pid ]]; then
    as_owner "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}

[[ $# == 2 ]] || usage
case $1 in
  start) start "$2" ;;
  stop) stop "$2" ;;
  *) usage ;;
esac
