# Shared by bench/run.sh and bench/hostile.sh (sourced, not run). The caller
# defines say() and die() first; this file defines the process bookkeeping,
# the cleanup trap, Debian installs, free ports and readiness waits.

PIDS=()          # every background process started; killed on exit
WORK=""          # the temporary work directory; removed on success

cleanup() {
    local rc=$?
    set +e
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if [[ "$KEEP_WORK" == 1 || $rc -ne 0 ]]; then
            say "work directory kept: $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# install_debian PACKAGE... — apt-get install (sudo when not root); no-op
# without arguments.
install_debian() {
    (($#)) || return 0
    local pkgs
    mapfile -t pkgs < <(printf '%s\n' "$@" | sort -u)
    say "installing from Debian: ${pkgs[*]}"
    local sudo=""
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || die "need root or sudo to install: ${pkgs[*]}"
        sudo=sudo
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
}

# The upstream's answer on every path: a small JSON body.
UPSTREAM_BODY='{"ok":true,"service":"chat"}'

# nginx_conf PORT CONNECTIONS [LINE...] — the nginx.conf of the benchmark
# upstream (state under $WORK/nginx): one worker, no access log, keep-alive
# connections that never expire, UPSTREAM_BODY on every path, plus the
# given lines inside its server block (extra locations).
nginx_conf() {
    local port=$1 conns=$2
    shift 2
    cat <<EOF
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
worker_rlimit_nofile $((conns + 100));
events { worker_connections $conns; }
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
        listen 127.0.0.1:$port;
        default_type application/json;
        location / { return 200 '$UPSTREAM_BODY\n'; }
$(printf '        %s\n' "$@")
    }
}
EOF
}

# free_ports N — N distinct free TCP ports on 127.0.0.1, space-separated.
free_ports() {
    python3 - "$1" <<'PYEOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PYEOF
}

# wait_ready NAME PID URL — until URL answers 200 (10 s), or die with the
# tail of $WORK/NAME.log if the process exits or never gets ready.
wait_ready() {
    local name=$1 pid=$2 url=$3 code=""
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || die "$name exited during startup" "$(tail -n 20 "$WORK/$name.log" 2>/dev/null)"
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)
        [[ "$code" == 200 ]] && return 0
        sleep 0.1
    done
    die "$name not ready after 10 s ($url answered '$code')" "$(tail -n 20 "$WORK/$name.log" 2>/dev/null)"
}
