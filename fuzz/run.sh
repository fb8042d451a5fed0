#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) each, JOBS (default 2) at
# a time, and prints one line per target: runs, coverage, and whether
# libFuzzer found a crash (its input is then under fuzz/artifacts/TARGET/).
#
#   bash fuzz/run.sh                   # needs a nightly toolchain
#   SECONDS_EACH=300 bash fuzz/run.sh path_normalize credential
#
# Installs cargo-fuzz from crates.io when it is missing. Not part of CI:
# building the targets with the sanitizer takes minutes; the same
# properties run on stable as proptests in `cargo test --lib`.
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
SECONDS_EACH=${SECONDS_EACH:-60}
JOBS=${JOBS:-2}

cargo +nightly --version >/dev/null 2>&1 || {
    echo "fuzz/run.sh: a nightly toolchain is needed (rustup toolchain install nightly)" >&2
    exit 1
}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
# Built once, before the runs start (two runs would otherwise both build).
cargo +nightly fuzz build -O
LOGS=$(mktemp -d)
trap 'rm -rf "$LOGS"' EXIT

run_one() {
    local t=$1 log=$LOGS/$1.log
    # Committed seeds (fuzz/seeds/TARGET) start the corpus where a random
    # start would take long to reach, e.g. a correctly signed token.
    if [[ -d seeds/$t ]]; then
        mkdir -p "corpus/$t" && cp seeds/"$t"/* "corpus/$t/"
    fi
    if cargo +nightly fuzz run -O "$t" -- -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 >"$log" 2>&1; then
        local done_line cov
        done_line=$(grep -E '^Done [0-9]+ runs' "$log" | tail -1)
        cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1)
        printf '%-16s ok     %s, %s\n' "$t" "${done_line#Done }" "$cov"
    else
        printf '%-16s FAILED %s\n' "$t" "$(grep -m1 -E 'panicked at|ERROR: libFuzzer|SUMMARY' "$log")"
        tail -40 "$log" | sed 's/^/    /'
        return 1
    fi
}

status=0
running=0
for t in "${targets[@]}"; do
    run_one "$t" &
    running=$((running + 1))
    if [[ $running -ge $JOBS ]]; then
        wait -n || status=1
        running=$((running - 1))
    fi
done
while [[ $running -gt 0 ]]; do
    wait -n || status=1
    running=$((running - 1))
done
exit $status
