#!/usr/bin/env bash
# Soak: alerts at a steady RATE for SOAK_SECONDS across TARGETS targets, through a
# runbook with a 1m cooldown (most alerts blocked, some run), as a busy day
# looks. Prints bytes on disk per alert and RSS over time. Needs wrk, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-1000}
SECONDS_TOTAL=${SOAK_SECONDS:-60}
TARGETS=${TARGETS:-3000}
source bench/lib.sh
mkdir -p "$WORK/runbooks" "$WORK/s"
cp bench/runbooks/soak-log.yaml "$WORK/runbooks/"
start "$WORK/s" "$WORK/runbooks"
db="$WORK/s/state/state.db"
conns=32
delay=$(python3 -c "print(max(1, round($conns * 1000 / $RATE)))")
ALERTNAME=BenchSoak RUN=soak TARGETS=$TARGETS DELAY_MS=$delay wrk -t1 -c$conns -d"${SECONDS_TOTAL}s" -s bench/paced.lua "$URL/v1/alerts/alertmanager" > "$WORK/wrk.txt" &
WRK=$!
for i in $(seq 1 6); do
  sleep $((SECONDS_TOTAL / 6))
  echo "t+$((i * SECONDS_TOTAL / 6))s: RSS $(rss $PID)"
done
wait $WRK
until [ "$(count "$db" "select count(*) from executions where state in ('queued', 'running')")" = 0 ]; do sleep 0.2; done
stop $PID
python3 - "$db" <<'PY'
import os, sqlite3, sys
path = sys.argv[1]
db = sqlite3.connect(path)
db.execute("pragma wal_checkpoint(TRUNCATE)")
alerts = db.execute("select count(*) from alerts").fetchone()[0]
states = dict(db.execute("select state, count(*) from executions group by state").fetchall())
size = os.path.getsize(path)
print(f"{alerts} alerts ({states}); state.db {size / 2**20:.1f} MiB = {size / alerts:.0f} bytes per alert")
PY
echo "artifact folders: $(find "$WORK/s/state" -mindepth 2 -maxdepth 2 -path '*/artifacts/*' 2>/dev/null | wc -l)"
