#!/usr/bin/env bash
# Intake and end-to-end benchmark on loopback, bounded in count and time.
# Needs wrk (apt-get install -y wrk) and python3. Prints the numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
source bench/lib.sh
mkdir -p "$WORK/runbooks"
cp bench/runbooks/bench-log.yaml "$WORK/runbooks/"
echo "== startup with the example runbooks: 7 starts with a new state dir, then 7 with it existing"
new=() existing=()
for i in 1 2 3 4 5 6 7; do
  mkdir -p "$WORK/ex$i"
  start "$WORK/ex$i" "$PWD/runbooks" "$PWD/plugins"
  new+=("$STARTUP")
  if [ "$i" = 1 ]; then sleep 1; idle=$(rss $PID); fi
  stop $PID
done
for i in 1 2 3 4 5 6 7; do
  start "$WORK/ex$i" "$PWD/runbooks" "$PWD/plugins"
  existing+=("$STARTUP")
  stop $PID
done
spread() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {printf "median %s ms (%s-%s)", v[int((NR+1)/2)], v[1], v[NR]}'; }
echo "start to ready, new state dir: $(spread "${new[@]}"); existing state: $(spread "${existing[@]}"); idle RSS $idle"

for per in 1 10; do
  echo "== durable intake, $per alert(s) per request (no runbook matches), wrk -t2 -c32 -d$DURATION"
  mkdir -p "$WORK/in$per"
  start "$WORK/in$per" "$WORK/runbooks"
  idle=$(rss $PID)
  ALERTS_PER_REQUEST=$per RUN="in$per" wrk -t2 -c32 -d"$DURATION" -s bench/alerts.lua "$URL/v1/alerts/alertmanager" > "$WORK/wrk.txt"
  grep -E "Requests/sec|requests " "$WORK/wrk.txt"
  stored=$(count "$WORK/in$per/state/state.db" "select count(*) from alerts")
  secs=$(grep -oE "in [0-9.]+s" "$WORK/wrk.txt" | head -1 | tr -dc '0-9.')
  echo "alerts stored: $stored; alerts/s acknowledged durably: $(python3 -c "print(round($stored / $secs))"); RSS idle $idle, peak $(hwm $PID)"
  stop $PID
done

echo "== end to end through a log step, 10 alerts per request"
mkdir -p "$WORK/e2e"
start "$WORK/e2e" "$WORK/runbooks"
ALERTS_PER_REQUEST=10 ALERTNAME=BenchLog RUN=e2e wrk -t2 -c32 -d"$DURATION" -s bench/alerts.lua "$URL/v1/alerts/alertmanager" > "$WORK/wrk.txt"
grep -E "Requests/sec|requests " "$WORK/wrk.txt"
db="$WORK/e2e/state/state.db"
until [ "$(count "$db" "select count(*) from executions where state in ('queued','running')")" = 0 ]; do sleep 0.2; done
python3 - "$db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
n, first, last = db.execute("select count(*), min(created_ms), max(finished_ms) from executions where state = 'succeeded'").fetchone()
print(f"executions succeeded: {n} in {(last - first) / 1000:.1f} s = {n / ((last - first) / 1000):.0f} alerts/s end to end")
# While wrk floods, intake and execution share the writer; after it stops, the backlog runs alone.
flood_end = db.execute("select max(created_ms) from executions").fetchone()[0]
during = db.execute("select count(*) from executions where state = 'succeeded' and finished_ms <= ?", (flood_end,)).fetchone()[0]
after = n - during
if last > flood_end and after:
    print(f"  while intake ran: {during / ((flood_end - first) / 1000):.0f}/s executed; backlog alone: {after / ((last - flood_end) / 1000):.0f}/s")
PY
echo "RSS after load: $(rss $PID), peak $(hwm $PID)"
stop $PID

echo "== POST -> step start latency at a fixed 200 alerts/s for 10 s"
mkdir -p "$WORK/lat"
start "$WORK/lat" "$WORK/runbooks"
DB="$WORK/lat/state/state.db" paced_latency BenchLog
stop $PID
