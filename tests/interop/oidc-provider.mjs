// A real OpenID provider (the certified `oidc-provider` package) for the
// interop test in tests/it/keys.rs (`interop_oidc_provider`).
//
//   node tests/interop/oidc-provider.mjs [PORT]      (PORT 0 or absent: any free port)
//
// Listens on 127.0.0.1 and prints `ISSUER http://127.0.0.1:<port>` once ready.
// One client, `authgate-interop` / `interop-client-secret`, may use the
// client_credentials grant; access tokens for the resource
// `urn:authgate:chat` are JWTs (RFC 9068) with scope `chat`, signed with the
// provider's current key. Tokens for `urn:authgate:opaque` are opaque and
// checked through the RFC 7662 introspection endpoint (`/token/introspection`)
// by the client `authgate-introspector` / `introspect-Secret_1.0~x` (a secret
// that needs form-encoding in HTTP Basic). Client-credentials tokens carry
// the client id as `sub` in both formats.
//
// Key rotation: write `rotate` on stdin. The provider is rebuilt on the same
// port and issuer with a new key that signs from now on (alternating ES256 /
// RS256), the previous key still published for verification; it prints
// `ROTATED <new kid>`. EOF on stdin or SIGTERM ends it.

import http from 'node:http';
import crypto from 'node:crypto';
import readline from 'node:readline';
import Provider from 'oidc-provider';

const port = Number(process.argv[2] ?? 0);
const RESOURCE = 'urn:authgate:chat';
const CLIENT_ID = 'authgate-interop';
const CLIENT_SECRET = 'interop-client-secret';
const OPAQUE_RESOURCE = 'urn:authgate:opaque';
const INTROSPECTOR_ID = 'authgate-introspector';
const INTROSPECTOR_SECRET = 'introspect-Secret_1.0~x';

let generation = 0;
function newKey(alg) {
  generation += 1;
  const pair = alg === 'ES256'
    ? crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' })
    : crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = pair.privateKey.export({ format: 'jwk' });
  return { ...jwk, alg, use: 'sig', kid: `interop-${alg.toLowerCase()}-${generation}-${crypto.randomBytes(4).toString('hex')}` };
}

function build(issuer, keys) {
  const signing = keys[0];
  const provider = new Provider(issuer, {
    clients: [{
      client_id: CLIENT_ID,
      client_secret: CLIENT_SECRET,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      scope: 'chat',
    }, {
      client_id: INTROSPECTOR_ID,
      client_secret: INTROSPECTOR_SECRET,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
    // RFC 9068 puts the client id in `sub` of a JWT access token for the
    // client_credentials grant; do the same for introspection answers.
    extraTokenClaims: (_ctx, token) => (token.accountId ? undefined : { sub: token.clientId }),
    jwks: { keys },
    scopes: ['openid', 'chat'],
    ttl: { ClientCredentials: 600 },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => RESOURCE,
        useGrantedResource: () => true,
        getResourceServerInfo: (_ctx, resource) => {
          if (resource === OPAQUE_RESOURCE) {
            return {
              scope: 'chat',
              audience: OPAQUE_RESOURCE,
              accessTokenTTL: 600,
              accessTokenFormat: 'opaque',
            };
          }
          if (resource !== RESOURCE) throw new Provider.errors.InvalidTarget();
          return {
            scope: 'chat',
            audience: RESOURCE,
            accessTokenTTL: 600,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: signing.alg, kid: signing.kid } },
          };
        },
      },
    },
    enabledJWA: {
      idTokenSigningAlgValues: ['RS256', 'ES256'],
    },
  });
  provider.on('server_error', (_ctx, err) => console.error('oidc-provider server_error:', err));
  return provider;
}

let keys = [newKey('RS256')];
let current = null;
const server = http.createServer((req, res) => current.callback()(req, res));
server.listen(port, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  current = build(issuer, keys);
  console.log(`ISSUER ${issuer}`);

  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    if (line.trim() !== 'rotate') return;
    const alg = keys[0].alg === 'RS256' ? 'ES256' : 'RS256';
    // The new key signs; the previous one stays published for verification.
    keys = [newKey(alg), keys[0]];
    current = build(issuer, keys);
    console.log(`ROTATED ${keys[0].kid}`);
  });
  rl.on('close', () => process.exit(0));
});

process.on('SIGTERM', () => process.exit(0));
