#!/usr/bin/env bash
# Storms on one target, bounded in count and time. Prints, measured in the
# same run: nginx `return 200` as the ceiling of this machine under the same
# wrk load; durable intake of alerts that match nothing; alerts that match a
# runbook, all on one target, at the start and again after >= 100,000 stored
# executions on it; then 10,000 alerts for one service through a real
# Alertmanager. Needs wrk, nginx-light, prometheus-alertmanager, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-8}           # seconds per measured wrk run
HISTORY=${HISTORY:-100000}        # stored executions on the target before the second measurement
for need in /usr/sbin/nginx:nginx-light /usr/bin/prometheus-alertmanager:prometheus-alertmanager; do
  [ -x "${need%%:*}" ] || { echo "install ${need#*:}: apt-get install -y ${need#*:}" >&2; exit 2; }
done
source bench/lib.sh
mkdir -p "$WORK/runbooks"
cp bench/runbooks/storm-log.yaml "$WORK/runbooks/"

# wrk_rate NAME RUN DB -> alerts acknowledged durably per second (stored alerts / wrk's time)
wrk_rate() {
  local before after secs
  before=$(count "$3" "select count(*) from alerts")
  ALERTNAME=$1 RUN=$2 wrk -t2 -c32 -d"${DURATION}s" -s bench/alerts.lua "$URL/v1/alerts/alertmanager" > "$WORK/wrk.txt"
  after=$(count "$3" "select count(*) from alerts")
  secs=$(grep -oE "in [0-9.]+s" "$WORK/wrk.txt" | head -1 | tr -dc '0-9.')
  python3 -c "print(round(($after - $before) / $secs))"
}

echo "== nginx return 200 (same wrk load: -t2 -c32, one alert per request)"
port=$(free_port)
mkdir -p "$WORK/nginx"
cat > "$WORK/nginx/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx;
  server { listen 127.0.0.1:$port; location / { return 200; } }
}
NGINX
/usr/sbin/nginx -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
NGINX_PID=$!
until curl -s -o /dev/null "http://127.0.0.1:$port/"; do
  kill -0 $NGINX_PID 2>/dev/null || { cat "$WORK/nginx/error.log" >&2; exit 1; }
  sleep 0.01
done
wrk -t2 -c32 -d"${DURATION}s" -s bench/alerts.lua "http://127.0.0.1:$port/" > "$WORK/wrk.txt"
nginx=$(grep -oE "Requests/sec: +[0-9.]+" "$WORK/wrk.txt" | tr -dc '0-9.')
stop $NGINX_PID
echo "nginx: $nginx requests/s"

mkdir -p "$WORK/s"
start "$WORK/s" "$WORK/runbooks"
db="$WORK/s/state/state.db"
echo "== durable intake, alerts that match no runbook"
nomatch=$(wrk_rate BenchNoMatch nomatch "$db")
echo "no match: $nomatch alerts/s"
echo "== alerts that match a runbook, all on one target (cooldown 10m: all but the first blocked)"
fresh=$(wrk_rate BenchStorm fresh "$db")
echo "fresh target: $fresh alerts/s"
fill=0
while [ "$(count "$db" "select count(*) from executions where target = 'checkout'")" -lt "$HISTORY" ]; do
  fill=$((fill + 1))
  ALERTNAME=BenchStorm RUN="fill$fill" wrk -t2 -c32 -d5s -s bench/alerts.lua "$URL/v1/alerts/alertmanager" > /dev/null
  [ $fill -lt 60 ] || { echo "could not store $HISTORY executions in 5 minutes" >&2; exit 1; }
done
stored=$(count "$db" "select count(*) from executions where target = 'checkout'")
later=$(wrk_rate BenchStorm later "$db")
echo "after $stored stored executions on the target: $later alerts/s"
echo "state.db: $(du -m "$db" | cut -f1) MiB (+ WAL $(du -m "$db-wal" 2>/dev/null | cut -f1) MiB) for $(count "$db" "select count(*) from alerts") alerts"
stop $PID

echo "== 10,000 alerts for one service through a real Alertmanager"
AM=$(command -v prometheus-alertmanager || echo /usr/bin/prometheus-alertmanager)
mkdir -p "$WORK/am" "$WORK/a"
start "$WORK/a" "$WORK/runbooks"
am_port=$(free_port)
cat > "$WORK/am/am.yml" <<YAML
route:
  receiver: pitcrew
  group_by: ['alertname', 'instance']
  group_wait: 1s
  group_interval: 5s
  repeat_interval: 1h
receivers:
  - name: pitcrew
    webhook_configs:
      - url: $URL/v1/alerts/alertmanager
        send_resolved: true
        max_alerts: 0
YAML
"$AM" --config.file="$WORK/am/am.yml" --storage.path="$WORK/am/data" --web.listen-address="127.0.0.1:$am_port" \
  --cluster.listen-address= --web.external-url="http://127.0.0.1:$am_port" --log.level=warn >"$WORK/am/log" 2>&1 &
until curl -sf "http://127.0.0.1:$am_port/-/ready" >/dev/null; do sleep 0.05; done
python3 - "http://127.0.0.1:$am_port" "$WORK/a/state/state.db" <<'PY'
import json, sqlite3, sys, time, urllib.request, re
am, dbpath = sys.argv[1], sys.argv[2]
N = 10_000
t0 = time.time()
for start in range(0, N, 500):
    batch = [{"labels": {"alertname": "BenchStorm", "service": "checkout", "instance": f"pod-{i}"},
              "annotations": {"summary": "storm"}} for i in range(start, start + 500)]
    req = urllib.request.Request(am + "/api/v2/alerts", data=json.dumps(batch).encode(),
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req).read()
pushed = time.time()
db = sqlite3.connect(dbpath)
deadline = pushed + 180
while True:
    n = db.execute("select count(*) from alerts").fetchone()[0]
    if n >= N or time.time() > deadline:
        break
    time.sleep(0.1)
done = time.time()
metrics = urllib.request.urlopen(am + "/metrics").read().decode()
def metric(name):
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith(name) and 'integration="webhook"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)
print(f"pushed in {pushed - t0:.1f} s; {n} of {N} alerts stored {done - pushed:.1f} s after the push")
print(f"alertmanager: notifications {metric('alertmanager_notifications_total')}, "
      f"failed {metric('alertmanager_notifications_failed_total')} (must be 0)")
PY
stop $PID

echo "== summary (ratios measured in this run)"
echo "storm after $stored executions vs fresh target: $(ratio "$later" "$fresh")   (target >= 0.8)"
echo "matching on one target vs matching nothing:     $(ratio "$fresh" "$nomatch")   (target >= 0.5)"
echo "matching on one target vs nginx return 200:     $(ratio "$fresh" "$nginx")   (target >= 0.25)"
