#!/usr/bin/env bash
# Peak RSS of `spansink run`, default settings, working off a backlog produced
# before it starts: `benches/backlog-memory.sh SPANS [PARTITIONS]`.
#
# The broker is librdkafka's mock cluster in a process of its own. It keeps
# only about 5 MiB per partition and silently drops older messages, so the
# backlog is spread over enough partitions to stay under that (about 4 MiB
# each at 10M spans over 1024 partitions), and the script checks that every
# message produced was stored: a dropped message would show as a shortfall.
#
# Needs the local PostgreSQL (DATABASE_URL's server, default the local one);
# creates and drops a database of its own. Prints one Markdown table row.
set -euo pipefail
cd "$(dirname "$0")/.."

spans=${1:?spans to produce, e.g. 10000000}
partitions=${2:-1024}
spans_per_message=100
messages=$((spans / spans_per_message))
server=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
db="spansink_backlog_$$"
url="${server%/*}/$db"
work=$(mktemp -d)

cargo build --release --quiet
bin=target/release/spansink
[ -n "${CARGO_TARGET_DIR:-}" ] && bin="$CARGO_TARGET_DIR/release/spansink"

coproc BROKER { "$bin" mock-broker --topic otlp_spans --partitions "$partitions"; }
read -r line <&"${BROKER[0]}"
bootstrap=${line#bootstrap=}

cleanup() {
  [ -n "${run_pid:-}" ] && kill "$run_pid" 2>/dev/null && wait "$run_pid" 2>/dev/null
  kill "$BROKER_PID" 2>/dev/null || true
  psql "$server" -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" loadgen --brokers "$bootstrap" --count "$spans" --spans-per-message "$spans_per_message" \
  --partitions "$partitions" --log warn >"$work/loadgen.txt"
backlog_mib=$(sed -n 's/.*(\([0-9.]*\) MiB).*/\1/p' "$work/loadgen.txt")

psql "$server" -qc "CREATE DATABASE $db" >/dev/null
start=$(date +%s%N)
"$bin" run --brokers "$bootstrap" --database-url "$url" --spool-dir "$work/spool" \
  --metrics-addr 127.0.0.1:0 --admin-addr off --log warn 2>"$work/run.log" &
run_pid=$!

stored=0
while [ "$stored" -lt "$messages" ]; do
  sleep 1
  kill -0 "$run_pid" || { cat "$work/run.log"; exit 1; }
  stored=$(psql "$url" -Atc "SELECT coalesce(sum(next_offset), 0) FROM ingest_offsets" 2>/dev/null || echo 0)
done
elapsed_ns=$(($(date +%s%N) - start))
hwm_kb=$(awk '/VmHWM/ {print $2}' "/proc/$run_pid/status")
stored_spans=$(psql "$url" -Atc "SELECT sum(span_count) FROM traces")
[ "$stored_spans" -eq "$spans" ] || { echo "stored $stored_spans of $spans spans"; exit 1; }

awk -v s="$spans" -v p="$partitions" -v b="$backlog_mib" -v ns="$elapsed_ns" -v kb="$hwm_kb" \
  'BEGIN { printf "| %d | %d | %s | %.0f | %.1f | %.0f |\n", s, p, b, s / (ns / 1e9), ns / 1e9, kb * 1024 / 1e6 }'
