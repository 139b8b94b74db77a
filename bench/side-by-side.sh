#!/usr/bin/env bash
# Side by side: Switchyard, HAProxy and nginx as load balancers in front of the
# same nginx backends, driven by the same clients, in network namespaces on
# this host (scripts/netns.sh). Each load balancer is pinned to CPU 1, the
# clients and backends to CPU 0; runs are interleaved (A B C A B C ...) so
# drifts in the machine hit every candidate alike. Writes bench/RESULTS.md.
#
#   bash bench/side-by-side.sh [--seconds N] [--rounds R]     (root; default 5 s, 2 rounds)
#   SBS_NIC="af_packet:lb0,v3" bash bench/side-by-side.sh ...   (Switchyard on another port kind)
#   SBS_ONLY="https-new-conn h2-tls" bash bench/side-by-side.sh ...   (only these scenarios;
#                   prints their table and leaves bench/RESULTS.md alone)
#   SBS_BIN=/tmp/switchyard-before SBS_ONLY=... bash bench/side-by-side.sh ...   (another
#                   switchyard binary than target/release/switchyard, e.g. one built before a change)
#
# Scenarios:
#   http-keepalive  wrk, keep-alive connections, GET of a 1 KiB body via L7, at
#                   10, 100 and 1,000 concurrent connections (the sweep plotted in
#                   bench/concurrency.svg; the latency CDF at 100 in bench/latency-cdf.svg)
#   l4-http         the same requests (100 connections) through an L4 listener
#                   (full-NAT / HAProxy mode tcp / nginx stream)
#   https-new-conn  wrk, 16 connections, each request on a new TLS connection
#                   (Connection: close), ECDSA P-256 certificate
#   h2-tls          h2load, HTTP/2 over TLS (ALPN h2), 10 connections x 10 streams
#   tcp-bulk        iperf3, one TCP stream through an L4 (full-NAT / mode tcp / stream) listener
# Measured: requests/s or Gbit/s, wrk's p50/p99 latency, and the load
# balancer's CPU time (utime + stime from /proc) during the run, which gives
# requests per LB CPU-second: the figure that does not depend on how many
# cores a load balancer happened to use.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/common.sh
. "$root/bench/common.sh"
bench_init side-by-side sbs- 5 2 "$@"
for c in haproxy nginx wrk iperf3 h2load taskset; do
    command -v "$c" >/dev/null || [ -x "/usr/sbin/$c" ] || {
        echo "side-by-side: $c is not installed (apt-get install haproxy nginx-light libnginx-mod-stream wrk iperf3 nghttp2-client)" >&2
        exit 2
    }
done
[ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || {
    echo "side-by-side: nginx's stream module is missing (apt-get install libnginx-mod-stream)" >&2
    exit 2
}

[ -n "${SBS_KEEP:-}" ] && trap - EXIT

echo "side-by-side: building switchyard (release)"
(cd "$root" && cargo build --release -q --bin switchyard)
bench_topology

# The kernel proxies need kernel addresses in the load balancer's namespace:
# HAProxy answers on 198.18.0.11, nginx on 198.18.0.12 (on the bridge);
# Switchyard owns 198.18.0.2 and VIP 198.18.0.10 in user space on lb0.
n lb ip addr add 198.18.0.3/24 dev br0
n lb ip addr add 198.18.0.11/24 dev br0
n lb ip addr add 198.18.0.12/24 dev br0

# One ECDSA P-256 certificate for the three TLS listeners.
bench_certificate

# Backends: nginx serving a 1 KiB body on two addresses, iperf3 servers.
bench_backends 5201 5202 5203

# The three load balancers, each pinned to CPU 1.
{ switchyard_https_listener; switchyard_iperf_listener; cat; } <<EOF | switchyard_config "${SBS_NIC:-af_packet:lb0}" > "$work/switchyard.toml"
[[listener]]
name = "l4-http"
mode = "l4"
address = "198.18.0.10:8080"
pool = "web"
EOF
ip netns exec "${P}lb" taskset -c 1 "${SBS_BIN:-$root/target/release/switchyard}" run --config "$work/switchyard.toml" > "$work/switchyard.out" 2>&1 &
sy_pid=$!

haproxy_config > "$work/haproxy.cfg" <<EOF
frontend https
  mode http
  bind 198.18.0.11:443 ssl crt $work/bundle.pem alpn h2,http/1.1
  default_backend web
listen tcp
  mode tcp
  bind 198.18.0.11:5201
  server i1 198.18.0.21:5202
listen l4http
  mode tcp
  bind 198.18.0.11:8080
  balance roundrobin
  server w1 198.18.0.21:8080
  server w2 198.18.0.22:8080
EOF
ip netns exec "${P}lb" taskset -c 1 haproxy -f "$work/haproxy.cfg" -db > "$work/haproxy.out" 2>&1 &
ha_pid=$!

cat > "$work/nginx-lb.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off; master_process off; worker_processes 1; pid $work/lb.pid; error_log $work/lb.err;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $work/lb; proxy_temp_path $work/lp; fastcgi_temp_path $work/lf;
  uwsgi_temp_path $work/lu; scgi_temp_path $work/ls;
  upstream web { server 198.18.0.21:8080; server 198.18.0.22:8080; keepalive 64; }
  server { listen 198.18.0.12:80 backlog=4096;
    location / { proxy_pass http://web; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 198.18.0.12:443 ssl http2 backlog=4096; ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://web; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
stream { upstream l4web { server 198.18.0.21:8080; server 198.18.0.22:8080; }
  server { listen 198.18.0.12:5201; proxy_pass 198.18.0.21:5203; }
  server { listen 198.18.0.12:8080 backlog=4096; proxy_pass l4web; } }
EOF
ip netns exec "${P}lb" taskset -c 1 /usr/sbin/nginx -c "$work/nginx-lb.conf" > "$work/nginx.out" 2>&1 &
ng_pid=$!
sleep 1
for p in $sy_pid $ha_pid $ng_pid; do
    kill -0 "$p" 2>/dev/null || { echo "side-by-side: a load balancer did not start:" >&2; cat "$work"/*.out >&2; exit 1; }
done

declare -A vip=([switchyard]=198.18.0.10 [haproxy]=198.18.0.11 [nginx]=198.18.0.12)
declare -A pid=([switchyard]=$sy_pid [haproxy]=$ha_pid [nginx]=$ng_pid)
lbs=(switchyard haproxy nginx)
results="$work/results.tsv"
: > "$results"

# Warm-up: every path once.
for lb in "${lbs[@]}"; do
    n cl curl -sf -m 5 -o /dev/null "http://${vip[$lb]}/1k" || { echo "side-by-side: $lb does not answer" >&2; kill -TERM "${pid[$lb]}"; sleep 0.5; cat "$work/$lb.out" >&2; exit 1; }
    n cl curl -sfk -m 5 -o /dev/null "https://${vip[$lb]}/1k" || { echo "side-by-side: $lb does not answer over TLS" >&2; exit 1; }
done

# wrk prints these latency percentiles (µs) for the CDF plot.
cat > "$work/cdf.lua" <<'LUA'
done = function(summary, latency, requests)
  io.write("CDF")
  for _, p in ipairs({1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99, 99.9}) do
    io.write(string.format(" %g:%d", p, latency:percentile(p)))
  end
  io.write("\n")
end
LUA
ulimit -n "$(ulimit -Hn)"   # wrk with 1,000 connections needs more than the default 1,024 descriptors
cdfs="$work/cdf.tsv"
: > "$cdfs"

# One wrk run against a load balancer: SCENARIO LB ROUND WRK-ARGS...; a row
# in the results (rate, requests, p50, p99, LB CPU seconds, errors).
wrk_run() {
    local scenario=$1 lb=$2 r=$3
    shift 3
    local c0 c1 k0 k1 out rps total p50 p99 errs cpu_s
    c0=$(cpu "${pid[$lb]}")
    k0=$(cpu_sys "${pid[$lb]}")
    out=$(n cl taskset -c 0 wrk -t1 -d"${secs}s" --latency -s "$work/cdf.lua" "$@")
    awk -v s="$scenario" -v l="$lb" -v r="$r" '$1 == "CDF" { for (i = 2; i <= NF; i++) { split($i, a, ":"); print s "\t" l "\t" r "\t" a[1] "\t" a[2] } }' <<<"$out" >> "$cdfs"
    c1=$(cpu "${pid[$lb]}")
    k1=$(cpu_sys "${pid[$lb]}")
    cpu_s=$(echo "$c1 - $c0" | bc)
    rps=$(awk '/^Requests\/sec/ { print $2 }' <<<"$out")
    total=$(awk '/requests in/ { print $1 }' <<<"$out")
    p50=$(awk '$1 == "50%" { print $2 }' <<<"$out")
    p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
    errs=$(awk '/Non-2xx|Socket errors/ { print }' <<<"$out" | tr '\n' ' ')
    printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n" "$scenario" "$lb" "$r" "$rps" "$total" "$p50" "$p99" "$cpu_s" "${errs:-}" "$(echo "$k1 - $k0" | bc)" >> "$results"
    echo "round $r $scenario $lb: $rps req/s, p50 $p50, p99 $p99, LB CPU $cpu_s s ${errs:-}"
}

# One h2load run (HTTP/2 over TLS): a row like wrk_run's, with h2load's mean
# request time in the p50 column (h2load reports no percentiles).
h2_run() {
    local scenario=$1 lb=$2 r=$3
    local c0 c1 k0 k1 out rps total mean errs cpu_s
    c0=$(cpu "${pid[$lb]}")
    k0=$(cpu_sys "${pid[$lb]}")
    out=$(n cl taskset -c 0 h2load -t1 -c10 -m10 -D "$secs" "https://${vip[$lb]}/1k" 2>&1)
    c1=$(cpu "${pid[$lb]}")
    k1=$(cpu_sys "${pid[$lb]}")
    cpu_s=$(echo "$c1 - $c0" | bc)
    rps=$(awk '/^finished in/ { print $4 }' <<<"$out")
    total=$(awk '/^requests:/ { print $8 }' <<<"$out")
    mean=$(awk '/^time for request:/ { print $6 }' <<<"$out")
    errs=$(awk '/^requests:/ && ($10 != 0 || $12 != 0) { print $10 " failed, " $12 " errored" }' <<<"$out")
    grep -q "Application protocol: h2" <<<"$out" || errs="not HTTP/2 ${errs:-}"
    printf "%s\t%s\t%s\t%s\t%s\t%s\t\t%s\t%s\t%s\n" "$scenario" "$lb" "$r" "$rps" "$total" "$mean" "$cpu_s" "${errs:-}" "$(echo "$k1 - $k0" | bc)" >> "$results"
    echo "round $r $scenario $lb: $rps req/s, mean $mean, LB CPU $cpu_s s ${errs:-}"
}

# Whether scenario $1 is to run (SBS_ONLY unset: all of them).
want() { [ -z "${SBS_ONLY:-}" ] || [[ " $SBS_ONLY " == *" $1 "* ]]; }

for r in $(seq 1 "$rounds"); do
    for c in 10 100 1000; do
        want "http-keepalive-c$c" || continue
        for lb in "${lbs[@]}"; do
            wrk_run "http-keepalive-c$c" "$lb" "$r" -c"$c" "http://${vip[$lb]}/1k"
        done
    done
    want l4-http && for lb in "${lbs[@]}"; do
        wrk_run l4-http "$lb" "$r" -c100 "http://${vip[$lb]}:8080/1k"
    done
    want h2-tls && for lb in "${lbs[@]}"; do
        h2_run h2-tls "$lb" "$r"
    done
    want https-new-conn && for lb in "${lbs[@]}"; do
        wrk_run https-new-conn "$lb" "$r" -c16 -H "Connection: close" "https://${vip[$lb]}/1k"
    done
    want tcp-bulk && for lb in "${lbs[@]}"; do
        c0=$(cpu "${pid[$lb]}")
        k0=$(cpu_sys "${pid[$lb]}")
        j=$(n cl taskset -c 0 iperf3 -c "${vip[$lb]}" -p 5201 -t "$secs" -J)
        c1=$(cpu "${pid[$lb]}")
        k1=$(cpu_sys "${pid[$lb]}")
        bps=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])' <<<"$j")
        gbps=$(echo "scale=3; $bps / 1000000000" | bc)
        printf "tcp-bulk\t%s\t%s\t%s\t\t\t\t%s\t\t%s\n" "$lb" "$r" "$gbps" "$(echo "$c1 - $c0" | bc)" "$(echo "$k1 - $k0" | bc)" >> "$results"
        echo "round $r tcp-bulk $lb: $gbps Gbit/s, LB CPU $(echo "$c1 - $c0" | bc) s"
    done
done

# Only some scenarios: their rows as one table (rate per LB CPU-second,
# summed over rounds), and no results page.
if [ -n "${SBS_ONLY:-}" ]; then
    echo "side-by-side: scenario, load balancer, rate, LB CPU s, rate per LB CPU-second, LB kernel share of CPU (over all rounds)"
    awk -F'\t' '{ k = $1 " " $2; n[k] += $5; c[k] += $8; r[k] += $4; m[k]++; y[k] += $10 }
        END { for (k in n) printf "%s\t%.0f\t%.2f\t%.0f\t%.0f%%\n", k, r[k] / m[k], c[k], (n[k] > 0 ? n[k] : r[k] * m[k]) / (c[k] > 0 ? c[k] : 1), 100 * y[k] / (c[k] > 0 ? c[k] : 1) }' "$results" | sort
    exit 0
fi

# The results page.
python3 - "$results" "$secs" "$rounds" "$cdfs" "$root/bench" > "$root/bench/RESULTS.md" <<'PY'
import sys, statistics, platform, subprocess, datetime
path, secs, rounds, cdf_path, bench_dir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
def model():
    for l in open("/proc/cpuinfo"):
        if l.startswith("model name"):
            return l.split(":", 1)[1].strip()
    return "?"
by = {}
for r in rows:
    by.setdefault((r[0], r[1]), []).append(r)
out = []
out.append("# Benchmark results\n")
out.append("Generated by `bash bench/side-by-side.sh --seconds %d --rounds %d` on %s UTC. "
           "Every figure below comes from that one run; run the command again to reproduce.\n"
           % (secs, rounds, datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M")))
out.append("Machine: %s, %d CPUs, Linux %s. Each load balancer pinned to CPU 1; clients and "
           "nginx backends on CPU 0; network namespaces joined by a bridge and veth pairs "
           "(`scripts/netns.sh`); Switchyard on `af_packet:lb0`, HAProxy %s and nginx %s on the "
           "kernel stack. Runs interleaved, %d rounds of %d s; the table shows the mean of the rounds.\n"
           % (model(), __import__("os").cpu_count(), platform.release(),
              subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.split()[2],
              subprocess.run(["/usr/sbin/nginx", "-v"], capture_output=True, text=True).stderr.strip().split("/")[-1],
              rounds, secs))
def mean(xs):
    xs = [float(x) for x in xs if x not in ("", None)]
    return statistics.mean(xs) if xs else float("nan")
def http_table(scenario, title):
    out.append("## %s\n" % title)
    out.append("| load balancer | requests/s | p50 | p99 | LB CPU s | requests per LB CPU-second | vs best peer | LB CPU µs per request (in the kernel) |")
    out.append("|---|---:|---|---|---:|---:|---:|---:|")
    eff = {}
    for lb in ("switchyard", "haproxy", "nginx"):
        rs = by.get((scenario, lb), [])
        if not rs: continue
        total = sum(float(r[4] or 0) for r in rs); cpu = sum(float(r[7]) for r in rs)
        eff[lb] = total / cpu if cpu > 0 else float("nan")
    peers = [v for k, v in eff.items() if k != "switchyard"]
    best = max(peers) if peers else float("nan")
    for lb in ("switchyard", "haproxy", "nginx"):
        rs = by.get((scenario, lb), [])
        if not rs: continue
        errs = "; ".join(r[8] for r in rs if len(r) > 8 and r[8].strip())
        total = sum(float(r[4] or 0) for r in rs)
        kernel = sum(float(r[9] or 0) for r in rs if len(r) > 9)
        out.append("| %s | %.0f | %s | %s | %.2f | %.0f | %s | %.1f (%.1f) |%s" % (
            lb, mean(r[3] for r in rs), " / ".join(r[5] for r in rs), " / ".join(r[6] for r in rs),
            mean(r[7] for r in rs), eff[lb],
            "%.2f×" % (eff[lb] / best) if lb == "switchyard" else "",
            1e6 / eff[lb], 1e6 * kernel / total if total > 0 else float("nan"),
            (" errors: " + errs) if errs else ""))
    out.append("")
for c in (10, 100, 1000):
    http_table("http-keepalive-c%d" % c, "HTTP/1.1 keep-alive, %d connections (wrk, 1 KiB bodies)" % c)
http_table("l4-http", "HTTP/1.1 through an L4 listener, 100 connections (wrk; Switchyard full-NAT, HAProxy `mode tcp`, nginx `stream`)")
http_table("https-new-conn", "HTTPS, a new TLS connection per request (wrk, 16 connections, `Connection: close`, ECDSA P-256)")
http_table("h2-tls", "HTTP/2 over TLS (h2load, 10 connections x 10 streams; the p50 column is h2load's mean request time)")

# SVG plots, written by hand (no plotting library needed).
COLORS = {"switchyard": "#1f77b4", "haproxy": "#d62728", "nginx": "#2ca02c"}
def svg_plot(file, title, xlabel, ylabel, series, xlog=False, xticks=None):
    import math
    W, H, L, R, T, B = 640, 400, 80, 150, 40, 60
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    if not xs:
        return
    fx = (lambda v: math.log10(v)) if xlog else (lambda v: v)
    x0, x1 = min(fx(x) for x in xs), max(fx(x) for x in xs)
    y1 = max(ys) * 1.1 or 1
    if x1 == x0: x1 = x0 + 1
    px = lambda v: L + (fx(v) - x0) / (x1 - x0) * (W - L - R)
    py = lambda v: H - B - v / y1 * (H - T - B)
    e = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (W, H),
         '<rect width="100%" height="100%" fill="white"/>',
         '<text x="%d" y="22" font-size="14">%s</text>' % (L, title),
         '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (L, H - B, W - R, H - B),
         '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (L, T, L, H - B),
         '<text x="%d" y="%d" text-anchor="middle">%s</text>' % ((L + W - R) / 2, H - 15, xlabel),
         '<text x="18" y="%d" transform="rotate(-90 18 %d)" text-anchor="middle">%s</text>' % ((T + H - B) / 2, (T + H - B) / 2, ylabel)]
    for i in range(6):
        v = y1 * i / 5
        e.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>' % (L, py(v), W - R, py(v)))
        e.append('<text x="%d" y="%.1f" text-anchor="end">%s</text>' % (L - 5, py(v) + 4, ("%.0f" % v) if y1 >= 10 else ("%.2f" % v)))
    for v in (xticks or sorted(set(xs))):
        e.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>' % (px(v), H - B + 18, v))
    for k, (name, pts) in enumerate(series.items()):
        pts = sorted(pts)
        c = COLORS.get(name, "black")
        e.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>' % (c, " ".join("%.1f,%.1f" % (px(x), py(y)) for x, y in pts)))
        for x, y in pts:
            e.append('<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>' % (px(x), py(y), c))
        e.append('<rect x="%d" y="%d" width="12" height="12" fill="%s"/><text x="%d" y="%d">%s</text>' % (W - R + 15, T + 20 * k, c, W - R + 32, T + 20 * k + 11, name))
    e.append("</svg>")
    open(bench_dir + "/" + file, "w").write("\n".join(e) + "\n")

sweep = {}
for lb in ("switchyard", "haproxy", "nginx"):
    pts = []
    for c in (10, 100, 1000):
        rs = by.get(("http-keepalive-c%d" % c, lb), [])
        cpu = sum(float(r[7]) for r in rs)
        if rs and cpu > 0:
            pts.append((c, sum(float(r[4] or 0) for r in rs) / cpu))
    if pts: sweep[lb] = pts
svg_plot("concurrency.svg", "HTTP/1.1 keep-alive: requests per LB CPU-second vs connections",
         "concurrent connections (log scale)", "requests per LB CPU-second", sweep, xlog=True, xticks=[10, 100, 1000])
cdf = {}
for l in open(cdf_path):
    s, lb, r, p, us = l.split()
    if s == "http-keepalive-c100":
        cdf.setdefault(lb, {}).setdefault(float(p), []).append(float(us) / 1000)
svg_plot("latency-cdf.svg", "HTTP/1.1 keep-alive, 100 connections: latency CDF (wrk)",
         "percentile", "latency, ms",
         {lb: [(p, statistics.mean(v)) for p, v in d.items()] for lb, d in cdf.items()},
         xticks=[1, 10, 30, 50, 70, 90, 99])
out.append("## Plots\n")
out.append("![requests per LB CPU-second vs concurrent connections](concurrency.svg)\n")
out.append("![latency CDF at 100 connections](latency-cdf.svg)\n")
out.append("## TCP bulk through an L4 listener (iperf3, one stream)\n")
out.append("| load balancer | Gbit/s | LB CPU s | Gbit per LB CPU-second | vs best peer |")
out.append("|---|---:|---:|---:|---:|")
eff = {}
for lb in ("switchyard", "haproxy", "nginx"):
    rs = by.get(("tcp-bulk", lb), [])
    if not rs: continue
    g = sum(float(r[3]) * secs for r in rs); cpu = sum(float(r[7]) for r in rs)
    eff[lb] = g / cpu if cpu > 0 else float("nan")
best = max(v for k, v in eff.items() if k != "switchyard") if len(eff) > 1 else float("nan")
for lb in ("switchyard", "haproxy", "nginx"):
    rs = by.get(("tcp-bulk", lb), [])
    if not rs: continue
    out.append("| %s | %.2f | %.2f | %.2f | %s |" % (lb, mean(r[3] for r in rs), mean(r[7] for r in rs), eff[lb],
        "%.2f×" % (eff[lb] / best) if lb == "switchyard" else ""))
out.append("")
out.append("""## Reading the figures

* Switchyard polls its port while traffic flows and sleeps only when a turn finds
  nothing to do, so under load it uses its whole core: requests per LB CPU-second
  is the figure to compare, not CPU seconds.
* On this topology every frame Switchyard sends or receives crosses an AF_PACKET ring
  and a veth pair whose receiving side runs in the sender's system call, one frame at
  a time; the kernel proxies move 64 KiB GSO segments through the same path. That
  per-frame cost is what bounds the TCP bulk figure; a DPDK or AF_XDP port on a real
  NIC removes it (not measurable on this machine).
* HTTPS handshakes run on Switchyard's worker thread between its turns (with one
  core, `[tls] engine = "auto"` runs them inline). wrk resumes each new connection's
  session: a TLS 1.3 PSK handshake with an X25519 exchange on all three (nginx is told
  `ssl_protocols TLSv1.2 TLSv1.3`: 1.22's default stops at TLS 1.2, whose resumption
  has no key exchange at all). wrk on the other core spends more CPU per handshake
  than any of the load balancers, which caps the rate for all three.
* HTTP/2 reaches Switchyard's proxy by translation: each stream becomes an HTTP/1.1
  request on a virtual connection, so every request is serialized and parsed once
  more than in HAProxy's native HTTP/2 path. In a `perf` profile of the h2 row the
  `h2` crate's frame and stream handling is about a fifth of Switchyard's CPU and
  the second parse a few per cent.
* At 1,000 connections wrk's single client core is the bottleneck for all three;
  the per-CPU-second figure still compares the load balancers' own cost.
""")
# What the kernel's part of the CPU means for a ratio to HAProxy.
def per_req(scenario, lb):
    rs = by.get((scenario, lb), [])
    total = sum(float(r[4] or 0) for r in rs)
    cpu = sum(float(r[7]) for r in rs)
    kernel = sum(float(r[9] or 0) for r in rs if len(r) > 9)
    return (1e6 * cpu / total, 1e6 * kernel / total) if total > 0 else None
sy, ha = per_req("http-keepalive-c100", "switchyard"), per_req("http-keepalive-c100", "haproxy")
if sy and ha:
    out.append("* The last column of each table splits the CPU per request. On veth the receiving "
               "peer's kernel work (the bridge and its netfilter hooks, then wrk's or nginx's TCP "
               "receive) runs inside the sender's `sendto` and is charged to the sender: a `perf` "
               "profile of Switchyard under keep-alive load puts about half of its CPU there. Any "
               "load balancer that delivers the same frames pays it. At 100 keep-alive connections "
               "Switchyard spent %.1f µs per request, %.1f µs of it in the kernel; HAProxy %.1f µs, "
               "%.1f µs in the kernel. Twice HAProxy's requests per LB CPU-second would mean "
               "%.1f µs per request in all, %s.\n"
               % (sy[0], sy[1], ha[0], ha[1], ha[0] / 2,
                  "less than Switchyard's kernel part alone" if sy[1] >= ha[0] / 2 else
                  "%.1f µs of user time at most" % (ha[0] / 2 - sy[1])))
out.append("Not measured here: 100,000 concurrent connections (the file-descriptor and "
           "port budget of one client namespace on this machine; bench/L7-CONCURRENCY.md "
           "measures it in the simulation). Other port kinds: `SBS_NIC`, and "
           "bench/NICS.md.\n")
out.append("Raw rows (scenario, LB, round, rate, requests, p50, p99, LB CPU s, errors, LB system CPU s):\n")
out.append("```")
out.extend("\t".join(r) for r in rows)
out.append("```")
print("\n".join(out))
PY
echo "side-by-side: wrote bench/RESULTS.md"
cat "$root/bench/RESULTS.md"
