#!/usr/bin/env bash
# One command, on a fresh Debian 12 machine as root: set moorage up, start the engine on
# its embedded Redis (`moor up`), and drive a real container lifecycle through it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh

export MOOR_DATA_ROOT=${MOOR_DATA_ROOT:-/var/lib/moorage}
unset MOOR_REDIS_URL  # the embedded default: moor starts (and reuses) its own Redis
moor() { python3 -m moor.cli "$@"; }

say "moor up (embedded Redis, reducer, worker, Docker API)"
mkdir -p "$MOOR_DATA_ROOT"
python3 -m moor.cli up >"$MOOR_DATA_ROOT/up.log" 2>&1 &
UP=$!
# SIGTERM: moor up stops its children and the Redis it started (containers would stay).
trap 'kill -TERM $UP 2>/dev/null; wait $UP 2>/dev/null || true' EXIT
for _ in $(seq 300); do  # until the API listens: the last of its children to be ready
    grep -q "moor api: listening" "$MOOR_DATA_ROOT/up.log" && break
    kill -0 $UP 2>/dev/null || { cat "$MOOR_DATA_ROOT/up.log"; exit 1; }
    sleep 0.1
done
sed -n 's/^moor up: //p' "$MOOR_DATA_ROOT/up.log"  # which process is which

say "a busybox image from Debian's busybox-static"
tar=$(mktemp --suffix=.tar)
python3 -c "from tests.imagebuild import busybox_rootfs_tar; busybox_rootfs_tar('$tar')"
moor image import "$tar" busybox
rm -f "$tar"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

say "run -d -p $port:80 busybox httpd"
moor rm -f quickstart-web >/dev/null 2>&1 || true
moor --reason "quick start" run -d --name quickstart-web -p "$port:80" busybox \
    sh -c 'echo hello from moorage > /www.html; exec httpd -f -p 80 -h /'
moor ps
say "HTTP from the host:"
python3 - "$port" <<'PY'
import sys, time, urllib.request
for attempt in range(50):  # httpd needs a moment to listen after the start is reported
    try:
        print(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/www.html").read().decode().strip())
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("no answer from the published port")
PY
say "inspect"; moor inspect quickstart-web | python3 -c 'import json,sys; d=json.load(sys.stdin)[0]; print(d["State"]["Status"], d["State"]["Pid"], d["NetworkSettings"]["IPAddress"])'
say "restart, stop, rm"
moor restart -t 1 quickstart-web
moor stop -t 1 quickstart-web
moor ps -a --filter name=quickstart-web
moor rm quickstart-web
say "the journal (docker events shape) and an audited replay"
moor events --since 10m --until 0s --filter container=quickstart-web
moor replay --verify | tail -3
say "done; the engine stops now (run \`python3 -m moor.cli up\` to keep it running)"
