#!/usr/bin/env bash
# ASAPP-style requests against `authgate demo`.
#
#   examples/asapp/request.sh DEMO_DIR GATEWAY_URL
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

# What the demo's echo backend received: path, the x-authgate-* headers,
# whether Authorization survived, and the body. Gateway errors print as they are.
show() {
    local out status
    out=$(cat)
    status=${out##*$'\n'}
    out=${out%$'\n'*}
    echo "HTTP $status"
    if command -v jq >/dev/null && jq -e '.echo' >/dev/null 2>&1 <<<"$out"; then
        jq '{path, upstream_identity_headers: .identity,
             upstream_authorization: (.headers.authorization // "(stripped)"),
             upstream_body: .body}' <<<"$out"
    else
        echo "$out"
    fi
    echo
}

# "Simulate the login process": the demo's web issuer (ES256) signs a
# 15-minute token for alice with the scopes chat and paybill.
TOKEN=$("${AG[@]}" token --key "$DIR/web-issuer.key.pem" \
    --iss https://login.demo.authgate.test --aud chat-gateway \
    --sub alice@example.com --scope chat --scope paybill --ttl 15m)

echo "### 1. Before login: analytics only (CustomerInfo, session, Segments), no token"
curl -s -w '\n%{http_code}' "$GW/api/context/page-view" \
    -H 'content-type: application/json' \
    -d '{"CustomerInfo":{"category":"payment","action":"ASAPP","parent_page":"Pay my Bill"},
         "ExternalSessionId":"j6oAOxCWZh","ExternalSessionType":"visitID",
         "Segments":["north america","usa","northeast"]}' | show

echo "### 2. Logged in: the ContextProvider's whole object, token in Auth.Token"
curl -s -w '\n%{http_code}' "$GW/api/chat/messages" \
    -H 'content-type: application/json' \
    -d '{"Auth":{"Token":"'"$TOKEN"'","Scopes":["chat"],
                 "Cookies":{"AuthCookie":"authCookieValue"},
                 "Headers":{"X-Custom-Header":"value"},
                 "Body":{"customParam":"value"}},
         "CustomerInfo":{"category":"payment","parent_page":"Pay my Bill",
                         "contact":"alice@example.com","city":"Montréal"},
         "ExternalSessionId":"j6oAOxCWZh","ExternalSessionType":"visitID",
         "CompanySubdivision":"divisionId",
         "Segments":["north america","usa","northeast"],
         "text":"I want to pay my bill"}' | show

echo "### 3. A Segments entry that is not a string: 400 invalid_context naming it"
curl -s -w '\n%{http_code}' "$GW/api/chat/messages" \
    -H 'content-type: application/json' \
    -d '{"Auth":{"Token":"'"$TOKEN"'"},"Segments":["north america","usa",3]}' | show

echo "### 4. Auth.Scopes asks for paybill only, but /api/chat needs chat: 403 insufficient_scope"
curl -s -w '\n%{http_code}' "$GW/api/chat/messages" \
    -H 'content-type: application/json' \
    -d '{"Auth":{"Token":"'"$TOKEN"'","Scopes":["paybill"]}}' | show

echo "### 5. A header token and a different body token: 400 conflicting_credentials"
OTHER=$("${AG[@]}" token --key "$DIR/web-issuer.key.pem" \
    --iss https://login.demo.authgate.test --aud chat-gateway \
    --sub mallory@example.com --scope chat --ttl 15m)
curl -s -w '\n%{http_code}' "$GW/api/chat/messages" \
    -H "authorization: Bearer $OTHER" -H 'content-type: application/json' \
    -d '{"Auth":{"Token":"'"$TOKEN"'"}}' | show
