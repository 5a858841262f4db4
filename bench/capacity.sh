#!/usr/bin/env bash
# Steady-state capacity: offered load stepped up through a `log` step on
# distinct targets, each step STEP_SECONDS long. Per step: offered and
# achieved rate, backlog at the end, POST latency (wrk) and the server-side
# time from `alert.received` to `step.started`. Capacity = the highest step
# whose backlog stays flat and whose p99 to step start is below 50 ms.
# Needs wrk and python3. Bounded: 6 steps.
set -euo pipefail
cd "$(dirname "$0")/.."
STEP_SECONDS=${STEP_SECONDS:-15}
RATES=${RATES:-"1000 2000 4000 8000 16000 24000"}
source bench/lib.sh
mkdir -p "$WORK/runbooks" "$WORK/c"
cp bench/runbooks/bench-log.yaml "$WORK/runbooks/"
start "$WORK/c" "$WORK/runbooks"
db="$WORK/c/state/state.db"
printf "%8s %9s %9s %8s %9s %9s %10s %10s\n" offered achieved backlog started "POST p50" "POST p99" "start p50" "start p99"
best=0
for rate in $RATES; do
  # 256 connections, each waiting DELAY_MS between requests (a request's own
  # latency adds to that, so the achieved rate is what counts).
  conns=256
  delay=$(python3 -c "print(max(1, round($conns * 1000 / $rate)))")
  t0=$(python3 -c 'import time; print(int(time.time() * 1000))')
  ALERTNAME=BenchLog RUN="cap$rate" DELAY_MS=$delay wrk -t2 -c$conns -d"${STEP_SECONDS}s" -s bench/paced.lua "$URL/v1/alerts/alertmanager" > "$WORK/wrk.txt"
  line=$(python3 - "$db" "$t0" "$STEP_SECONDS" "$WORK/wrk.txt" "$rate" <<'PY'
import re, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
t0, secs, wrk, rate = int(sys.argv[2]), float(sys.argv[3]), open(sys.argv[4]).read(), int(sys.argv[5])
n = db.execute("select count(*) from executions where created_ms >= ?", (t0,)).fetchone()[0]
backlog = db.execute("select count(*) from executions where state in ('queued', 'running') and created_ms >= ?", (t0,)).fetchone()[0]
lat = sorted(s - r for (s, r) in db.execute(
    """select s.ts_us, r.ts_us from executions e join audit r on r.seq = e.alert_seq
       join audit s on s.execution_id = e.id and s.kind = (select id from audit_names where name = 'step.started')
       where e.created_ms >= ?""", (t0,)))
p = lambda q: lat[min(len(lat) - 1, int(len(lat) * q))] / 1000 if lat else float("nan")
m = re.search(r"p50 ([0-9.]+) ms, p99 ([0-9.]+) ms", wrk)
ok = backlog < rate * 0.05 and p(0.99) < 50
print(f"{rate:8d} {n / secs:9.0f} {backlog:9d} {len(lat):8d} {m.group(1):>8}ms {m.group(2):>8}ms {p(0.5):8.2f}ms {p(0.99):8.2f}ms {'ok' if ok else 'over'}")
PY
)
  echo "$line"
  case "$line" in *ok) best=$(echo "$line" | awk '{print $2}') ;; esac
  # Let the step's backlog drain before the next one.
  until [ "$(count "$db" "select count(*) from executions where state in ('queued', 'running')")" = 0 ]; do sleep 0.2; done
done
echo "capacity: $best alerts/s achieved (the highest step with a flat backlog and p99 alert.received -> step.started < 50 ms); RSS $(rss $PID), peak $(hwm $PID)"
stop $PID
