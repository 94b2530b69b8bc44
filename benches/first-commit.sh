#!/usr/bin/env bash
# How long `spansink run` takes from its start to its first committed batch,
# over several starts: `benches/first-commit.sh [STARTS] [PARTITIONS]`.
#
# Each start gets a fresh database and a fresh mock broker (in a process of
# its own) holding 100,000 spans, so every start is a new consumer group that
# joins, is assigned every partition and takes its fetch turns. The time is
# measured from spawning `spansink run` to the first row in `ingest_offsets`
# (polled every 10 ms), so it includes the process start, the group join and
# the first transaction.
#
# Needs the local PostgreSQL (DATABASE_URL's server, default the local one);
# creates and drops a database per start. Prints each start's seconds, then
# the sorted list.
set -euo pipefail
cd "$(dirname "$0")/.."

starts=${1:-20}
partitions=${2:-16}
server=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
work=$(mktemp -d)

cargo build --release --quiet
bin=target/release/spansink
[ -n "${CARGO_TARGET_DIR:-}" ] && bin="$CARGO_TARGET_DIR/release/spansink"

cleanup() {
  [ -n "${run_pid:-}" ] && kill -9 "$run_pid" 2>/dev/null && wait "$run_pid" 2>/dev/null
  [ -n "${BROKER_PID:-}" ] && kill "$BROKER_PID" 2>/dev/null
  [ -n "${db:-}" ] && psql "$server" -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

results=()
for i in $(seq "$starts"); do
  db="spansink_first_commit_$$_$i"
  url="${server%/*}/$db"
  psql "$server" -qc "CREATE DATABASE $db" >/dev/null
  "$bin" migrate --database-url "$url" --log warn

  coproc BROKER { "$bin" mock-broker --topic otlp_spans --partitions "$partitions"; }
  read -r line <&"${BROKER[0]}"
  bootstrap=${line#bootstrap=}
  "$bin" loadgen --brokers "$bootstrap" --count 100000 --spans-per-message 100 \
    --partitions "$partitions" --log warn >/dev/null

  start=$(date +%s%N)
  "$bin" run --brokers "$bootstrap" --database-url "$url" --no-migrate \
    --spool-dir "$work/spool-$i" --metrics-addr 127.0.0.1:0 --admin-addr off \
    --log warn 2>"$work/run.log" &
  run_pid=$!
  until [ "$(psql "$url" -Atc "SELECT count(*) FROM ingest_offsets")" -gt 0 ]; do
    kill -0 "$run_pid" 2>/dev/null || { cat "$work/run.log"; exit 1; }
    sleep 0.01
  done
  seconds=$(awk -v ns="$(($(date +%s%N) - start))" 'BEGIN { printf "%.2f", ns / 1e9 }')
  echo "start $i: first commit after $seconds s"
  results+=("$seconds")

  kill -9 "$run_pid"; wait "$run_pid" 2>/dev/null || true; run_pid=
  kill "$BROKER_PID"; wait "$BROKER_PID" 2>/dev/null || true; BROKER_PID=
  psql "$server" -qc "DROP DATABASE $db" >/dev/null; db=
done
printf '%s\n' "${results[@]}" | sort -n | tr '\n' ' '
echo
