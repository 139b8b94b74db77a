#!/usr/bin/env bash
# Times 4 MiB downloads from nginx through Switchyard's L7 and L4 listeners
# on each live backend in one topology (scripts/netns.sh), for comparing
# backends: 20 sequential curl downloads per listener and backend, median
# and fastest. Needs root, nginx, curl and a built binary.
#
#   scripts/download_times.sh [BINARY] [BACKENDS...]
#   (default: target/debug/switchyard af_packet:lb0 af_xdp:lb0)
set -euo pipefail
BIN=${1:-target/debug/switchyard}
shift || true
NICS=("$@")
[ ${#NICS[@]} -gt 0 ] || NICS=(af_packet:lb0 af_xdp:lb0)
P=sydt-
D=$(mktemp -d)
HERE=$(dirname "$0")
cleanup() {
    bash "$HERE/netns.sh" down "$P"
    rm -rf "$D"
}
trap cleanup EXIT
chmod 755 "$D"
mkdir -p "$D/www"
head -c $((4 << 20)) /dev/urandom >"$D/www/big.bin"
cat >"$D/nginx.conf" <<CONF
daemon on; worker_processes 1; pid $D/nginx.pid; error_log $D/nginx.err;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $D/b; proxy_temp_path $D/p;
 fastcgi_temp_path $D/f; uwsgi_temp_path $D/u; scgi_temp_path $D/s;
 server { listen 198.18.0.21:8080; root $D/www; } }
CONF
bash "$HERE/netns.sh" up "$P" >/dev/null
ip netns exec "${P}be" /usr/sbin/nginx -c "$D/nginx.conf"
for nic in "${NICS[@]}"; do
    cat >"$D/run.toml" <<CONF
[device]
nic = "$nic"
mac = "02:53:59:00:00:02"
addresses = ["198.18.0.2/24"]

[[listener]]
name = "web"
mode = "l7"
address = "198.18.0.10:80"
  [[listener.route]]
  pool = "a"

[[listener]]
name = "tcp"
mode = "l4"
address = "198.18.0.10:8080"
pool = "a"

[[pool]]
name = "a"
backends = [{ name = "a1", address = "198.18.0.21:8080" }]
CONF
    ip netns exec "${P}lb" "$BIN" run --config "$D/run.toml" --seconds 60 >"$D/out" 2>&1 &
    pid=$!
    sleep 1
    for url in http://198.18.0.10/big.bin http://198.18.0.10:8080/big.bin; do
        t=$(ip netns exec "${P}cl" sh -c "for i in \$(seq 1 20); do curl -fsS -m 20 -o /dev/null -w '%{time_total}\n' $url; done" | sort -n)
        echo "$nic $url: median $(echo "$t" | sed -n 10p) s, fastest $(echo "$t" | head -1) s"
    done
    kill -TERM "$pid"
    wait "$pid" || true
    grep "running on" "$D/out" || cat "$D/out"
done
