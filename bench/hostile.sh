#!/usr/bin/env bash
# authgate against hostile clients, with the Debian tools made for it:
# slowhttptest (slowloris, slow body, slow read), h2load (h2c load with good
# and bad tokens) and nghttp (HTTP/2 connection-specific headers).
#
#   bash bench/hostile.sh
#   AUTHGATE=/path/to/authgate bash bench/hostile.sh
#   KEEP_WORK=1 bash bench/hostile.sh      # keep configs, logs, slowhttptest CSVs
#
# Everything runs on 127.0.0.1 on ports chosen at run time (bind port 0), every
# attack is bounded in time (a little over a minute in all), and everything started
# here is killed on exit. Exit status 0 only if every expectation holds; the
# summary table goes to stdout. See bench/README.md, "Hostile clients".
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
AUTHGATE=${AUTHGATE:-$ROOT/target/release/authgate}
KEEP_WORK=${KEEP_WORK:-0}
PY=python3

# The gateway's limits under test (also written into gateway.toml).
HEADER_READ_TIMEOUT=5     # s
REQUEST_TIMEOUT=5         # s
MAX_CONNECTIONS=2000
MAX_BODY_BYTES=65536

# Attack sizes (environment overrides).
LORIS_CONNS=${LORIS_CONNS:-500}
BODY_CONNS=${BODY_CONNS:-300}
READ_CONNS=${READ_CONNS:-300}
H2_REQUESTS=${H2_REQUESTS:-20000}
ATTACK_SECONDS=${ATTACK_SECONDS:-20}
# Memory a slow reader may pin in the gateway (its response buffered in user
# space): 256 KiB × the SPEC default max_connections 10 000 = 2.5 GiB.
SLOW_READ_KIB=${SLOW_READ_KIB:-256}

say() { printf '[hostile %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '\n### hostile.sh ABORTED: %s\n' "$*" >&2; exit 2; }

# shellcheck source=bench/common.sh
source "$BENCH_DIR/common.sh"

# ---------------------------------------------------------------- dependencies
need=()
command -v slowhttptest >/dev/null || need+=(slowhttptest)
command -v h2load       >/dev/null || need+=(nghttp2-client)
command -v nghttp       >/dev/null || need+=(nghttp2-client)
command -v nginx        >/dev/null || need+=(nginx-light)
command -v curl         >/dev/null || need+=(curl)
command -v openssl      >/dev/null || need+=(openssl)
command -v $PY          >/dev/null || need+=(python3)
install_debian "${need[@]}"
[[ -x "$AUTHGATE" ]] || die "no authgate binary at $AUTHGATE (cargo build --release, or set AUTHGATE=)"

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n); [[ $NOFILE == unlimited ]] && NOFILE=1048576
(( NOFILE > 2 * MAX_CONNECTIONS + 1000 )) || die "open-files limit $(ulimit -n) too low: the gateway needs 2 × max_connections ($MAX_CONNECTIONS) + 1000"

WORK=$(mktemp -d /tmp/authgate-hostile.XXXXXX)
chmod 711 "$WORK"                      # nginx workers (nobody) must reach www/
mkdir -p "$WORK/nginx" "$WORK/www/api/public"
say "work directory: $WORK"

read -r P_AG P_ADMIN P_NGINX < <(free_ports 3)
GW=http://127.0.0.1:$P_AG
ADMIN=http://127.0.0.1:$P_ADMIN
say "ports: authgate=$P_AG admin=$P_ADMIN nginx=$P_NGINX"

# ---------------------------------------------------------------- results
RESULTS=()      # "test|expectation|PASS/FAIL|detail"
FAILED=0
record() { # test expectation ok(0/1) detail
    local verdict=PASS
    if [[ $3 != 0 ]]; then verdict=FAIL; FAILED=$((FAILED + 1)); fi
    RESULTS+=("$1|$2|$verdict|$4")
    say "$verdict  $1: $4"
}

# ---------------------------------------------------------------- keys, token
(
    cd "$WORK"
    umask 077
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out es.key 2>/dev/null
    openssl pkey -in es.key -pubout -out pub.pem
    openssl rand -hex 32 > id.key
)
ISS=hostile-bench
TOKEN=$("$AUTHGATE" token --key "$WORK/es.key" --iss "$ISS" --sub hostile-user --scope chat --ttl 1h | tr -d '[:space:]')
[[ "$TOKEN" =~ ^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$ ]] || die "authgate token printed no JWT: ${TOKEN:0:200}"
sig=${TOKEN##*.}; mid=$(( ${#sig} / 2 )); [[ ${sig:$mid:1} == A ]] && r=B || r=A
BAD_TOKEN="${TOKEN%.*}.${sig:0:$mid}$r${sig:$((mid + 1))}"

# ---------------------------------------------------------------- upstream (nginx)
# a 16 MiB static file for the slow-read test (more than the kernel send buffer
# on loopback, tcp_wmem max 4 MiB, can absorb, so the gateway itself stays busy); everything else is a small JSON
head -c $((16 * 1024 * 1024)) /dev/zero | tr '\0' 'a' > "$WORK/www/api/public/big"
chmod -R a+rX "$WORK/www"
UP_BODY='{"ok":true,"service":"chat"}'
cat > "$WORK/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    server {
        listen 127.0.0.1:$P_NGINX;
        default_type application/json;
        location = /api/public/big { root $WORK/www; default_type text/plain; }
        location / { return 200 '$UP_BODY\n'; }
    }
}
EOF

cat > "$WORK/gateway.toml" <<EOF
# generated by bench/hostile.sh
[listen]
addr = "127.0.0.1:$P_AG"

[admin]
addr = "127.0.0.1:$P_ADMIN"

[limits]
header_read_timeout = "${HEADER_READ_TIMEOUT}s"
request_timeout = "${REQUEST_TIMEOUT}s"
max_connections = $MAX_CONNECTIONS
max_body_bytes = $MAX_BODY_BYTES
shutdown_grace = "2s"

[log]
level = "warn"

[upstreams.up]
url = "http://127.0.0.1:$P_NGINX"

[credentials]
token = ["header:authorization", "body:/Auth/Token"]
strip = true

[identity]
pseudonymize = true
key_file = "id.key"

[[issuers]]
name = "hostile"
iss = "$ISS"
algorithms = ["ES256"]
keys = ["pub.pem"]

[[routes]]
name = "public"
path = "/api/public/{*rest}"
upstream = "up"
auth = "none"

[[routes]]
name = "chat"
path = "/api/chat/{*rest}"
upstream = "up"
auth = "required"
scopes = ["chat"]
EOF
"$AUTHGATE" check --config "$WORK/gateway.toml" > "$WORK/check.out" 2>&1 \
    || die "authgate check rejects the generated config: $(cat "$WORK/check.out")"


say "starting nginx"
nginx -e "$WORK/nginx/error.log" -p "$WORK/nginx" -c "$WORK/nginx.conf" -g 'daemon off;' > "$WORK/nginx.log" 2>&1 &
NGINX_PID=$!; PIDS+=("$NGINX_PID")
wait_ready nginx "$NGINX_PID" "http://127.0.0.1:$P_NGINX/x"

say "starting authgate"
RUST_LOG=warn "$AUTHGATE" run --config "$WORK/gateway.toml" > "$WORK/authgate.log" 2>&1 &
AG_PID=$!; PIDS+=("$AG_PID")
wait_ready authgate "$AG_PID" "$GW/api/public/x"
wait_ready authgate "$AG_PID" "$ADMIN/readyz"

# ---------------------------------------------------------------- helpers
code() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" || true; }
metric() { # exact metric line prefix -> value (sum over matching lines), 0 if none
    curl -s --max-time 5 "$ADMIN/metrics" | awk -v p="$1" 'index($0, p) == 1 { s += $NF } END { printf "%d\n", s + 0 }'
}
open_conns() { metric "authgate_open_connections "; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$AG_PID/status" 2>/dev/null || echo -1; }
alive() { kill -0 "$AG_PID" 2>/dev/null; }

# A well-behaved client polling while an attack runs: one fresh connection
# per second, 2 s budget each. Writes one status code per line.
PROBE_PID=""
probe_start() { # file url [curl args]  -> lines "code seconds started_at"
    local out=$1 t0; shift
    t0=$(date +%s.%N)
    (
        while :; do
            now=$(date +%s.%N)
            line=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' --max-time 2 "$@" 2>/dev/null || true)
            echo "${line:-000 2.0} $(awk -v a="$now" -v b="$t0" 'BEGIN { printf "%.1f", a - b }')" >> "$out"
            sleep 1
        done
    ) &
    PROBE_PID=$!; PIDS+=("$PROBE_PID")
}
probe_stop() {
    kill -TERM "$PROBE_PID" 2>/dev/null || true
    wait "$PROBE_PID" 2>/dev/null || true
}
probe_summary() { # file [from_second] -> "ok/total 200, slowest"
    awk -v f="${2:-0}" '$3 >= f { n++; if ($1 == 200) ok++; if ($2 > m) m = $2 }
        END { printf "%d/%d probes 200%s, slowest %.2fs", ok, n, (f > 0 ? " from t=" f "s" : ""), m }' "$1"
}
wait_probe_from() { # file second -> until a probe started at or after `second` has answered (≤ 15 s)
    for _ in $(seq 1 150); do
        awk -v f="$2" '$3 >= f { found = 1 } END { exit !found }' "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
probe_all_ok() { # file [from_second]
    awk -v f="${2:-0}" '$3 >= f { n++; if ($1 != 200) bad++ } END { exit (n > 0 && bad == 0) ? 0 : 1 }' "$1"
}

# slowhttptest's CSV (-g -o prefix) is sampled once a second:
#   Seconds,Closed,Pending,Connected,<column 5 is not "service available" in 1.8.2>
# Its last row can lag the end of the test, so the exit status in the text
# output decides whether every connection was closed by the server.
csv_max_connected() { awk -F, 'NR > 1 && $4 > m { m = $4 } END { print m + 0 }' "$1.csv"; }
csv_closed() { awk -F, 'NR > 1 { c = $2 } END { print c + 0 }' "$1.csv"; }
sh_exit() { sed 's/\x1b\[[0-9;]*m//g' "$1.out" | sed -n 's/^Exit status: *//p' | tail -n 1; }
sh_ended() { sed 's/\x1b\[[0-9;]*m//g' "$1.out" | sed -n 's/^Test ended on \([0-9]*\).*/\1/p' | tail -n 1; }
# Connections closed by the server: all of them when slowhttptest stopped for
# "No open connections left", else the CSV's last Closed count.
sh_closed() { # prefix total
    if [[ $(sh_exit "$1") == "No open connections left" ]]; then echo "$2"; else csv_closed "$1"; fi
}
# first second at which no connection was left open (-1: never)
sh_all_closed_at() { # prefix total
    if [[ $(sh_exit "$1") == "No open connections left" ]]; then sh_ended "$1"; return; fi
    awk -F, -v t="$2" 'NR > 1 && $2 >= t && $3 == 0 && $4 == 0 { print $1; f = 1; exit } END { if (!f) print -1 }' "$1.csv"
}

# Runs slowhttptest for ATTACK_SECONDS; if SAMPLE_AT is set, reads the
# gateway's open connections and its chat-route 400 count that many seconds in
# (MID_OPEN, MID_400), while the attackers are still connected.
SAMPLE_AT=""; MID_OPEN=""; MID_400=""; MID_RSS=""
run_slowhttptest() { # prefix args...
    local prefix=$1 pid; shift
    timeout --kill-after=5 $((ATTACK_SECONDS + 15)) \
        slowhttptest "$@" -l "$ATTACK_SECONDS" -p 3 -g -o "$prefix" > "$prefix.out" 2>&1 &
    pid=$!; PIDS+=("$pid")
    if [[ -n $SAMPLE_AT ]]; then
        sleep "$SAMPLE_AT"
        MID_OPEN=$(open_conns); MID_RSS=$(rss_kib)
        MID_400=$(metric 'authgate_requests_total{route="chat",status="400"')
    fi
    wait "$pid" || true
    [[ -s "$prefix.csv" ]] || die "slowhttptest wrote no CSV: $(tail -n 20 "$prefix.out")"
}

say "baseline: $(rss_kib) KiB RSS, $(open_conns) open connections"
[[ $(code "$GW/api/public/x") == 200 ]] || die "baseline request to /api/public/x failed"
[[ $(code -H "authorization: Bearer $TOKEN" "$GW/api/chat/x") == 200 ]] || die "baseline request to /api/chat/x with the token failed"
[[ $(code -H "authorization: Bearer $BAD_TOKEN" "$GW/api/chat/x") == 401 ]] || die "baseline bad token did not get 401"

# ================================================================ 1. slowloris
say "1. slowloris: slowhttptest -H, $LORIS_CONNS connections, a header line every 10 s (header_read_timeout ${HEADER_READ_TIMEOUT}s)"
P=$WORK/slowloris
probe_start "$P.probe" "$GW/api/public/x"
SAMPLE_AT=$((2 + HEADER_READ_TIMEOUT + 3)) run_slowhttptest "$P" -H -c "$LORIS_CONNS" -r 250 -i 10 -x 24 -u "$GW/api/public/x"
probe_stop
closed=$(sh_closed "$P" "$LORIS_CONNS"); maxconn=$(csv_max_connected "$P"); at=$(sh_all_closed_at "$P" "$LORIS_CONNS")
after=$(code "$GW/api/public/x")
detail="gateway closed $closed/$LORIS_CONNS (peak $maxconn open, all closed by t=${at}s; gateway's open connections at t=$((2 + HEADER_READ_TIMEOUT + 3))s: $MID_OPEN); well-behaved client during: $(probe_summary "$P.probe"); after: $after"
ok=1
if ((closed >= LORIS_CONNS)) && ((at >= 0 && at <= 2 + HEADER_READ_TIMEOUT + 3)) && probe_all_ok "$P.probe" && [[ $after == 200 ]]; then ok=0; fi
record "slowloris (slowhttptest -H)" "all $LORIS_CONNS heads dropped by ~${HEADER_READ_TIMEOUT}s after they open; curl 200 during and after" $ok "$detail"

# ---------------------------------------------------------------- 1b. slowloris over max_connections
N=$((MAX_CONNECTIONS + 300))
say "1b. slowloris over the cap: $N connections > max_connections $MAX_CONNECTIONS"
P=$WORK/slowloris-cap
probe_start "$P.probe" "$GW/api/public/x"
SAMPLE_AT=4 run_slowhttptest "$P" -H -c "$N" -r 1000 -i 10 -x 24 -u "$GW/api/public/x"
probe_stop
closed=$(sh_closed "$P" "$N"); at=$(sh_all_closed_at "$P" "$N")
from=$((3 + HEADER_READ_TIMEOUT + 2))
after=$(code "$GW/api/public/x")
detail="gateway held $MID_OPEN connections at t=4s (cap $MAX_CONNECTIONS), closed $closed/$N, all by t=${at}s; well-behaved client: $(probe_summary "$P.probe"), $(probe_summary "$P.probe" "$from"); after: $after"
ok=1
if alive && ((MID_OPEN <= MAX_CONNECTIONS)) && ((closed >= N)) && probe_all_ok "$P.probe" "$from" && [[ $after == 200 ]]; then ok=0; fi
record "slowloris over max_connections" "open ≤ $MAX_CONNECTIONS; all dropped; curl 200 from t=${from}s" $ok "$detail"

# ================================================================ 2. slow body
# slowhttptest has no option for an arbitrary header; its Cookie value (-j) is
# written verbatim, so a CRLF in it adds the Authorization line. The route
# reads the body (body:/Auth/Token), so the gateway waits for all of it --
# for at most request_timeout (SPEC: the body read has that deadline).
SLOW_BODY_ARGS=(-B -i 1 -x 4 -s 8192 -f application/json -j $'a=b\r\nAuthorization: Bearer '"$TOKEN" -u "$GW/api/chat/x")
say "2. slow body: slowhttptest -B, $BODY_CONNS connections trickling a JSON body to a reading route (request_timeout ${REQUEST_TIMEOUT}s)"
P=$WORK/slowbody
b400=$(metric 'authgate_requests_total{route="chat",status="400"')
probe_start "$P.probe" -H "authorization: Bearer $TOKEN" "$GW/api/chat/x"
SAMPLE_AT=$((1 + REQUEST_TIMEOUT + 3)) run_slowhttptest "$P" -c "$BODY_CONNS" -r 300 "${SLOW_BODY_ARGS[@]}"
probe_stop
closed=$(sh_closed "$P" "$BODY_CONNS"); maxconn=$(csv_max_connected "$P"); at=$(sh_all_closed_at "$P" "$BODY_CONNS")
a400=$(metric 'authgate_requests_total{route="chat",status="400"')
after=$(code -H "authorization: Bearer $TOKEN" "$GW/api/chat/x")
detail="gateway closed $closed/$BODY_CONNS (peak $maxconn open, all closed by t=${at}s); at t=$((1 + REQUEST_TIMEOUT + 3))s the gateway had $MID_OPEN open and had answered $((MID_400 - b400)) of them 400 (after slowhttptest hung up: $((a400 - b400))); token client on /api/chat: $(probe_summary "$P.probe"); after: $after"
ok=1
if ((closed >= BODY_CONNS)) && ((at >= 0 && at <= 1 + REQUEST_TIMEOUT + 3)) && probe_all_ok "$P.probe" && [[ $after == 200 ]]; then ok=0; fi
record "slow body (slowhttptest -B)" "all $BODY_CONNS bodies cut off ~request_timeout (${REQUEST_TIMEOUT}s) after they open" $ok "$detail"

# ---------------------------------------------------------------- 2b. slow body over max_connections
N=$((MAX_CONNECTIONS + 300))
say "2b. slow body over the cap: $N connections > max_connections $MAX_CONNECTIONS"
P=$WORK/slowbody-cap
probe_start "$P.probe" -H "authorization: Bearer $TOKEN" "$GW/api/chat/x"
SAMPLE_AT=4 run_slowhttptest "$P" -c "$N" -r 1000 "${SLOW_BODY_ARGS[@]}"
from=$((3 + REQUEST_TIMEOUT + 2))
# slowhttptest may be done (every connection cut off) before t=from: keep
# probing until one probe has run after it.
wait_probe_from "$P.probe" "$from" || true
probe_stop
closed=$(sh_closed "$P" "$N"); at=$(sh_all_closed_at "$P" "$N")
after=$(code -H "authorization: Bearer $TOKEN" "$GW/api/chat/x")
detail="gateway held $MID_OPEN connections at t=4s (cap $MAX_CONNECTIONS), closed $closed/$N, all by t=${at}s; token client: $(probe_summary "$P.probe"), $(probe_summary "$P.probe" "$from"); after: $after"
ok=1
if alive && ((MID_OPEN <= MAX_CONNECTIONS)) && ((closed >= N)) && probe_all_ok "$P.probe" "$from" && [[ $after == 200 ]]; then ok=0; fi
record "slow body over max_connections" "open ≤ $MAX_CONNECTIONS; all cut off; token client 200 from t=${from}s" $ok "$detail"

# ================================================================ 3. slow read
say "3. slow read: slowhttptest -X, $READ_CONNS connections reading a 16 MiB response 32 bytes a second"
# The first seconds fill every slow reader's socket buffers (megabytes each,
# copied by the kernel through nginx and the gateway): on 2 cores a probe can
# wait over 2 s then. The expectation counts probes after this ramp; the
# detail shows all of them.
READ_RAMP=${READ_RAMP:-5}
P=$WORK/slowread
rss0=$(rss_kib)
probe_start "$P.probe" "$GW/api/public/x"
SAMPLE_AT=$((ATTACK_SECONDS - 3)) run_slowhttptest "$P" -X -c "$READ_CONNS" -r 300 -k 1 -n 1 -w 16 -y 64 -z 32 -u "$GW/api/public/big"
probe_stop
closed=$(sh_closed "$P" "$READ_CONNS"); maxconn=$(csv_max_connected "$P")
sleep 1
oc=$(open_conns)
after=$(code "$GW/api/public/x")
rss1=$MID_RSS
per=$(( (rss1 - rss0) / (MID_OPEN > 0 ? MID_OPEN : 1) ))
detail="$MID_OPEN slow readers open in the gateway at t=$((ATTACK_SECONDS - 3))s, $closed closed by the gateway; RSS ${rss0}→${rss1} KiB = ${per} KiB per slow reader (× max_connections $MAX_CONNECTIONS ≈ $(( per * MAX_CONNECTIONS / 1024 )) MiB); open connections after: $oc; well-behaved client: $(probe_summary "$P.probe"), $(probe_summary "$P.probe" "$READ_RAMP"); after: $after"
ok=1
if alive && probe_all_ok "$P.probe" "$READ_RAMP" && [[ $after == 200 ]] && ((MID_OPEN > 0 && per <= SLOW_READ_KIB)); then ok=0; fi
record "slow read (slowhttptest -X)" "others served from t=${READ_RAMP}s; ≤ $SLOW_READ_KIB KiB RSS per slow reader" $ok "$detail"

# ================================================================ 4. h2load h2c
say "4. h2load, h2c prior knowledge: $H2_REQUESTS requests, 50 connections × 10 streams, valid token"
P=$WORK/h2load
timeout --kill-after=5 60 h2load -n "$H2_REQUESTS" -c 50 -m 10 -H "authorization: Bearer $TOKEN" "$GW/api/chat/x" > "$P-good.out" 2>&1 || true
rps=$(sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' "$P-good.out")
codes=$(sed -n 's/^status codes: //p' "$P-good.out")
two=$(sed -n 's/^status codes: \([0-9]*\) 2xx.*/\1/p' "$P-good.out")
proto=$(grep -m1 '^Application protocol:' "$P-good.out" | sed 's/^Application protocol: *//')
ok=1; [[ ${two:-0} == "$H2_REQUESTS" && $proto == h2c ]] && ok=0
record "h2load h2c, valid token" "all $H2_REQUESTS are 2xx" $ok "protocol ${proto:-?}, ${rps:-?} req/s, status codes: ${codes:-none (see $P-good.out)}"

BAD_N=$((H2_REQUESTS / 4))
b401=$(metric 'authgate_requests_total{route="chat",status="401"')
timeout --kill-after=5 60 h2load -n "$BAD_N" -c 50 -m 10 -H "authorization: Bearer $BAD_TOKEN" "$GW/api/chat/x" > "$P-bad.out" 2>&1 || true
a401=$(metric 'authgate_requests_total{route="chat",status="401"')
rps=$(sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' "$P-bad.out")
codes=$(sed -n 's/^status codes: //p' "$P-bad.out")
four=$(sed -n 's/^status codes: [0-9]* 2xx, [0-9]* 3xx, \([0-9]*\) 4xx.*/\1/p' "$P-bad.out")
ok=1; [[ ${four:-0} == "$BAD_N" && $((a401 - b401)) == "$BAD_N" ]] && ok=0
record "h2load h2c, bad signature" "all $BAD_N are 401" $ok "${rps:-?} req/s, status codes: ${codes:-none}; authgate_requests_total 401 on chat +$((a401 - b401))"

# ================================================================ 5. nghttp
say "5. nghttp: a plain h2c request, then connection-specific headers"
P=$WORK/nghttp
timeout 10 nghttp -v "$GW/api/public/x" > "$P-plain.out" 2>&1 || true
first() { grep -m1 -o "$1" "$2" | head -n 1 || true; }
st=$(first ':status: [0-9]*' "$P-plain.out"); st=${st##* }
ok=1; [[ $st == 200 ]] && grep -q '"ok":true' "$P-plain.out" && ok=0
record "nghttp h2c GET /api/public/x" "200 with the upstream body" $ok ":status ${st:-none}"

# RFC 9113 §8.2.2: connection-specific fields make an HTTP/2 request malformed.
# nghttp puts whatever -H says on the wire (checked in its -v output).
nghttp_hdr() { # header expectation(refused|200) -> sets ok and detail
    local hdr=$1 want=$2 name=${1%%:*} out
    out=$P-$name-${hdr##* }.out
    timeout 10 nghttp -v -H "$hdr" "$GW/api/public/x" > "$out" 2>&1 || true
    if ! grep -qi "^[[:space:]]*$hdr\$" "$out"; then
        ok=1; detail="nghttp did not send it (cannot be tested with nghttp): $(tail -n 1 "$out")"; return
    fi
    st=$(first ':status: [0-9]*' "$out"); st=${st##* }
    rst=$(grep -A1 'recv RST_STREAM frame' "$out" | grep -o 'error_code=[A-Z_]*' | head -n 1 || true)
    goaway=$(grep -A1 'recv GOAWAY frame' "$out" | grep -o 'error_code=[A-Z_]*' | head -n 1 || true)
    if [[ -z $st ]]; then
        detail="sent; no response: ${rst:+RST_STREAM ${rst#error_code=}}${goaway:+ GOAWAY ${goaway#error_code=}}"
        [[ $want == refused && ( -n $rst || -n $goaway ) ]] && ok=0 || ok=1
    else
        detail="sent; :status $st"
        if [[ $want == refused ]]; then [[ $st =~ ^4 ]] && ok=0 || ok=1
        else [[ $st == "$want" ]] && ok=0 || ok=1; fi
    fi
}
b_up=$(metric 'authgate_requests_total{route="public",status="200"')
for hdr in 'connection: close' 'keep-alive: 5' 'proxy-connection: keep-alive' 'transfer-encoding: chunked' 'upgrade: websocket' 'te: gzip'; do
    nghttp_hdr "$hdr" refused
    record "nghttp -H '$hdr'" "refused (RST_STREAM or 4xx)" $ok "$detail"
done
a_up=$(metric 'authgate_requests_total{route="public",status="200"')
ok=1; ((a_up == b_up)) && ok=0
record "connection-specific headers not forwarded" "no public-route 200 for those 6" $ok "public-route 200 count ${b_up} → ${a_up}"
nghttp_hdr 'te: trailers' 200
record "nghttp -H 'te: trailers' (control)" "200: the one allowed te value" $ok "$detail"

# ================================================================ 6. after all
say "6. after all: admin endpoints, process, open connections"
sleep 2
hz=$(code "$ADMIN/healthz"); rz=$(code "$ADMIN/readyz")
ok=1; [[ $hz == 200 && $rz == 200 ]] && ok=0
record "admin /healthz /readyz" "200 and 200" $ok "/healthz $hz, /readyz $rz"
ok=1; alive && ok=0
record "gateway process" "still running (pid $AG_PID)" $ok "$(alive && echo "alive, RSS $(rss_kib) KiB" || echo "EXITED: $(tail -n 5 "$WORK/authgate.log")")"
oc=$(open_conns)
ok=1; ((oc <= 5)) && ok=0
record "authgate_open_connections" "back to ≤ 5 once the attackers are gone" $ok "authgate_open_connections $oc"
if grep -qiE 'panic|thread .* panicked' "$WORK/authgate.log"; then
    record "gateway log" "no panic" 1 "$(grep -iE -m3 'panic' "$WORK/authgate.log")"
else
    record "gateway log" "no panic" 0 "$(wc -l < "$WORK/authgate.log") lines at warn, no panic"
fi

# ---------------------------------------------------------------- summary
{
    echo
    echo "| test | expectation | result | measured |"
    echo "|---|---|---|---|"
    for r in "${RESULTS[@]}"; do
        IFS='|' read -r t e v d <<<"$r"
        printf '| %s | %s | %s | %s |\n' "$t" "$e" "$v" "$d"
    done
    echo
    echo "authgate $("$AUTHGATE" --version 2>/dev/null | awk '{ print $NF }'), $(slowhttptest -h 2>&1 | grep -o 'version [0-9.]*' | head -1 | sed 's/^/slowhttptest /'), $(h2load --version | head -1), $(nproc) cores"
} | tee "$WORK/summary.md"
if ((FAILED)); then
    say "$FAILED expectation(s) failed; logs in $WORK"
    KEEP_WORK=1
    exit 1
fi
say "all expectations held"
