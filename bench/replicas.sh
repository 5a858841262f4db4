#!/usr/bin/env bash
# The PostgreSQL store with one and two `serve` replicas against the
# embedded store, in one run so the ratios compare like with like: durable
# intake (alerts that match nothing) and end to end through a `log` step.
# Starts a throw-away PostgreSQL (Debian's `postgresql`) on a free loopback
# port. Bounded: DURATION per load (default 10s). Prints the numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
source bench/lib.sh
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
mkdir -p "$WORK/runbooks" "$WORK/pg"
cp bench/runbooks/bench-log.yaml "$WORK/runbooks/"

# ---- PostgreSQL: durable as shipped (fsync, synchronous_commit on).
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
  chmod o+x "$WORK"
  chown postgres "$WORK/pg"
  as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups)
fi
"${as_pg[@]}" "$PG_BIN/initdb" -D "$WORK/pg/data" -U postgres --auth=trust --no-sync >/dev/null
PG_PORT=$(free_port)
"${as_pg[@]}" "$PG_BIN/postgres" -D "$WORK/pg/data" -p "$PG_PORT" -k "$WORK/pg" -c listen_addresses=127.0.0.1 \
  -c fsync=on -c synchronous_commit=on -c shared_buffers=128MB -c max_connections=100 > "$WORK/pg/log" 2>&1 &
PG_PID=$!
SERVERS+=("$PG_PID")
until "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; do sleep 0.1; done
psql_admin() { psql -X -q -A -t -h "$WORK/pg" -p "$PG_PORT" -U postgres "$@"; }
psql_admin -c "CREATE ROLE pitcrew LOGIN PASSWORD 'bench-password'"
echo bench-password > "$WORK/pg/password"
db_n=0
new_db() {  # -> sets DB_URL to a fresh database
  db_n=$((db_n + 1))
  psql_admin -c "CREATE DATABASE bench$db_n OWNER pitcrew"
  DB_URL="postgres://pitcrew@127.0.0.1:$PG_PORT/bench$db_n"
}
pg_count() { psql_admin -d "bench$db_n" -c "$1"; }

# start_on_pg DIR: a replica on the current database (sets PID, URL).
start_on_pg() {
  mkdir -p "$1"
  EXTRA_CONFIG=$(printf 'store:\n  url: %s\n  password_file: %s\n' "$DB_URL" "$WORK/pg/password") start "$1" "$WORK/runbooks"
}

# load NAME ALERTNAME URL... : wrk on every URL at once (32 connections in
# all), 10 alerts per request; sets SECS (the load's length).
load() {
  local name=$1 alertname=$2; shift 2
  local n=$# i=0 pids=()
  for url in "$@"; do
    ALERTS_PER_REQUEST=10 ALERTNAME=$alertname RUN="$name-$i" wrk -t1 -c$((32 / n)) -d"$DURATION" \
      -s bench/alerts.lua "$url/v1/alerts/alertmanager" > "$WORK/wrk-$name-$i.txt" &
    pids+=($!)
    i=$((i + 1))
  done
  wait "${pids[@]}"
  grep -h "requests " "$WORK"/wrk-"$name"-*.txt | sed 's/^/  wrk: /'
  SECS=$(grep -ohE "in [0-9.]+s" "$WORK"/wrk-"$name"-*.txt | tr -dc '0-9.\n' | sort -n | tail -1)
}

declare -A INTAKE E2E

echo "== durable intake, 10 alerts per request, nothing matches, wrk -c32 -d$DURATION"
mkdir -p "$WORK/sq-in"
start "$WORK/sq-in" "$WORK/runbooks"
load sq-in BenchNoMatch "$URL"
stored=$(count "$WORK/sq-in/state/state.db" "select count(*) from alerts")
INTAKE[embedded]=$(python3 -c "print(round($stored / $SECS))")
echo "embedded store: ${INTAKE[embedded]} alerts/s"
stop "$PID"
for replicas in 1 2; do
  new_db
  urls=()
  for r in $(seq "$replicas"); do start_on_pg "$WORK/pg-in-$replicas-$r"; urls+=("$URL"); done
  load "pg-in-$replicas" BenchNoMatch "${urls[@]}"
  stored=$(pg_count "select count(*) from alerts")
  INTAKE[pg$replicas]=$(python3 -c "print(round($stored / $SECS))")
  echo "PostgreSQL, $replicas replica(s): ${INTAKE[pg$replicas]} alerts/s"
  for p in "${SERVERS[@]:1}"; do stop "$p"; done
  SERVERS=("$PG_PID")
done

echo "== end to end through a log step, 10 alerts per request, wrk -c32 -d$DURATION, then until the queue is empty"
rate_sqlite() { python3 - "$1" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
n, first, last = db.execute("select count(*), min(created_ms), max(finished_ms) from executions where state = 'succeeded'").fetchone()
print(round(n / ((last - first) / 1000)))
PY
}
mkdir -p "$WORK/sq-e2e"
start "$WORK/sq-e2e" "$WORK/runbooks"
load sq-e2e BenchLog "$URL"
db="$WORK/sq-e2e/state/state.db"
until [ "$(count "$db" "select count(*) from executions where state in ('queued','running')")" = 0 ]; do sleep 0.2; done
E2E[embedded]=$(rate_sqlite "$db")
echo "embedded store: ${E2E[embedded]} runs/s ($(count "$db" "select count(*) from executions where state = 'succeeded'") succeeded)"
stop "$PID"
for replicas in 1 2; do
  new_db
  urls=()
  for r in $(seq "$replicas"); do start_on_pg "$WORK/pg-e2e-$replicas-$r"; urls+=("$URL"); done
  load "pg-e2e-$replicas" BenchLog "${urls[@]}"
  until [ "$(pg_count "select count(*) from executions where state in ('queued','running')")" = 0 ]; do sleep 0.2; done
  E2E[pg$replicas]=$(pg_count "select round(count(*) / ((max(finished_ms) - min(created_ms)) / 1000.0)) from executions where state = 'succeeded'")
  echo "PostgreSQL, $replicas replica(s): ${E2E[pg$replicas]} runs/s ($(pg_count "select count(*) from executions where state = 'succeeded'") succeeded; spread over replicas: $(pg_count "select string_agg(n::text, ' / ') from (select count(*) n from audit where kind = (select id from audit_names where name = 'execution.started') group by split_part(data::jsonb ->> 'worker', '/', 1)) s"))"
  for p in "${SERVERS[@]:1}"; do stop "$p"; done
  SERVERS=("$PG_PID")
done

echo "== summary (targets with two replicas: >= 3000 alerts/s intake, >= 1500 runs/s end to end)"
printf '%-22s %12s %12s\n' store "intake/s" "runs/s"
for k in embedded pg1 pg2; do printf '%-22s %12s %12s\n' "$k" "${INTAKE[$k]}" "${E2E[$k]}"; done
echo "two replicas vs embedded: intake $(ratio "${INTAKE[pg2]}" "${INTAKE[embedded]}"), end to end $(ratio "${E2E[pg2]}" "${E2E[embedded]}")"
