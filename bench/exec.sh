#!/usr/bin/env bash
# Exec end to end: alerts whose runbook runs `/bin/true` (distinct targets),
# against the spawn ceiling of this machine measured in the same run (two
# processes spawning and reaping /bin/true as fast as they can), with the
# server's CPU time per alert; then POST -> step start for exec at a paced
# 200 alerts/s. Needs wrk and python3. Bounded in count and time.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-8}
source bench/lib.sh
mkdir -p "$WORK/runbooks" "$WORK/x" "$WORK/l"
cp bench/runbooks/bench-exec.yaml "$WORK/runbooks/"

echo "== spawn ceiling: 2 processes, posix_spawn + waitpid of /bin/true for 3 s"
ceiling=$(python3 - <<'PY'
import os, time, multiprocessing as mp
def spin(q):
    n, end = 0, time.time() + 3
    while time.time() < end:
        pid = os.posix_spawn("/bin/true", ["/bin/true"], {})
        os.waitpid(pid, 0)
        n += 1
    q.put(n)
q = mp.Queue()
ps = [mp.Process(target=spin, args=(q,)) for _ in range(2)]
[p.start() for p in ps]; [p.join() for p in ps]
print(round(sum(q.get() for _ in ps) / 3))
PY
)
echo "spawn ceiling: $ceiling spawns/s"

echo "== exec end to end, wrk -t1 -c${CONNS:-16} -d${DURATION}s, one alert per request"
start "$WORK/x" "$WORK/runbooks"
db="$WORK/x/state/state.db"
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
cpu0=$(cpu $PID)
ALERTNAME=BenchExec RUN=exec wrk -t1 -c${CONNS:-16} -d"${DURATION}s" -s bench/alerts.lua "$URL/v1/alerts/alertmanager" > "$WORK/wrk.txt"
until [ "$(count "$db" "select count(*) from executions where state in ('queued', 'running')")" = 0 ]; do sleep 0.2; done
cpu1=$(cpu $PID)
rate=$(python3 - "$db" "$cpu0" "$cpu1" "$(getconf CLK_TCK)" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
n, first, last = db.execute("select count(*), min(created_ms), max(finished_ms) from executions where state = 'succeeded'").fetchone()
bad = db.execute("select count(*) from executions where state <> 'succeeded'").fetchone()[0]
ticks = (int(sys.argv[3]) - int(sys.argv[2])) / int(sys.argv[4])
rate = n / ((last - first) / 1000)
import sys as s
print(f"{rate:.0f}")
s.stderr.write(f"executions succeeded: {n} ({bad} not) in {(last - first) / 1000:.1f} s = {rate:.0f} exec alerts/s; "
               f"server CPU {ticks * 1000 / n:.2f} ms per alert\n")
PY
)
stop $PID

echo "== POST -> step.started for exec at a paced 200 alerts/s for 10 s"
start "$WORK/l" "$WORK/runbooks"
DB="$WORK/l/state/state.db" paced_latency BenchExec
stop $PID
echo "== summary: exec end to end $rate/s vs spawn ceiling $ceiling/s = $(ratio "$rate" "$ceiling")   (target >= 0.8)"
