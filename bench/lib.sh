# Shared by the benchmarks: build, start `serve` on a free loopback port,
# read its memory, query its state. Source it after `cd` to the repository.
command -v wrk >/dev/null || { echo "install wrk: apt-get install -y wrk" >&2; exit 2; }
cargo build --release --quiet
BIN=$PWD/target/release/pitcrew
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "$WORK"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start() {  # start DIR RUNBOOKS [PLUGINS] -> sets PID, URL, STARTUP (ms to ready)
  local dir=$1 runbooks=$2 plugins=${3:-$1/none} port
  port=$(free_port)
  printf 'listen: 127.0.0.1:%s\nstate_dir: %s/state\nrunbooks: [%s]\nplugins: %s\n' "$port" "$dir" "$runbooks" "$plugins" > "$dir/pitcrew.yaml"
  local t0; t0=$(date +%s.%N)
  PITCREW_LOG=warn "$BIN" --config "$dir/pitcrew.yaml" serve ${WORKERS:+--workers $WORKERS} >"$dir/serve.log" 2>&1 &
  PID=$!
  URL="http://127.0.0.1:$port"
  until curl -sf "$URL/readyz" >/dev/null; do
    kill -0 $PID 2>/dev/null || { cat "$dir/serve.log" >&2; exit 1; }
    sleep 0.01
  done
  STARTUP=$(python3 -c "print(f'{($(date +%s.%N) - $t0) * 1000:.0f}')")
}
stop() { kill "$1"; wait "$1" 2>/dev/null || true; }
rss() { awk '/^VmRSS/ {printf "%.1f MiB", $2/1024}' "/proc/$1/status"; }
hwm() { awk '/^VmHWM/ {printf "%.1f MiB", $2/1024}' "/proc/$1/status"; }
count() { python3 - "$1" "$2" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
print(db.execute(sys.argv[2]).fetchone()[0])
PY
}
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
