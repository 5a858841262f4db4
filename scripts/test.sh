#!/usr/bin/env bash
# The whole test suite. Installs the real parts the tests start (Debian
# packages) when they are missing, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }
have prometheus-alertmanager || missing+=(prometheus-alertmanager)
have prometheus || missing+=(prometheus)
have pgbouncer || missing+=(pgbouncer)
have psql || missing+=(postgresql-client)
have python3 || missing+=(python3)
# The dashboard's tests drive a headless Chromium through ChromeDriver.
have chromium || missing+=(chromium)
have chromedriver || missing+=(chromium-driver)
# The server binaries are off PATH (/usr/lib/postgresql/<version>/bin).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)

if [ ${#missing[@]} -gt 0 ]; then
  echo "installing test dependencies: ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  if [[ " ${missing[*]} " == *" postgresql "* ]]; then
    # The tests make their own throw-away clusters; a first install would
    # otherwise create a system one ("main", port 5432) nobody uses.
    $sudo mkdir -p /etc/postgresql-common/createcluster.d
    echo 'create_main_cluster = false' | $sudo tee /etc/postgresql-common/createcluster.d/pitcrew-tests.conf >/dev/null
  fi
  # policy-rc.d: packages must not start their own daemons; tests start them.
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# failpoints: the fault-injection tests crash a real `pitcrew serve` at
# named places (src/failpoint.rs); the feature is for tests only.
cargo test --locked --all-targets --features failpoints "$@"
