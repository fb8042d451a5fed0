#!/usr/bin/env bash
# authgate vs HAProxy 2.6 (native jwt_verify) side-by-side load benchmark.
#
#   bash bench/run.sh                       # DURATION=5 ROUNDS=2
#   DURATION=3 ROUNDS=1 bash bench/run.sh
#   AUTHGATE=/path/to/authgate bash bench/run.sh
#
# See bench/README.md for what every case means. Everything it starts is on
# 127.0.0.1, on ports chosen at run time, and is killed on exit. Keys and tokens
# are generated into a temporary directory and deleted afterwards
# (KEEP_WORK=1 keeps it). Results: stdout and bench/results/latest.md.
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")

DURATION=${DURATION:-5}            # seconds per measured run
ROUNDS=${ROUNDS:-2}                # interleaved rounds; the median is reported
AUTHGATE=${AUTHGATE:-$ROOT/target/release/authgate}
# The hyper floor (examples/bare_proxy.rs: hyper server + client, nothing
# else); its case is skipped when the example is not built.
BARE=${BARE:-$ROOT/target/release/examples/bare_proxy}
CONNS=${CONNS:-50}                 # wrk connections
RATE=${RATE:-4000}                 # fixed request rate for the p99@rate runs
P99_CONNS=${P99_CONNS:-10}         # h2load connections for the fixed-rate runs
IDLE_CONNS=${IDLE_CONNS:-10000}    # idle keep-alive connections for the RSS test
FRESH_TOKENS=${FRESH_TOKENS:-$((30000 * DURATION))}   # distinct tokens per alg
PROXY_CPU=${PROXY_CPU:-0}          # core for the proxy under test
LOAD_CPU=${LOAD_CPU:-1}            # core for wrk/h2load and nginx
KEEP_WORK=${KEEP_WORK:-0}
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results}

# ---------------------------------------------------------------- helpers
say() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    {
        printf '\n############################################################\n'
        printf '### BENCHMARK ABORTED: %s\n' "$1"
        shift || true
        for line in "$@"; do printf '###   %s\n' "$line"; done
        printf '############################################################\n\n'
    } >&2
    exit 1
}

# shellcheck source=bench/common.sh
source "$BENCH_DIR/common.sh"

# ---------------------------------------------------------------- dependencies
PY=/usr/bin/python3
need_pkgs=()
command -v haproxy >/dev/null || need_pkgs+=(haproxy)
command -v nginx   >/dev/null || need_pkgs+=(nginx-light)
command -v wrk     >/dev/null || need_pkgs+=(wrk)
command -v h2load  >/dev/null || need_pkgs+=(nghttp2-client)
command -v curl    >/dev/null || need_pkgs+=(curl)
command -v openssl >/dev/null || need_pkgs+=(openssl)
command -v taskset >/dev/null || need_pkgs+=(util-linux)
if [[ ! -x $PY ]]; then
    need_pkgs+=(python3 python3-cryptography)
elif ! $PY -c 'import cryptography' 2>/dev/null; then
    need_pkgs+=(python3-cryptography)
fi
install_debian "${need_pkgs[@]}"
HAPROXY_VERSION=$(haproxy -v | sed -n 's/^HA-\{0,1\}Proxy version \([0-9.]*\).*/\1/p' | head -1)
case "$HAPROXY_VERSION" in
    1.*|2.[0-5]|2.[0-5].*) die "HAProxy $HAPROXY_VERSION is too old: jwt_verify/hmac need 2.6+" ;;
esac

NPROC=$(nproc)
((NPROC >= 2)) || say "WARNING: only $NPROC core(s); proxy and load generator will share a core"
if ((PROXY_CPU >= NPROC)); then PROXY_CPU=0; fi
if ((LOAD_CPU >= NPROC)); then LOAD_CPU=$((NPROC - 1)); fi

# Open-file limit: wanted 65536; some containers cap the hard limit lower.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
say "open-files limit: $NOFILE"
if [[ "$NOFILE" == unlimited ]]; then NOFILE=1048576; fi
HA_MAXCONN=$(( (NOFILE - 1000) / 2 ))
((HA_MAXCONN > 20000)) && HA_MAXCONN=20000
if ((IDLE_CONNS + 500 > NOFILE)); then
    say "WARNING: open-files limit $NOFILE < IDLE_CONNS=$IDLE_CONNS + 500; lowering IDLE_CONNS"
    IDLE_CONNS=$((NOFILE - 500))
fi

[[ -x "$AUTHGATE" ]] || die "authgate binary not found at $AUTHGATE" "build it (cargo build --release) or set AUTHGATE=/path/to/authgate"
"$AUTHGATE" token --help 2>&1 | grep -- --key >/dev/null || die "'$AUTHGATE token --help' does not document --key" "the binary does not implement the token command yet"

CLK_TCK=$(getconf CLK_TCK)
WORK=$(mktemp -d /tmp/authgate-bench.XXXXXX)
mkdir -p "$WORK/raw" "$WORK/nginx" "$RESULTS_DIR"
say "work directory: $WORK"
NOTES=()

# ---------------------------------------------------------------- ports
read -r P_NGINX P_HAP_PLAIN P_HAP_HS P_HAP_RS P_HAP_ES P_AG P_AG_ADMIN P_BARE P_HAP_SAME < <(free_ports 9)
say "ports: nginx=$P_NGINX haproxy=$P_HAP_PLAIN/$P_HAP_SAME/$P_HAP_HS/$P_HAP_RS/$P_HAP_ES authgate=$P_AG admin=$P_AG_ADMIN"

# ---------------------------------------------------------------- keys
say "generating keys (openssl)"
(
    cd "$WORK"
    umask 077
    openssl rand -hex 32 | tr -d '\n' > hs.secret        # HS256 secret: 64 ASCII bytes
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rs.key 2>/dev/null
    openssl pkey -in rs.key -pubout -out rs.pub
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out es.key 2>/dev/null
    openssl pkey -in es.key -pubout -out es.pub
    openssl rand -hex 32 > id.key                         # customer-id HMAC key
)
NAMESPACE=customer   # 8 bytes: "customer\0" is 9 bytes = whole base64 quanta (see haproxy.cfg)
SUB=bench-user
AUD=authgate-bench

# ---------------------------------------------------------------- tokens
say "minting the repeated tokens with: $AUTHGATE token ..."
declare -A TOK
declare -A KEYFILE=([hs]=hs.secret [rs]=rs.key [es]=es.key)
declare -A ALG=([hs]=HS256 [rs]=RS256 [es]=ES256)
for k in hs rs es; do
    out=$("$AUTHGATE" token --key "$WORK/${KEYFILE[$k]}" --alg "${ALG[$k]}" --iss "bench-$k" \
        --sub "$SUB" --aud "$AUD" --scope chat --ttl 1h 2>"$WORK/mint-$k.err") \
        || die "authgate token failed for ${ALG[$k]}" "$(cat "$WORK/mint-$k.err")"
    out=$(printf '%s' "$out" | tr -d '[:space:]')
    [[ "$out" =~ ^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$ ]] \
        || die "authgate token for ${ALG[$k]} did not print a compact JWT" "got: ${out:0:200}"
    TOK[$k]=$out
done
# How fast is the CLI? (decides how the big pools are minted)
t0=$(date +%s%N)
for i in $(seq 1 20); do
    "$AUTHGATE" token --key "$WORK/rs.key" --alg RS256 --iss bench-rs --sub "u$i" --aud "$AUD" \
        --scope chat --ttl 1h >/dev/null
done
t1=$(date +%s%N)
CLI_MS=$(( (t1 - t0) / 20 / 1000000 ))
NOTES+=("authgate token CLI: ~${CLI_MS} ms per RS256 token (one process each) → $(( CLI_MS * FRESH_TOKENS * 2 / 1000 )) s for both fresh pools; the pools are minted by bench/mint.py (python3-cryptography, all cores) instead, same claims")

say "minting $FRESH_TOKENS fresh tokens per alg (ES256, RS256) with bench/mint.py"
t0=$(date +%s)
for k in es rs; do
    $PY "$BENCH_DIR/mint.py" --alg "${ALG[$k]}" --key "$WORK/${KEYFILE[$k]}" --iss "bench-$k" \
        --aud "$AUD" --scope chat --ttl 3600 --count "$FRESH_TOKENS" --sub-prefix "fresh-$k-" \
        --out "$WORK/fresh-$k.txt"
done
MINT_S=$(( $(date +%s) - t0 ))
say "minted in ${MINT_S}s"
NOTES+=("fresh-token pools: $FRESH_TOKENS distinct tokens per alg, minted in ${MINT_S} s; authgate is restarted before every fresh-token run so its verification cache starts empty")

# Tokens that must be refused.
declare -A BADSIG EXPIRED NOSCOPE
for k in hs rs es; do
    t=${TOK[$k]}
    sig=${t##*.}
    mid=$(( ${#sig} / 2 ))
    c=${sig:$mid:1}
    [[ $c == A ]] && r=B || r=A
    BADSIG[$k]="${t%.*}.${sig:0:$mid}$r${sig:$((mid + 1))}"
    EXPIRED[$k]=$($PY "$BENCH_DIR/mint.py" --alg "${ALG[$k]}" --key "$WORK/${KEYFILE[$k]}" \
        --iss "bench-$k" --aud "$AUD" --scope chat --ttl -3600 --sub "$SUB")
    NOSCOPE[$k]=$($PY "$BENCH_DIR/mint.py" --alg "${ALG[$k]}" --key "$WORK/${KEYFILE[$k]}" \
        --iss "bench-$k" --aud "$AUD" --scope "chatty history" --ttl 3600 --sub "$SUB")
done

# ---------------------------------------------------------------- configs
NGINX_BODY=$UPSTREAM_BODY
# sanity checks only: what did the proxy forward?
nginx_conf "$P_NGINX" $(( NOFILE > 20000 ? 20000 : NOFILE - 100 )) \
    'location ~ /sanity$ {' \
    '    default_type text/plain;' \
    '    return 200 "cid=[$http_x_authgate_customer_id] iss=[$http_x_authgate_issuer] auth=[$http_x_authgate_auth] scopes=[$http_x_authgate_scopes] authz=[$http_authorization]\n";' \
    '}' \
    > "$WORK/nginx.conf"

IDKEY_B64=$(tr -d '\n' < "$WORK/id.key" | base64 -w0)       # key bytes = file minus trailing newline
NS_B64=$(printf '%s\0' "$NAMESPACE" | base64 -w0)
HS_SECRET=$(cat "$WORK/hs.secret")

# One frontend per algorithm, doing what authgate does on a required route.
hap_frontend() { # name port alg iss key
    cat <<EOF

frontend fe_$1
    bind 127.0.0.1:$2
    unique-id-format %{+X}o%ci%cp%Ts%rt%pid
    unique-id-header x-request-id
    # anti-spoofing: no client-supplied identity header survives
    http-request del-header x-authgate- -m beg
    # bearer token
    http-request set-var(txn.bearer) http_auth_bearer
    http-request return status 401 content-type application/json hdr www-authenticate 'Bearer realm="authgate"' string '{"error":"missing_token"}' unless { var(txn.bearer) -m found }
    http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
    http-request set-var(txn.iss) var(txn.bearer),jwt_payload_query('\$.iss')
    http-request set-var(txn.sub) var(txn.bearer),jwt_payload_query('\$.sub')
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
    http-request set-var(txn.scope) var(txn.bearer),jwt_payload_query('\$.scope')
    http-request set-var(txn.now) date()
    # alg allow-list, issuer, required claims, then the signature
    http-request return status 401 content-type application/json hdr www-authenticate 'Bearer realm="authgate", error="invalid_token"' string '{"error":"invalid_token"}' unless { var(txn.alg) -m str $3 } { var(txn.iss) -m str $4 } { var(txn.sub) -m found } { var(txn.exp) -m found }
    http-request return status 401 content-type application/json hdr www-authenticate 'Bearer realm="authgate", error="invalid_token"' string '{"error":"invalid_token"}' unless { var(txn.bearer),jwt_verify("$3","$5") -m int 1 }
    # exp against the clock
    http-request return status 401 content-type application/json hdr www-authenticate 'Bearer realm="authgate", error="invalid_token"' string '{"error":"token_expired","needs_refresh":true}' if { var(txn.exp),sub(txn.now) -m int lt 0 }
    # required scope "chat" in the space-separated scope claim
    http-request return status 403 content-type application/json hdr www-authenticate 'Bearer realm="authgate", error="insufficient_scope", scope="chat"' string '{"error":"insufficient_scope"}' unless { var(txn.scope) -m reg '(^| )chat( |\$)' }
    # identity headers; customer id = "cid_" + base64url(HMAC-SHA256(key, namespace 0x00 sub)),
    # exactly as authgate computes it (the NUL is smuggled in through b64dec)
    http-request set-var(txn.sub64) var(txn.sub),base64
    http-request set-var(txn.cidin) str($NS_B64),concat(,txn.sub64,),b64dec
    http-request set-header x-authgate-auth authenticated
    http-request set-header x-authgate-customer-id cid_%[var(txn.cidin),hmac(sha256,$IDKEY_B64),ub64enc]
    http-request set-header x-authgate-issuer $4
    http-request set-header x-authgate-scopes chat
    http-request set-header x-authgate-token-expires %[var(txn.exp)]
    # credentials.strip = true
    http-request del-header authorization
    default_backend be_nginx
EOF
}
{
    cat <<EOF
global
    nbthread 1
    maxconn $HA_MAXCONN

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 300s
    option forwardfor
    http-reuse always
    maxconn $HA_MAXCONN

backend be_nginx
    server nginx 127.0.0.1:$P_NGINX

frontend fe_plain
    bind 127.0.0.1:$P_HAP_PLAIN
    default_backend be_nginx

# Not a target: HAProxy doing the header work authgate does on an auth = "none"
# route (SPEC, "What the upstream receives"), to read the plain row against.
# X-Forwarded-For comes from "option forwardfor" (defaults) on every frontend.
frontend fe_same
    bind 127.0.0.1:$P_HAP_SAME
    unique-id-format %{+X}o%ci%cp%Ts%rt%pid
    unique-id-header x-request-id
    http-request del-header x-authgate- -m beg
    http-request set-header x-forwarded-proto http
    http-request set-header x-forwarded-host %[req.hdr(host)]
    http-request set-header x-authgate-auth anonymous
    http-response set-header x-request-id %[unique-id]
    default_backend be_nginx
EOF
    hap_frontend hs "$P_HAP_HS" HS256 bench-hs "$HS_SECRET"
    hap_frontend rs "$P_HAP_RS" RS256 bench-rs "$WORK/rs.pub"
    hap_frontend es "$P_HAP_ES" ES256 bench-es "$WORK/es.pub"
} > "$WORK/haproxy.cfg"
haproxy -c -q -f "$WORK/haproxy.cfg" || die "haproxy rejects the generated config" "$WORK/haproxy.cfg"

cat > "$WORK/gateway.toml" <<EOF
# generated by bench/run.sh
[listen]
addr = "127.0.0.1:$P_AG"

[admin]
addr = "127.0.0.1:$P_AG_ADMIN"

[limits]
max_connections = 20000
header_read_timeout = "60s"
shutdown_grace = "2s"

[log]
level = "warn"

[upstreams.nginx]
url = "http://127.0.0.1:$P_NGINX"

[credentials]
token = ["header:authorization"]
strip = true

[identity]
pseudonymize = true
key_file = "id.key"

[[issuers]]
name = "bench-hs"
iss = "bench-hs"
algorithms = ["HS256"]
secret_file = "hs.secret"
namespace = "$NAMESPACE"

[[issuers]]
name = "bench-rs"
iss = "bench-rs"
algorithms = ["RS256"]
keys = ["rs.pub"]
namespace = "$NAMESPACE"

[[issuers]]
name = "bench-es"
iss = "bench-es"
algorithms = ["ES256"]
keys = ["es.pub"]
namespace = "$NAMESPACE"

[[routes]]
name = "none"
path = "/none/{*rest}"
upstream = "nginx"
auth = "none"

[[routes]]
name = "hs"
path = "/hs/{*rest}"
upstream = "nginx"
auth = "required"
issuers = ["bench-hs"]
scopes = ["chat"]

[[routes]]
name = "rs"
path = "/rs/{*rest}"
upstream = "nginx"
auth = "required"
issuers = ["bench-rs"]
scopes = ["chat"]

[[routes]]
name = "es"
path = "/es/{*rest}"
upstream = "nginx"
auth = "required"
issuers = ["bench-es"]
scopes = ["chat"]
EOF

"$AUTHGATE" check --config "$WORK/gateway.toml" > "$WORK/check.out" 2>&1 \
    || die "authgate check rejects the generated gateway.toml" "$(cat "$WORK/check.out")" "config: $WORK/gateway.toml"

# ---------------------------------------------------------------- processes

say "starting nginx (core $LOAD_CPU)"
taskset -c "$LOAD_CPU" nginx -e "$WORK/nginx/error.log" -p "$WORK/nginx" -c "$WORK/nginx.conf" \
    -g 'daemon off;' > "$WORK/nginx.log" 2>&1 &
NGINX_PID=$!; PIDS+=("$NGINX_PID")
wait_ready nginx "$NGINX_PID" "http://127.0.0.1:$P_NGINX/none/x"

say "starting haproxy (core $PROXY_CPU, nbthread 1)"
taskset -c "$PROXY_CPU" haproxy -db -f "$WORK/haproxy.cfg" > "$WORK/haproxy.log" 2>&1 &
HAP_PID=$!; PIDS+=("$HAP_PID")
wait_ready haproxy "$HAP_PID" "http://127.0.0.1:$P_HAP_PLAIN/none/x"

BARE_PID=""
if [[ -x "$BARE" ]]; then
    say "starting the hyper floor, examples/bare_proxy (core $PROXY_CPU)"
    taskset -c "$PROXY_CPU" "$BARE" "127.0.0.1:$P_BARE" "127.0.0.1:$P_NGINX" > "$WORK/bare.log" 2>&1 &
    BARE_PID=$!; PIDS+=("$BARE_PID")
    wait_ready bare_proxy "$BARE_PID" "http://127.0.0.1:$P_BARE/none/x"
else
    say "no $BARE (cargo build --release --example bare_proxy): the hyper-floor case is skipped"
fi

AG_PID=""
start_authgate() {
    AUTHGATE_WORKER_THREADS=1 RUST_LOG=warn taskset -c "$PROXY_CPU" \
        "$AUTHGATE" run --config "$WORK/gateway.toml" >> "$WORK/authgate.log" 2>&1 &
    AG_PID=$!; PIDS+=("$AG_PID")
    wait_ready authgate "$AG_PID" "http://127.0.0.1:$P_AG/none/x"
}
stop_authgate() {
    [[ -n "$AG_PID" ]] || return 0
    kill -TERM "$AG_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$AG_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$AG_PID" 2>/dev/null || true
    wait "$AG_PID" 2>/dev/null || true
    AG_PID=""
}
say "starting authgate (core $PROXY_CPU, AUTHGATE_WORKER_THREADS=1)"
start_authgate

# ---------------------------------------------------------------- sanity checks
FAILS=()
check() { # description expected-status expected-body-substring curl-args...
    local desc=$1 want=$2 body_want=$3; shift 3
    local body code
    body=$(curl -s --max-time 5 -w '\n%{http_code}' "$@" || true)
    code=${body##*$'\n'}
    body=${body%$'\n'*}
    if [[ "$code" != "$want" ]]; then
        FAILS+=("$desc: expected $want, got $code; body: ${body:0:300}")
    elif [[ -n "$body_want" && "$body" != *"$body_want"* ]]; then
        FAILS+=("$desc: status $code ok but body lacks '$body_want'; body: ${body:0:300}")
    fi
}
expected_cid() {
    $PY - "$WORK/id.key" "$NAMESPACE" "$1" <<'EOF'
import base64, hashlib, hmac, sys
key = open(sys.argv[1], "rb").read()
key = key[:-1] if key.endswith(b"\n") else key
mac = hmac.new(key, sys.argv[2].encode() + b"\0" + sys.argv[3].encode(), hashlib.sha256).digest()
print("cid_" + base64.urlsafe_b64encode(mac).rstrip(b"=").decode())
EOF
}

say "sanity checks"
CID=$(expected_cid "$SUB")
declare -A HAP_PORT=([hs]=$P_HAP_HS [rs]=$P_HAP_RS [es]=$P_HAP_ES)
AG_WARN=()
check "nginx direct" 200 "$NGINX_BODY" "http://127.0.0.1:$P_NGINX/none/x"
check "haproxy plain" 200 "$NGINX_BODY" "http://127.0.0.1:$P_HAP_PLAIN/none/x"
check "haproxy with authgate's none headers" 200 "$NGINX_BODY" "http://127.0.0.1:$P_HAP_SAME/none/x"
check "haproxy with authgate's none headers strips spoofed identity headers" 200 "cid=[] iss=[] auth=[anonymous]" \
    -H "x-authgate-customer-id: spoofed" -H "X-Authgate-Issuer: evil" "http://127.0.0.1:$P_HAP_SAME/none/sanity"
check "authgate none" 200 "$NGINX_BODY" "http://127.0.0.1:$P_AG/none/x"
check "authgate none strips spoofed identity headers" 200 "cid=[] iss=[]" \
    -H "x-authgate-customer-id: spoofed" -H "X-Authgate-Issuer: evil" "http://127.0.0.1:$P_AG/none/sanity"
for k in hs rs es; do
    A=${ALG[$k]}
    for p in "haproxy:http://127.0.0.1:${HAP_PORT[$k]}" "authgate:http://127.0.0.1:$P_AG"; do
        name=${p%%:*}; base=${p#*:}; url="$base/$k/x"
        check "$name $A valid token" 200 "$NGINX_BODY" -H "Authorization: Bearer ${TOK[$k]}" "$url"
        check "$name $A missing token" 401 "" "$url"
        check "$name $A bad signature" 401 "" -H "Authorization: Bearer ${BADSIG[$k]}" "$url"
        check "$name $A expired" 401 "" -H "Authorization: Bearer ${EXPIRED[$k]}" "$url"
        check "$name $A without the chat scope" 403 "" -H "Authorization: Bearer ${NOSCOPE[$k]}" "$url"
        other=$([[ $k == hs ]] && echo rs || echo hs)
        check "$name $A token of another issuer (bench-$other)" 401 "" -H "Authorization: Bearer ${TOK[$other]}" "$url"
        # forwarded identity: spoofed headers gone, id from the verified sub, token stripped
        check "$name $A identity headers" 200 "iss=[bench-$k] auth=[authenticated] scopes=[chat] authz=[]" \
            -H "Authorization: Bearer ${TOK[$k]}" -H "x-authgate-customer-id: spoofed" \
            -H "X-Authgate-Issuer: evil" "$base/$k/sanity"
        got=$(curl -s --max-time 5 -H "Authorization: Bearer ${TOK[$k]}" -H "x-authgate-customer-id: spoofed" "$base/$k/sanity" || true)
        if [[ "$got" != *"cid=[$CID]"* ]]; then
            if [[ $name == haproxy ]]; then
                FAILS+=("haproxy $A customer id: expected cid=[$CID], got: $got")
            elif [[ "$got" == *spoofed* ]]; then
                FAILS+=("authgate $A forwarded the spoofed customer id: $got")
            else
                AG_WARN+=("authgate $A x-authgate-customer-id differs from HMAC-SHA256(key_file bytes, \"$NAMESPACE\" 0x00 \"$SUB\") = $CID; upstream saw: ${got%% iss=*}")
            fi
        fi
    done
done
for k in es rs; do
    first=$(head -n 1 "$WORK/fresh-$k.txt")
    check "haproxy ${ALG[$k]} pool token (mint.py)" 200 "$NGINX_BODY" -H "Authorization: Bearer $first" "http://127.0.0.1:${HAP_PORT[$k]}/$k/x"
    check "authgate ${ALG[$k]} pool token (mint.py)" 200 "$NGINX_BODY" -H "Authorization: Bearer $first" "http://127.0.0.1:$P_AG/$k/x"
done
got=$(curl -s --max-time 5 "http://127.0.0.1:$P_AG/none/sanity" || true)
[[ "$got" == *"auth=[anonymous]"* ]] || AG_WARN+=("authgate auth=none route: upstream did not get x-authgate-auth: anonymous; saw: $got")
if ((${#FAILS[@]})); then
    die "sanity checks failed (${#FAILS[@]}) — refusing to benchmark error pages" "${FAILS[@]}" \
        "configs and logs: $WORK (gateway.toml, haproxy.cfg, authgate.log)"
fi
for w in "${AG_WARN[@]}"; do say "WARNING: $w"; NOTES+=("WARNING: $w"); done
say "sanity checks passed: every case answers 200 with nginx's body; bad/expired/missing tokens get 401, missing scope 403, on both proxies"

# ---------------------------------------------------------------- measurement
cpu_ticks() { # "utime stime" of a whole process (all threads)
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo "0 0"; return; }
    s=${s##*) }
    set -- $s
    echo "${12} ${13}"
}
to_ms() { # wrk duration (e.g. 412.00us, 1.23ms, 2.01s) -> ms
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.4f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.4f", v }
        else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.4f", v * 60000 }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.4f", v * 1000 }
        else printf "nan" }'
}

# id | label | proxy | path | token kind (none/hs/rs/es/fresh-es/fresh-rs)
CASES=(
    "direct|direct nginx (no proxy)|none|/none/x|none"
    "hap_plain|HAProxy plain proxy|haproxy|/none/x|none"
    "hap_same|HAProxy plain + authgate none's header work (no target)|haproxy|/none/x|same"
    "bare|hyper floor (examples/bare_proxy.rs: no auth, no header rules)|bare|/none/x|none"
    "ag_none|authgate auth=none|authgate|/none/x|none"
    "hap_hs|HAProxy HS256, repeated token|haproxy|/hs/x|hs"
    "ag_hs|authgate HS256, repeated token|authgate|/hs/x|hs"
    "hap_rs|HAProxy RS256, repeated token|haproxy|/rs/x|rs"
    "ag_rs|authgate RS256, repeated token|authgate|/rs/x|rs"
    "hap_es|HAProxy ES256, repeated token|haproxy|/es/x|es"
    "ag_es|authgate ES256, repeated token|authgate|/es/x|es"
    "hap_es_fresh|HAProxy ES256, fresh token per request|haproxy|/es/x|fresh-es"
    "ag_es_fresh|authgate ES256, fresh token per request|authgate|/es/x|fresh-es"
    "hap_rs_fresh|HAProxy RS256, fresh token per request|haproxy|/rs/x|fresh-rs"
    "ag_rs_fresh|authgate RS256, fresh token per request|authgate|/rs/x|fresh-rs"
    "hap_h2|HAProxy plain proxy, HTTP/2 (h2load -m 10, no target)|haproxy|/none/x|h2"
    "ag_h2|authgate auth=none, HTTP/2 (h2load -m 10, no target)|authgate|/none/x|h2"
)
P99_CASES=(direct hap_plain hap_same ag_none hap_rs ag_rs)
: > "$WORK/cases.tsv"; : > "$WORK/wrk.tsv"; : > "$WORK/p99.tsv"
if [[ -z "$BARE_PID" ]]; then
    kept=()
    for c in "${CASES[@]}"; do [[ $c == bare\|* ]] || kept+=("$c"); done
    CASES=("${kept[@]}")
fi
for c in "${CASES[@]}"; do
    IFS='|' read -r id label proxy _ _ <<<"$c"
    printf '%s\t%s\t%s\n' "$id" "$label" "$proxy" >> "$WORK/cases.tsv"
done

case_url() { # id proxy path kind
    local proxy=$2 path=$3 kind=$4 alg
    alg=${kind#fresh-}; [[ $alg == none || $alg == h2 ]] && alg=plain
    case $proxy in
        none) echo "http://127.0.0.1:$P_NGINX$path" ;;
        authgate) echo "http://127.0.0.1:$P_AG$path" ;;
        bare) echo "http://127.0.0.1:$P_BARE$path" ;;
        haproxy)
            case $alg in
                plain) echo "http://127.0.0.1:$P_HAP_PLAIN$path" ;;
                same) echo "http://127.0.0.1:$P_HAP_SAME$path" ;;
                *) echo "http://127.0.0.1:${HAP_PORT[$alg]}$path" ;;
            esac ;;
    esac
}
proxy_pid() {
    case $1 in haproxy) echo "$HAP_PID" ;; authgate) echo "$AG_PID" ;; bare) echo "$BARE_PID" ;; *) echo "" ;; esac
}

us_per_request() { # "utime stime" before, after, requests -> "cpu_us kernel_us" per request
    local u0 s0 u1 s1
    read -r u0 s0 <<<"$1"; read -r u1 s1 <<<"$2"
    awk -v t=$((u1 + s1 - u0 - s0)) -v k=$((s1 - s0)) -v hz="$CLK_TCK" -v n="$3" \
        'BEGIN {printf "%.2f %.2f", t * 1e6 / hz / n, k * 1e6 / hz / n}'
}

run_wrk() { # case-spec round
    local id label proxy path kind url pid out c0 c1 args=()
    IFS='|' read -r id label proxy path kind <<<"$1"
    local round=$2
    if [[ $kind == h2 ]]; then run_h2 "$@"; return; fi
    if [[ $kind == fresh-* && $proxy == authgate ]]; then
        stop_authgate; start_authgate     # empty verification cache
    fi
    url=$(case_url "$id" "$proxy" "$path" "$kind")
    pid=$(proxy_pid "$proxy")
    case $kind in
        none|same) ;;
        fresh-*) args=(-s "$BENCH_DIR/fresh.lua") ;;
        *) args=(-H "Authorization: Bearer ${TOK[$kind]}") ;;
    esac
    out="$WORK/raw/$id.r$round.wrk"
    c0=$([[ -n $pid ]] && cpu_ticks "$pid" || echo "0 0")
    if [[ $kind == fresh-* ]]; then
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 5s --latency "${args[@]}" \
            "$url" -- "$WORK/${kind#fresh-}.pool" > "$out" 2>&1 || true
    else
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 5s --latency "${args[@]}" \
            "$url" > "$out" 2>&1 || true
    fi
    c1=$([[ -n $pid ]] && cpu_ticks "$pid" || echo "0 0")
    if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
        die "$proxy died during '$label'" "$(tail -n 20 "$WORK/$proxy.log")"
    fi
    local rps req p50 p99 non2xx sockerr wrapped=0 cpu="nan" sys="nan"
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    req=$(awk '/ requests in / {print $1}' "$out")
    p50=$(awk '/^ +50%/ {print $2}' "$out")
    p99=$(awk '/^ +99%/ {print $2}' "$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out")
    sockerr=$(awk '/Socket errors:/ {gsub(/[^0-9 ]/, " "); n = 0; for (i = 1; i <= NF; i++) n += $i; print n}' "$out")
    [[ -n "$rps" && -n "$req" && -n "$p99" ]] || die "could not parse wrk output for '$label'" "$(cat "$out")"
    if [[ $kind == fresh-* ]] && (( req + CONNS > FRESH_TOKENS )); then wrapped=1; fi
    if [[ -n $pid ]] && ((req > 0)); then
        read -r cpu sys <<<"$(us_per_request "$c0" "$c1" "$req")"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$round" "$rps" "$(to_ms "$p50")" \
        "$(to_ms "$p99")" "$cpu" "$req" "${non2xx:-0}" "${sockerr:-0}" "$wrapped" "$sys" >> "$WORK/wrk.tsv"
    say "  $(printf '%-42s' "$label") $(printf '%9.0f' "$rps") req/s  p50 $p50  p99 $p99  cpu ${cpu} µs/req${non2xx:+  NON-2XX $non2xx}"
}

h2load_log_stats() { # h2load --log-file, duration -> p50_ms p99_ms req/s non-2xx count (tab-separated)
    $PY - "$1" "$2" <<'EOF'
import sys
lat, non2xx = [], 0
for line in open(sys.argv[1]):
    parts = line.split("\t")
    if len(parts) < 3:
        continue
    if not parts[1].startswith("2"):
        non2xx += 1
    lat.append(int(parts[2]))
lat.sort()
pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000.0 if lat else 0.0
print(f"{pct(0.50):.4f}\t{pct(0.99):.4f}\t{len(lat) / float(sys.argv[2]):.1f}\t{non2xx}\t{len(lat)}")
EOF
}

run_h2() { # case-spec round: HTTP/2 prior knowledge at saturation, h2load -m 10
    local id label proxy path kind url pid out log c0 c1
    IFS='|' read -r id label proxy path kind <<<"$1"
    local round=$2
    url=$(case_url "$id" "$proxy" "$path" "$kind")
    pid=$(proxy_pid "$proxy")
    out="$WORK/raw/$id.r$round.h2load"
    log="$out.log"
    rm -f "$log"
    c0=$(cpu_ticks "$pid")
    taskset -c "$LOAD_CPU" h2load -t1 -c "$CONNS" -m 10 -D "$DURATION" --log-file "$log" \
        "$url" > "$out" 2>&1 || true
    c1=$(cpu_ticks "$pid")
    kill -0 "$pid" 2>/dev/null || die "$proxy died during '$label'" "$(tail -n 20 "$WORK/$proxy.log")"
    grep -q 'Application protocol: h2c' "$out" || die "h2load did not speak h2c for '$label'" "$(cat "$out")"
    local line
    line=$(h2load_log_stats "$log" "$DURATION")
    local rps p50 p99 req non2xx cpu sys
    IFS=$'\t' read -r p50 p99 rps non2xx req <<<"$line"
    ((req > 0)) || die "h2load completed no request for '$label'" "$(cat "$out")"
    read -r cpu sys <<<"$(us_per_request "$c0" "$c1" "$req")"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$round" "$rps" "$p50" "$p99" \
        "$cpu" "$req" "$non2xx" 0 0 "$sys" >> "$WORK/wrk.tsv"
    say "  $(printf '%-42s' "$label") $(printf '%9.0f' "$rps") req/s  p50 ${p50} ms  p99 ${p99} ms  cpu ${cpu} µs/req$( ((non2xx > 0)) && echo "  NON-2XX $non2xx")"
}

run_rate() { # case-spec round: fixed-rate latency with h2load
    local id label proxy path kind url log hdr=()
    IFS='|' read -r id label proxy path kind <<<"$1"
    local round=$2
    url=$(case_url "$id" "$proxy" "$path" "$kind")
    [[ $kind == none || $kind == same ]] || hdr=(-H "authorization: Bearer ${TOK[$kind]}")
    log="$WORK/raw/$id.r$round.h2load.log"
    rm -f "$log"
    taskset -c "$LOAD_CPU" h2load --h1 -t1 -c "$P99_CONNS" --rps $((RATE / P99_CONNS)) -D "$DURATION" \
        --log-file "$log" "${hdr[@]}" "$url" > "$WORK/raw/$id.r$round.h2load" 2>&1 || true
    [[ -s "$log" ]] || die "h2load produced no log for '$label'" "$(cat "$WORK/raw/$id.r$round.h2load")"
    local line
    line=$(h2load_log_stats "$log" "$DURATION" | cut -f1-4)
    printf '%s\t%s\t%s\n' "$id" "$round" "$line" >> "$WORK/p99.tsv"
    say "  $(printf '%-42s' "$label @ ${RATE}/s") p50 $(cut -f1 <<<"$line") ms  p99 $(cut -f2 <<<"$line") ms  ($(cut -f3 <<<"$line") req/s)"
}

ln -s "$WORK/fresh-es.txt" "$WORK/es.pool"
ln -s "$WORK/fresh-rs.txt" "$WORK/rs.pool"
for round in $(seq 1 "$ROUNDS"); do
    say "round $round/$ROUNDS: throughput (wrk -c$CONNS, ${DURATION}s each)"
    for c in "${CASES[@]}"; do run_wrk "$c" "$round"; sleep 0.5; done
    say "round $round/$ROUNDS: latency at a fixed $RATE req/s (h2load)"
    for c in "${CASES[@]}"; do
        IFS='|' read -r id _ <<<"$c"
        for p in "${P99_CASES[@]}"; do
            [[ $p == "$id" ]] && { run_rate "$c" "$round"; sleep 0.5; }
        done
    done
done

# ---------------------------------------------------------------- memory
RSS_JSON='{}'
AFTER_KIB=$(awk '/^VmRSS:/ {print $2}' "/proc/$AG_PID/status")
say "memory: fresh authgate, idle, then $IDLE_CONNS idle keep-alive connections"
stop_authgate
start_authgate
for k in hs rs es; do
    curl -s -o /dev/null -H "Authorization: Bearer ${TOK[$k]}" "http://127.0.0.1:$P_AG/$k/x" || true
done
sleep 1
IDLE_KIB=$(awk '/^VmRSS:/ {print $2}' "/proc/$AG_PID/status")
CONN_JSON=$($PY "$BENCH_DIR/idle_conns.py" --port "$P_AG" --path /rs/x --token "${TOK[rs]}" \
    --pid "$AG_PID" --count "$IDLE_CONNS") || die "idle_conns.py failed against authgate" "$(tail -n 20 "$WORK/authgate.log")"
kill -0 "$AG_PID" 2>/dev/null || die "authgate died during the $IDLE_CONNS-connection test" "$(tail -n 20 "$WORK/authgate.log")"
HAP_CONNS=$(( IDLE_CONNS < HA_MAXCONN - 200 ? IDLE_CONNS : HA_MAXCONN - 200 ))
HAP_JSON=$($PY "$BENCH_DIR/idle_conns.py" --port "$P_HAP_RS" --path /rs/x --token "${TOK[rs]}" \
    --pid "$HAP_PID" --count "$HAP_CONNS" || echo '{}')
RSS_JSON=$($PY - "$IDLE_KIB" "$AFTER_KIB" "$IDLE_CONNS" "$CONN_JSON" "$HAP_CONNS" "$HAP_JSON" <<'EOF'
import json, sys
conns = json.loads(sys.argv[4]); conns["count"] = int(sys.argv[3])
hap = json.loads(sys.argv[6])
out = {"idle_kib": int(sys.argv[1]), "after_bench_kib": int(sys.argv[2]), "conns": conns}
if hap.get("rss_kib"):
    hap["count"] = int(sys.argv[5]); out["haproxy"] = hap
print(json.dumps(out))
EOF
)

# ---------------------------------------------------------------- report
NOTES+=("p99@${RATE%000}k: h2load --h1 with ${P99_CONNS} keep-alive connections at $((RATE / P99_CONNS)) req/s each (per-request log, exact percentiles); every connection's timer fires together, so requests arrive in bursts of ${P99_CONNS}")
NOTES+=("HAProxy $HAPROXY_VERSION, nbthread 1, one frontend per alg; authgate with AUTHGATE_WORKER_THREADS=1 RUST_LOG=warn [log] level=warn; both pinned with taskset -c $PROXY_CPU; CPU µs/req = (utime+stime of the proxy process, all threads) / requests completed")
printf '%s\n' "${NOTES[@]}" > "$WORK/notes.txt"
printf '%s\n' "$RSS_JSON" > "$WORK/rss.json"
STARTED=$(date -u +%Y-%m-%dT%H:%MZ) CPU_MODEL=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo) \
NPROC=$NPROC PROXY_CPU=$PROXY_CPU LOAD_CPU=$LOAD_CPU CONNS=$CONNS DURATION=$DURATION ROUNDS=$ROUNDS \
RATE=$RATE P99_CONNS=$P99_CONNS HAPROXY_VERSION=$HAPROXY_VERSION $PY - "$WORK" <<'EOF'
import json, os, sys
work = sys.argv[1]
e = os.environ
meta = {k.lower(): e[k] for k in ("STARTED", "CPU_MODEL", "HAPROXY_VERSION")}
meta.update({k.lower(): int(e[k]) for k in
             ("NPROC", "PROXY_CPU", "LOAD_CPU", "CONNS", "DURATION", "ROUNDS", "RATE", "P99_CONNS")})
meta["rss"] = json.load(open(os.path.join(work, "rss.json")))
meta["notes"] = [l for l in open(os.path.join(work, "notes.txt")).read().split("\n") if l]
json.dump(meta, open(os.path.join(work, "meta.json"), "w"), indent=1)
EOF

$PY "$BENCH_DIR/report.py" "$WORK" > "$RESULTS_DIR/latest.md"
cp "$WORK/wrk.tsv" "$RESULTS_DIR/latest-wrk.tsv"
cp "$WORK/p99.tsv" "$RESULTS_DIR/latest-p99.tsv"
echo
cat "$RESULTS_DIR/latest.md"
say "written: $RESULTS_DIR/latest.md (raw: latest-wrk.tsv, latest-p99.tsv)"
