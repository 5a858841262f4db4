# Shared by the benchmarks: build, start `serve` on a free loopback port,
# read its memory, query its state. Source it after `cd` to the repository.
command -v wrk >/dev/null || { echo "install wrk: apt-get install -y wrk" >&2; exit 2; }
# The shipped build (fat LTO): the numbers are those of the binary users run.
# PITCREW_BIN=path runs that binary instead, unbuilt: to compare two builds
# on a noisy host, interleave runs of each.
if [ -z "${PITCREW_BIN:-}" ]; then
  cargo build --profile dist --quiet
fi
BIN=${PITCREW_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/dist/pitcrew}
WORK=$(mktemp -d)
SERVERS=()
trap 'kill $(jobs -p) ${SERVERS[@]+"${SERVERS[@]}"} 2>/dev/null || true; wait 2>/dev/null; rm -rf "$WORK"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start() {  # start DIR RUNBOOKS [PLUGINS] -> sets PID, URL, STARTUP (ms to ready); EXTRA_CONFIG: more config lines
  local dir=$1 runbooks=$2 plugins=${3:-$1/none} port
  port=$(free_port)
  printf 'listen: 127.0.0.1:%s\nstate_dir: %s/state\nrunbooks: [%s]\nplugins: %s\n%s' "$port" "$dir" "$runbooks" "$plugins" "${EXTRA_CONFIG:-}" > "$dir/pitcrew.yaml"
  URL="http://127.0.0.1:$port"
  # Spawned and polled from one process, so the time to ready is the
  # server's, not that of starting curl in a loop.
  read -r PID STARTUP < <(python3 - "$BIN" "$dir" "$port" ${WORKERS:+--workers $WORKERS} <<'PY'
import socket, subprocess, sys, time
binary, d, port, extra = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
log = open(f"{d}/serve.log", "w")
t0 = time.perf_counter()
p = subprocess.Popen([binary, "--config", f"{d}/pitcrew.yaml", "serve", *extra], stdout=log, stderr=log,
                     env={"PITCREW_LOG": "warn", "PATH": "/usr/bin:/bin"}, start_new_session=True)
request = b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
while True:
    if p.poll() is not None:
        sys.exit(f"serve exited with {p.returncode}; see {d}/serve.log")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(request)
            if s.recv(64).startswith(b"HTTP/1.1 200"):
                break
    except OSError:
        time.sleep(0.0002)
print(p.pid, f"{(time.perf_counter() - t0) * 1000:.1f}")
PY
)
  [ -n "${PID:-}" ] || { cat "$dir/serve.log" >&2; exit 1; }
  SERVERS+=("$PID")
}
stop() {  # stop PID: SIGTERM, then wait until it is gone
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true  # our own background job (nginx): reap it
  while kill -0 "$1" 2>/dev/null; do sleep 0.05; done
}
rss() { awk '/^VmRSS/ {printf "%.1f MiB", $2/1024}' "/proc/$1/status"; }
hwm() { awk '/^VmHWM/ {printf "%.1f MiB", $2/1024}' "/proc/$1/status"; }
count() { python3 - "$1" "$2" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
print(db.execute(sys.argv[2]).fetchone()[0])
PY
}
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }

# paced_latency ALERTNAME: 2,000 alerts at a paced 200/s, one per request, to
# the server at $URL (state in $DB); prints POST -> step.started percentiles.
paced_latency() { python3 - "$URL" "$DB" "$1" <<'PY'
import json, sqlite3, sys, time, urllib.request
url, dbpath, name = sys.argv[1], sys.argv[2], sys.argv[3]
sent = {}
start = time.time()
for i in range(2000):
    due = start + i / 200.0
    while time.time() < due:
        time.sleep(max(0, due - time.time()))
    fp = f"lat-{i}"
    body = json.dumps({"version": "4", "status": "firing", "alerts": [{"status": "firing", "labels": {"alertname": name, "n": fp},
                       "startsAt": "2026-11-27T10:00:00Z", "fingerprint": fp}]}).encode()
    req = urllib.request.Request(url + "/v1/alerts/alertmanager", data=body, headers={"Content-Type": "application/json"})
    sent[fp] = time.time()
    urllib.request.urlopen(req).read()
time.sleep(1)
db = sqlite3.connect(dbpath)
lat = sorted((ts / 1e6 - sent[t]) * 1000 for t, ts in db.execute(
    "select target, ts_us from audit where kind = (select id from audit_names where name = 'step.started')") if t in sent)
print(f"{len(lat)} alerts: POST->step.started p50 {lat[len(lat)//2]:.2f} ms, p99 {lat[int(len(lat)*0.99)]:.2f} ms, max {lat[-1]:.2f} ms")
PY
}
