# Shared by the benchmark scripts in bench/ (sourced, not run): arguments,
# the namespaces of scripts/netns.sh with a scratch folder removed on exit,
# the nginx and iperf3 backends, and the CPU time of a process.
#
# Sets: root, secs, rounds (from --seconds / --rounds), P, work, and n().

# bench_init NAME PREFIX DEFAULT_SECONDS DEFAULT_ROUNDS "$@"
bench_init() {
    local name=$1
    P=$2
    secs=$3
    rounds=$4
    shift 4
    while [ $# -gt 0 ]; do
        case "$1" in
        --seconds) secs=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        *) echo "usage: $0 [--seconds N] [--rounds R]" >&2; exit 2 ;;
        esac
    done
    [ "$(id -u)" = 0 ] || { echo "$name: needs root (network namespaces)" >&2; exit 2; }
    work=$(mktemp -d "/tmp/switchyard-$P.XXXXXX")
    chmod 755 "$work"   # nginx workers (www-data) read the files
    trap bench_cleanup EXIT
}

bench_cleanup() {
    bash "$root/scripts/netns.sh" down "$P" || true
    rm -rf "$work"
}

# A command in namespace $P$1.
n() { ip netns exec "$P$1" "${@:2}"; }

# The topology, with the kernel in the load balancer's namespace quiet towards
# Switchyard's ports (the kernel proxies get addresses on br0).
bench_topology() {
    bash "$root/scripts/netns.sh" up "$P"
    n lb sysctl -qw net.ipv4.conf.lb0.arp_ignore=1 net.ipv4.conf.tap0.arp_ignore=1
    n lb ip link set lo up
}

# nginx serving a 1 KiB body on 198.18.0.21:8080 and 198.18.0.22:8080, and an
# iperf3 server on 198.18.0.21 for each port given, all on CPU 0.
bench_backends() {
    mkdir -p "$work/www"
    head -c 1024 /dev/zero | tr '\0' 'x' > "$work/www/1k"
    cat > "$work/backend.conf" <<CONF
daemon on; worker_processes 1; pid $work/backend.pid; error_log $work/backend.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $work/b; proxy_temp_path $work/p; fastcgi_temp_path $work/f;
  uwsgi_temp_path $work/u; scgi_temp_path $work/s;
  server { listen 198.18.0.21:8080 backlog=4096; root $work/www; }
  server { listen 198.18.0.22:8080 backlog=4096; root $work/www; } }
CONF
    n be taskset -c 0 /usr/sbin/nginx -c "$work/backend.conf"
    local port
    for port in "$@"; do
        n be taskset -c 0 iperf3 -s -B 198.18.0.21 -p "$port" -D
    done
}

# HAProxy's configuration, one thread, on 198.18.0.11: HTTP on :80 to the
# nginx backends (pool `web`, connections reused), then the sections given
# on standard input.
haproxy_config() {
    cat <<CONF
global
  maxconn 8192
  nbthread 1
defaults
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend http
  mode http
  bind 198.18.0.11:80
  option http-keep-alive
  default_backend web
backend web
  mode http
  http-reuse always
  server w1 198.18.0.21:8080
  server w2 198.18.0.22:8080
CONF
    cat
}

# Switchyard's configuration on this topology: device NIC ($1) with $2
# workers (default 1), an L7 listener `http` on 198.18.0.10:80 and the nginx
# pool `web`, then the listeners and pools given on standard input.
switchyard_config() {
    cat <<CONF
[device]
nic = "$1"
mac = "02:53:59:00:00:02"
addresses = ["198.18.0.2/24"]
workers = ${2:-1}
[[listener]]
name = "http"
mode = "l7"
address = "198.18.0.10:80"
  [[listener.route]]
  pool = "web"
[[pool]]
name = "web"
backends = [{ name = "w1", address = "198.18.0.21:8080" }, { name = "w2", address = "198.18.0.22:8080" }]
CONF
    cat
}

# The HTTPS listener the TLS benchmarks share: `https` on 198.18.0.10:443
# with the certificate of bench_certificate, every request to `web`.
switchyard_https_listener() {
    cat <<CONF
[[listener]]
name = "https"
mode = "l7"
address = "198.18.0.10:443"
tls = { cert = "$work/cert.pem", key = "$work/key.pem" }
  [[listener.route]]
  pool = "web"
CONF
}

# The L4 listener the bulk benchmarks share: `tcp` on 198.18.0.10:5201 to
# the iperf3 server on 198.18.0.21:5201 (pool `iperf`).
switchyard_iperf_listener() {
    cat <<CONF
[[listener]]
name = "tcp"
mode = "l4"
address = "198.18.0.10:5201"
pool = "iperf"
[[pool]]
name = "iperf"
backends = [{ name = "i1", address = "198.18.0.21:5201" }]
CONF
}

# One ECDSA P-256 certificate for the TLS listeners, for the name
# switchyard.test (a client that verifies, such as tls-load, trusts cert.pem
# itself): cert.pem and key.pem in $work, and both in bundle.pem (HAProxy's form).
bench_certificate() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/key.pem" \
        -out "$work/cert.pem" -subj /CN=switchyard.test -addext subjectAltName=DNS:switchyard.test \
        -addext basicConstraints=critical,CA:FALSE -days 2 2>/dev/null
    cat "$work/cert.pem" "$work/key.pem" > "$work/bundle.pem"
}

# CPU seconds (user + system) of process $1 so far.
cpu() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / t }' "/proc/$1/stat"; }
# The part of it spent in the kernel (system time).
cpu_sys() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.3f", $15 / t }' "/proc/$1/stat"; }
# How many times its threads have gone to sleep (voluntary context switches).
# (Threads that have exited are no longer counted; one that exits while this
# reads is skipped.)
sleeps() { { cat /proc/"$1"/task/*/status 2>/dev/null || true; } | awk '/^voluntary_ctxt_switches/ { n += $2 } END { print n + 0 }'; }
