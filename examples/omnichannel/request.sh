#!/usr/bin/env bash
# Microsoft Omnichannel-style requests against `authgate demo`.
#
#   examples/omnichannel/request.sh DEMO_DIR GATEWAY_URL
#
# DEMO_DIR is the "configuration and throwaway keys" folder `authgate demo`
# prints; GATEWAY_URL its gateway address (http://127.0.0.1:PORT).
# The authgate binary: $AUTHGATE if set, else `cargo run --release -q --`.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 DEMO_DIR GATEWAY_URL" >&2
    exit 2
fi
DIR=$1
GW=${2%/}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
if [ -n "${AUTHGATE:-}" ]; then
    read -r -a AG <<<"$AUTHGATE"
else
    AG=(cargo run --manifest-path "$REPO/Cargo.toml" --release -q --)
fi

show() {
    local out status
    out=$(cat)
    status=${out##*$'\n'}
    out=${out%$'\n'*}
    echo "HTTP $status"
    if command -v jq >/dev/null && jq -e '.echo' >/dev/null 2>&1 <<<"$out"; then
        jq '{path, upstream_identity_headers: .identity,
             upstream_authorization: (.headers.authorization // "(stripped)")}' <<<"$out"
    else
        echo "$out"
    fi
    echo
}

SUB=87b4d06c-abc2-e811-a9b0-000d3a10e09e
# The payload of Microsoft's setAuthTokenProvider sample (sub, lwicontexts,
# iat, iss, exp, nbf), HS256 with the demo's shared secret. `scope` is added
# because the demo's /api/chat route requires "chat".
omni_token() {
    "${AG[@]}" token --key "$DIR/omnichannel.secret" --alg HS256 \
        --iss contosohelp.com --sub "$SUB" --scope chat --ttl 15m \
        --claim nbf="$(date +%s)" --claim lwicontexts="$1"
}

TOKEN=$(omni_token '"{\"msdyn_cartvalue\":\"10000\",\"msdyn_isvip\":\"false\"}"')
echo "### 1. lwicontexts from the sample: forwarded as x-authgate-context"
curl -s -w '\n%{http_code}' "$GW/api/chat/messages" \
    -H "authorization: Bearer $TOKEN" | show

TOKEN=$(omni_token '"{\"msdyn_cartvalue\":\"10000\",\"msdyn_isvip\":\"false\",\"portalcontactid\":\"0042\"}"')
echo "### 2. A key outside context_keys (portalcontactid) is dropped"
curl -s -w '\n%{http_code}' "$GW/api/chat/messages" \
    -H "authorization: Bearer $TOKEN" | show

TOKEN=$(omni_token '"{\"msdyn_cartvalue\":{\"amount\":\"10000\"}}"')
echo "### 3. A nested value is not a primitive: 401 invalid_token"
curl -s -w '\n%{http_code}' "$GW/api/chat/messages" \
    -H "authorization: Bearer $TOKEN" | show

TOKEN=$(omni_token '{"msdyn_cartvalue":"10000"}')
echo "### 4. lwicontexts as a JSON object instead of a serialized string: 401 invalid_token"
curl -s -w '\n%{http_code}' "$GW/api/chat/messages" \
    -H "authorization: Bearer $TOKEN" | show

echo "### 5. One customer across channels: the web issuer's token for the same subject"
WEB=$("${AG[@]}" token --key "$DIR/web-issuer.key.pem" \
    --iss https://login.demo.authgate.test --aud chat-gateway \
    --sub "$SUB" --scope chat --ttl 15m)
curl -s -w '\n%{http_code}' "$GW/api/chat/messages" \
    -H "authorization: Bearer $WEB" | show

echo "### 6. What the operator (who holds customer-id.key) computes for that subject"
"${AG[@]}" customer-id --config "$DIR/gateway.toml" --namespace customers "$SUB"
