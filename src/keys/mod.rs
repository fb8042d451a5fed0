//! Verification keys: static PEM files and JWK Sets, HMAC secrets, and the
//! JWKS store that later refreshes them.
//!
//! The contract: a key carries its own family (and, from a JWK, its own
//! `alg`); the token header only *selects* among keys whose family matches
//! an algorithm the issuer allows. An HMAC secret is never a candidate for a
//! public-key algorithm and a public key never for an HMAC one, so the
//! classic "HS256 signed with the RSA public key" confusion cannot happen.

pub mod assertion;
pub mod introspect;
pub mod jwks;
pub mod p256;
pub mod refresh;

use aws_lc_rs::{hmac, signature};
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind};
use secrecy::{ExposeSecret, SecretSlice};
use std::path::Path;
use std::sync::Arc;

/// One key able to verify signatures.
///
/// The key is prepared once, when it is loaded: public keys are parsed into
/// aws-lc `EVP_PKEY`s (one per algorithm the key may verify, so an RSA
/// key's Montgomery constants are computed once and reused), HMAC secrets
/// into keyed HMAC states. A verification is then only the signature check
/// itself — no DER parsing, no key copy, no allocation.
pub struct VerifyKey {
    /// The JWK `kid`, if any (PEM keys have none).
    pub kid: Option<String>,
    /// The JWK `alg`, if any: the only algorithm this key verifies.
    pub alg: Option<Algorithm>,
    pub family: AlgorithmFamily,
    prepared: Prepared,
}

enum Prepared {
    /// HS256, HS384, HS512.
    Hmac(Box<[hmac::Key; 3]>),
    /// Every algorithm of the key's family that the key can verify; for a
    /// P-256 key that may verify ES256, its table of multiples too
    /// ([`p256::P256Key`], used instead of aws-lc for ES256).
    Public(
        Vec<(Algorithm, signature::ParsedPublicKey)>,
        Option<Arc<p256::P256Key>>,
    ),
}

/// `AUTHGATE_ES256`: `table` (the default) verifies ES256 with the per-key
/// tables of [`p256`]; `aws-lc` sends every ES256 signature through aws-lc,
/// as every other algorithm, and builds no table. Any other value is an
/// error (`authgate run` refuses to start).
pub fn es256_tables(value: Option<&str>) -> Result<bool, String> {
    match value {
        None | Some("" | "table") => Ok(true),
        Some("aws-lc") => Ok(false),
        Some(other) => Err(format!(
            "AUTHGATE_ES256={other:?}: expected `table` or `aws-lc`"
        )),
    }
}

/// Whether key sets build ES256 tables (default on).
static ES256_TABLES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns the ES256 tables on or off for key sets prepared from now on
/// (`authgate run` sets it from [`es256_tables`] before loading keys).
pub fn set_es256_tables(on: bool) {
    ES256_TABLES.store(on, std::sync::atomic::Ordering::Relaxed);
}

fn es256_tables_enabled() -> bool {
    ES256_TABLES.load(std::sync::atomic::Ordering::Relaxed)
}

/// How many ES256 tables one key set may hold ([`p256::P256Key`], 264 KiB
/// and a few ms of CPU each). A JWKS document may list thousands of keys;
/// those past the budget verify through aws-lc, as every other algorithm.
const MAX_TABLES_PER_SET: usize = 4;

/// Where a key set's ES256 tables come from while it is prepared: the
/// previous set of the same issuer (a JWKS refresh that brings the same
/// keys builds nothing), else built, while the budget lasts.
struct Tables<'a> {
    previous: Option<&'a KeySet>,
    left: usize,
}

impl<'a> Tables<'a> {
    fn new(previous: Option<&'a KeySet>) -> Tables<'a> {
        Tables {
            previous,
            left: if es256_tables_enabled() {
                MAX_TABLES_PER_SET
            } else {
                0
            },
        }
    }

    fn get(&mut self, point: &[u8]) -> Option<Arc<p256::P256Key>> {
        if self.left == 0 {
            return None;
        }
        let reused = self.previous.and_then(|set| {
            set.keys.iter().find_map(|k| match &k.prepared {
                Prepared::Public(_, Some(t)) if t.point() == point => Some(t.clone()),
                _ => None,
            })
        });
        let table = reused.or_else(|| p256::P256Key::from_sec1(point).map(Arc::new))?;
        self.left -= 1;
        Some(table)
    }
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material (an HMAC secret lives here too).
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

/// The longest signature any supported algorithm makes: RSA-8192.
const MAX_SIGNATURE: usize = 1024;

impl VerifyKey {
    /// Prepares `key` for every algorithm of `family` it can verify (only
    /// `alg` when the JWK names one). `None` when it can verify none of them
    /// — an RSA key under 2048 bits, an EC key on another curve.
    fn prepare(
        kid: Option<String>,
        alg: Option<Algorithm>,
        family: AlgorithmFamily,
        key: &DecodingKey,
        tables: &mut Tables,
    ) -> Option<VerifyKey> {
        let prepared = match (family, key.kind()) {
            (AlgorithmFamily::Hmac, DecodingKeyKind::SecretOrDer(secret)) => {
                Prepared::Hmac(Box::new([
                    hmac::Key::new(hmac::HMAC_SHA256, secret),
                    hmac::Key::new(hmac::HMAC_SHA384, secret),
                    hmac::Key::new(hmac::HMAC_SHA512, secret),
                ]))
            }
            (AlgorithmFamily::Hmac, _) => return None,
            (_, kind) => {
                let der;
                let bytes: &[u8] = match kind {
                    DecodingKeyKind::SecretOrDer(b) => b,
                    DecodingKeyKind::RsaModulusExponent { n, e } => {
                        der = rsa_public_key_der(n, e);
                        &der
                    }
                };
                let parsed: Vec<_> = family
                    .algorithms()
                    .iter()
                    .filter(|a| alg.is_none_or(|only| only == **a))
                    .filter_map(|a| {
                        let ring_alg = public_algorithm(*a)?;
                        signature::ParsedPublicKey::new(ring_alg, bytes)
                            .ok()
                            .map(|k| (*a, k))
                    })
                    .collect();
                if parsed.is_empty() {
                    return None;
                }
                // Only a key aws-lc accepted for ES256 gets a table, and
                // only from the uncompressed point aws-lc parsed.
                let es256 = parsed
                    .iter()
                    .any(|(a, _)| *a == Algorithm::ES256)
                    .then(|| tables.get(bytes))
                    .flatten();
                Prepared::Public(parsed, es256)
            }
        };
        Some(VerifyKey {
            kid,
            alg,
            family,
            prepared,
        })
    }

    /// Whether this key may verify a token signed with `alg`.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.family == alg.family() && self.alg.is_none_or(|a| a == alg)
    }

    /// Verifies `signature` (base64url, no padding) over `message` with `alg`.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &str) -> bool {
        if !self.accepts(alg) {
            return false;
        }
        let mut buf = [0u8; MAX_SIGNATURE];
        let Some(signature) = decode_signature(signature, &mut buf) else {
            return false;
        };
        match &self.prepared {
            Prepared::Hmac(keys) => {
                let key = match alg {
                    Algorithm::HS256 => &keys[0],
                    Algorithm::HS384 => &keys[1],
                    Algorithm::HS512 => &keys[2],
                    _ => return false,
                };
                // Constant-time comparison.
                hmac::verify(key, message, signature).is_ok()
            }
            Prepared::Public(keys, es256) => {
                let Some((_, key)) = keys.iter().find(|(a, _)| *a == alg) else {
                    return false;
                };
                if let (Algorithm::ES256, Some(table)) = (alg, es256) {
                    return table.verify(message, signature);
                }
                let mut der = [0u8; MAX_ECDSA_DER];
                let signature = match alg {
                    Algorithm::ES256 => ecdsa_fixed_to_der(signature, 32, &mut der),
                    Algorithm::ES384 => ecdsa_fixed_to_der(signature, 48, &mut der),
                    _ => Some(signature),
                };
                signature.is_some_and(|sig| key.verify_sig(message, sig).is_ok())
            }
        }
    }
}

/// The longest DER ECDSA signature [`ecdsa_fixed_to_der`] writes (P-384):
/// SEQUENCE header, then two INTEGERs of up to 1 + 48 bytes with headers.
const MAX_ECDSA_DER: usize = 2 + 2 * (2 + 1 + 48);

/// A JWS ECDSA signature (`r ‖ s`, each `coord` bytes, RFC 7518 §3.4) as
/// the DER `ECDSA-Sig-Value` aws-lc verifies, written into `out`; `None`
/// when the length is not exactly `2 × coord`.
///
/// aws-lc-rs's `_FIXED` algorithms make the same conversion through heap
/// BIGNUMs, about 13,000 instructions a verification (1.6 % of an ES256
/// verification under callgrind); this is a few hundred. Zero or
/// out-of-range `r`/`s` are encoded as they are and refused by aws-lc.
fn ecdsa_fixed_to_der<'a>(
    fixed: &[u8],
    coord: usize,
    out: &'a mut [u8; MAX_ECDSA_DER],
) -> Option<&'a [u8]> {
    if coord > 48 || fixed.len() != 2 * coord {
        return None;
    }
    let (r, s) = fixed.split_at(coord);
    let mut at = 2;
    for v in [r, s] {
        // Minimal: no leading zero bytes, then one zero byte if the top bit
        // is set (DER INTEGERs are signed); zero itself is a single 0x00.
        let v = &v[v.iter().take_while(|b| **b == 0).count()..];
        let pad = v.first().is_none_or(|b| b & 0x80 != 0);
        let len = v.len() + usize::from(pad);
        out[at] = 0x02;
        out[at + 1] = len as u8;
        at += 2;
        if pad {
            out[at] = 0;
            at += 1;
        }
        out[at..at + v.len()].copy_from_slice(v);
        at += v.len();
    }
    out[0] = 0x30;
    out[1] = (at - 2) as u8;
    Some(&out[..at])
}

/// A base64url (unpadded) signature decoded into `buf`, without
/// allocating; `None` when it is not base64url or longer than any
/// supported algorithm's signature.
fn decode_signature<'a>(b64: &str, buf: &'a mut [u8; MAX_SIGNATURE]) -> Option<&'a [u8]> {
    if b64.len() > MAX_SIGNATURE.div_ceil(3) * 4 {
        return None;
    }
    let len = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode_slice(b64.as_bytes(), buf)
        .ok()?;
    Some(&buf[..len])
}

/// The aws-lc algorithm that verifies a public-key JWS `alg` (RFC 7518 §3):
/// the same choices jsonwebtoken makes, RSA limited to 2048–8192 bits.
fn public_algorithm(alg: Algorithm) -> Option<&'static dyn signature::VerificationAlgorithm> {
    Some(match alg {
        Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
        // DER: `verify` converts the JWS r‖s itself (see ecdsa_fixed_to_der).
        Algorithm::ES256 => &signature::ECDSA_P256_SHA256_ASN1,
        Algorithm::ES384 => &signature::ECDSA_P384_SHA384_ASN1,
        Algorithm::EdDSA => &signature::ED25519,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => return None,
    })
}

/// DER `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`
/// (RFC 8017 A.1.1) from a JWK's big-endian `n` and `e`.
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn len(out: &mut Vec<u8>, len: usize) {
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
    }
    fn integer(out: &mut Vec<u8>, v: &[u8]) {
        let v = &v[v.iter().take_while(|b| **b == 0).count()..];
        let pad = v.first().is_none_or(|b| b & 0x80 != 0);
        out.push(0x02);
        len(out, v.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(v);
    }
    let mut body = Vec::with_capacity(n.len() + e.len() + 16);
    integer(&mut body, n);
    integer(&mut body, e);
    let mut out = Vec::with_capacity(body.len() + 4);
    out.push(0x30);
    len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// The keys of one issuer at one moment. Immutable; replaced whole.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<VerifyKey>,
}

impl KeySet {
    /// Keys that may verify a token with this `kid` and `alg`: keys with the
    /// same `kid`, plus keys without one (PEM files). Without a token `kid`,
    /// every key of the right family.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a VerifyKey> + 'a {
        self.keys.iter().filter(move |k| {
            k.accepts(alg)
                && match (kid, k.kid.as_deref()) {
                    (Some(want), Some(have)) => want == have,
                    _ => true,
                }
        })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Reads one `keys = [...]` entry: a PEM public key or certificate, or a JWK
/// Set file (recognised by a leading `{`).
pub fn load_key_file(path: &Path) -> Result<Vec<VerifyKey>, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let trimmed = bytes.trim_ascii_start();
    if trimmed.first() == Some(&b'{') {
        return parse_jwks(trimmed, None).map_err(|e| format!("`{}`: {e}", path.display()));
    }
    parse_public_pem(&bytes)
        .map(|k| vec![k])
        .map_err(|e| format!("`{}`: {e}", path.display()))
}

/// A PEM `PUBLIC KEY`, `RSA PUBLIC KEY` or `CERTIFICATE`.
pub fn parse_public_pem(pem: &[u8]) -> Result<VerifyKey, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "not a PEM file".to_string())?;
    if text.contains("PRIVATE KEY") {
        return Err("holds a PRIVATE key; give the gateway only the public key".into());
    }
    if !text.contains("-----BEGIN ") {
        return Err("not a PEM public key, certificate, or JWK Set".into());
    }
    type Parse = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;
    let attempts: [(AlgorithmFamily, Parse); 3] = [
        (AlgorithmFamily::Rsa, DecodingKey::from_rsa_pem),
        (AlgorithmFamily::Ec, DecodingKey::from_ec_pem),
        (AlgorithmFamily::Ed, DecodingKey::from_ed_pem),
    ];
    for (family, parse) in attempts {
        if let Ok(key) = parse(pem) {
            let mut tables = Tables::new(None);
            return VerifyKey::prepare(None, None, family, &key, &mut tables).ok_or_else(|| {
                match family {
                    AlgorithmFamily::Rsa => {
                        "RSA key too small or too large (2048 to 8192 bits)".into()
                    }
                    _ => "public key cannot verify any supported algorithm".into(),
                }
            });
        }
    }
    Err(
        "unsupported PEM key (RSA, EC P-256/P-384 or Ed25519 public keys and certificates are)"
            .into(),
    )
}

/// Parses a JWK Set. Keys with `use` other than `sig`, symmetric (`oct`)
/// keys, keys for encryption algorithms and malformed keys are skipped; a
/// set left without any usable key is an error. ES256 tables of keys that
/// are in `previous` too are reused ([`Tables`]).
pub fn parse_jwks(bytes: &[u8], previous: Option<&KeySet>) -> Result<Vec<VerifyKey>, String> {
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| format!("not a JWK Set: {e}"))?;
    let mut tables = Tables::new(previous);
    let mut keys = Vec::new();
    for jwk in &set.keys {
        if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
            AlgorithmParameters::EllipticCurve(_) => AlgorithmFamily::Ec,
            AlgorithmParameters::OctetKeyPair(_) => AlgorithmFamily::Ed,
            AlgorithmParameters::OctetKey(_) => continue,
        };
        let alg = match jwk.common.key_algorithm {
            None => None,
            Some(ka) => match ka.to_string().parse::<Algorithm>() {
                Ok(a) if a.family() == family => Some(a),
                _ => continue,
            },
        };
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        if let Some(key) =
            VerifyKey::prepare(jwk.common.key_id.clone(), alg, family, &key, &mut tables)
        {
            keys.push(key);
        }
    }
    if keys.is_empty() {
        return Err("no usable signing key in the set".into());
    }
    Ok(keys)
}

/// The key set made of an HMAC secret.
pub fn hmac_keyset(secret: &SecretSlice<u8>) -> KeySet {
    KeySet {
        keys: VerifyKey::prepare(
            None,
            None,
            AlgorithmFamily::Hmac,
            &DecodingKey::from_secret(secret.expose_secret()),
            &mut Tables::new(None),
        )
        .into_iter()
        .collect(),
    }
}

/// Reads a secret from an environment variable or a file (raw bytes; one
/// trailing newline of a file is not part of it). Errors never echo it.
pub fn load_secret(env: Option<&str>, file: Option<&Path>) -> Result<SecretSlice<u8>, String> {
    let bytes = match (env, file) {
        (Some(var), _) => match std::env::var_os(var) {
            Some(v) if !v.is_empty() => v.into_encoded_bytes(),
            Some(_) => return Err(format!("environment variable `{var}` is empty")),
            None => return Err(format!("environment variable `{var}` is not set")),
        },
        (None, Some(path)) => {
            let mut b = std::fs::read(path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
            if b.last() == Some(&b'\n') {
                b.pop();
                if b.last() == Some(&b'\r') {
                    b.pop();
                }
            }
            if b.is_empty() {
                return Err(format!("`{}` is empty", path.display()));
            }
            b
        }
        (None, None) => return Err("no secret source".into()),
    };
    Ok(SecretSlice::from(bytes))
}

/// Where an issuer's keys come from.
pub enum KeySource {
    /// Loaded once at startup / reload.
    Static(Arc<KeySet>),
    /// Fetched from `jwks_url` and refreshed.
    Jwks(Arc<jwks::JwksStore>),
}

impl KeySource {
    /// The current keys, or `None` when a JWKS never loaded.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        match self {
            KeySource::Static(k) => Some(k.clone()),
            KeySource::Jwks(store) => store.current(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_keys_and_garbage_are_refused() {
        assert!(parse_public_pem(
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        )
        .expect_err("private")
        .contains("PRIVATE"));
        assert!(parse_public_pem(b"hello").is_err());
        assert!(parse_jwks(b"{\"keys\": []}", None).is_err());
        assert!(parse_jwks(b"{\"keys\": [{\"kty\":\"oct\",\"k\":\"c2VjcmV0\"}]}", None).is_err());
        assert!(parse_jwks(b"<html>", None).is_err());
    }

    #[test]
    fn jwks_keeps_kid_alg_and_skips_encryption_keys() {
        let set = br#"{"keys":[
            {"kty":"EC","crv":"P-256","kid":"a","alg":"ES256","use":"sig",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"EC","crv":"P-256","kid":"b","use":"enc",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"EC","crv":"P-256","kid":"c","alg":"RS256",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]}"#;
        let keys = parse_jwks(set, None).expect("one usable key");
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("a"));
        let ks = KeySet { keys };
        assert_eq!(ks.candidates(Some("a"), Algorithm::ES256).count(), 1);
        assert_eq!(ks.candidates(Some("a"), Algorithm::ES384).count(), 0);
        assert_eq!(ks.candidates(Some("z"), Algorithm::ES256).count(), 0);
        assert_eq!(ks.candidates(None, Algorithm::HS256).count(), 0);
    }

    /// A P-256 key from a PEM file or from a JWK gets its table, so ES256
    /// takes the table path; the JWK-built key verifies what the PEM key
    /// signs, and a P-384 key gets none.
    #[test]
    fn p256_keys_get_a_table_from_pem_and_jwk() {
        use jsonwebtoken::crypto::sign;
        use jsonwebtoken::jwk::Jwk;
        use jsonwebtoken::EncodingKey;
        let has_table = |k: &VerifyKey| matches!(k.prepared, Prepared::Public(_, Some(_)));
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec");
        let pem = parse_public_pem(ec.public_key_pem().as_bytes()).expect("pem");
        assert!(has_table(&pem));
        let enc = EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).expect("enc");
        let jwk = Jwk::from_encoding_key(&enc, Algorithm::ES256).expect("jwk");
        let set = serde_json::json!({ "keys": [jwk] }).to_string();
        let from_jwk = parse_jwks(set.as_bytes(), None).expect("jwks").remove(0);
        assert!(has_table(&from_jwk));
        let msg = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0";
        let sig = sign(msg, &enc, Algorithm::ES256).expect("sign");
        assert!(pem.verify(Algorithm::ES256, msg, &sig));
        assert!(from_jwk.verify(Algorithm::ES256, msg, &sig));
        assert!(!from_jwk.verify(Algorithm::ES256, b"x", &sig));
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("p384");
        let p384 = parse_public_pem(p384.public_key_pem().as_bytes()).expect("pem");
        assert!(!has_table(&p384));
    }

    #[test]
    fn es256_switch_values() {
        assert_eq!(es256_tables(None), Ok(true));
        assert_eq!(es256_tables(Some("")), Ok(true));
        assert_eq!(es256_tables(Some("table")), Ok(true));
        assert_eq!(es256_tables(Some("aws-lc")), Ok(false));
        assert!(es256_tables(Some("fast")).is_err_and(|e| e.contains("AUTHGATE_ES256")));
    }

    /// A JWKS with more P-256 keys than the table budget: the first
    /// `MAX_TABLES_PER_SET` get tables, the others verify through aws-lc,
    /// all of them correctly; a refresh bringing the same keys reuses the
    /// tables instead of building them again.
    #[test]
    fn p256_tables_are_budgeted_and_reused() {
        use jsonwebtoken::crypto::sign;
        use jsonwebtoken::jwk::Jwk;
        use jsonwebtoken::EncodingKey;
        let table = |k: &VerifyKey| match &k.prepared {
            Prepared::Public(_, t) => t.clone(),
            Prepared::Hmac(_) => None,
        };
        let encs: Vec<EncodingKey> = (0..MAX_TABLES_PER_SET + 2)
            .map(|_| {
                let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec");
                EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).expect("enc")
            })
            .collect();
        let jwks: Vec<_> = encs
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mut j =
                    serde_json::to_value(Jwk::from_encoding_key(e, Algorithm::ES256).expect("jwk"))
                        .expect("json");
                j["kid"] = format!("k{i}").into();
                j
            })
            .collect();
        let set = serde_json::json!({ "keys": jwks }).to_string();
        let first = KeySet {
            keys: parse_jwks(set.as_bytes(), None).expect("jwks"),
        };
        let with_table = first.keys.iter().filter(|k| table(k).is_some()).count();
        assert_eq!(with_table, MAX_TABLES_PER_SET);
        let msg = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0";
        for (key, enc) in first.keys.iter().zip(&encs) {
            let sig = sign(msg, enc, Algorithm::ES256).expect("sign");
            assert!(key.verify(Algorithm::ES256, msg, &sig));
            assert!(!key.verify(Algorithm::ES256, b"x", &sig));
        }
        let again = parse_jwks(set.as_bytes(), Some(&first)).expect("jwks");
        for (a, b) in first.keys.iter().zip(&again) {
            match (table(a), table(b)) {
                (Some(a), Some(b)) => assert!(Arc::ptr_eq(&a, &b), "table rebuilt"),
                (None, None) => {}
                _ => panic!("table budget differs between refreshes"),
            }
        }
    }

    /// Every family through the prepared path: a good signature verifies
    /// with its own algorithm only; a changed message, a changed or
    /// oversized signature, another algorithm of the family and a key of the
    /// wrong family all fail. The RSA key also goes through a JWK (`n`/`e`
    /// re-encoded as DER), with and without a JWK `alg`.
    #[test]
    fn prepared_keys_verify_exactly_what_they_should() {
        use jsonwebtoken::crypto::sign;
        use jsonwebtoken::jwk::Jwk;
        use jsonwebtoken::EncodingKey;
        let msg = b"eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0";
        let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("rsa");
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec");
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed");
        let rsa_enc = EncodingKey::from_rsa_pem(rsa.serialize_pem().as_bytes()).expect("rsa");
        let ec_enc = EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).expect("ec");
        let ed_enc = EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).expect("ed");
        let rsa_pem = parse_public_pem(rsa.public_key_pem().as_bytes()).expect("rsa pem");
        let rsa_jwk = |alg: Option<&str>| {
            let mut jwk = serde_json::to_value(
                Jwk::from_encoding_key(&rsa_enc, Algorithm::RS256).expect("jwk"),
            )
            .expect("json");
            match alg {
                Some(a) => jwk["alg"] = a.into(),
                None => drop(jwk.as_object_mut().expect("object").remove("alg")),
            }
            let set = serde_json::json!({ "keys": [jwk] }).to_string();
            parse_jwks(set.as_bytes(), None).expect("jwks").remove(0)
        };
        let rsa_any = rsa_jwk(None);
        let rsa_rs256_only = rsa_jwk(Some("RS256"));
        let ec_pem = parse_public_pem(ec.public_key_pem().as_bytes()).expect("ec pem");
        let ed_pem = parse_public_pem(ed.public_key_pem().as_bytes()).expect("ed pem");
        let secret: SecretSlice<u8> = b"0123456789abcdef0123456789abcdef".to_vec().into();
        let hmac = hmac_keyset(&secret).keys.remove(0);

        for (key, enc, alg, other) in [
            (&rsa_pem, &rsa_enc, Algorithm::RS256, Some(Algorithm::PS256)),
            (&rsa_pem, &rsa_enc, Algorithm::PS384, Some(Algorithm::RS384)),
            (&rsa_any, &rsa_enc, Algorithm::RS512, Some(Algorithm::RS256)),
            (&rsa_any, &rsa_enc, Algorithm::PS256, Some(Algorithm::RS256)),
            (&rsa_rs256_only, &rsa_enc, Algorithm::RS256, None),
            (&ec_pem, &ec_enc, Algorithm::ES256, Some(Algorithm::ES384)),
            (&ed_pem, &ed_enc, Algorithm::EdDSA, None),
        ] {
            let sig = sign(msg, enc, alg).expect("sign");
            assert!(key.verify(alg, msg, &sig), "{alg:?}");
            assert!(!key.verify(alg, b"other message", &sig), "{alg:?}");
            let mut bad = sig.clone().into_bytes();
            bad[5] = if bad[5] == b'A' { b'B' } else { b'A' };
            assert!(!key.verify(alg, msg, std::str::from_utf8(&bad).expect("ascii")));
            assert!(!key.verify(alg, msg, &"A".repeat(2000)), "oversized");
            assert!(!key.verify(alg, msg, "not base64!"), "garbage");
            if let Some(other) = other {
                assert!(!key.verify(other, msg, &sig), "{alg:?} as {other:?}");
            }
            assert!(!hmac.verify(alg, msg, &sig), "HMAC key for {alg:?}");
        }
        let sig = sign(msg, &rsa_enc, Algorithm::RS384).expect("sign");
        assert!(
            !rsa_rs256_only.verify(Algorithm::RS384, msg, &sig),
            "JWK alg binds"
        );
        assert!(rsa_any.verify(Algorithm::RS384, msg, &sig));

        let hs_enc = EncodingKey::from_secret(secret.expose_secret());
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let sig = sign(msg, &hs_enc, alg).expect("sign");
            assert!(hmac.verify(alg, msg, &sig), "{alg:?}");
            assert!(!hmac.verify(alg, b"x", &sig), "{alg:?}");
            assert!(!rsa_pem.verify(alg, msg, &sig), "RSA key for {alg:?}");
        }
        let hs256 = sign(msg, &hs_enc, Algorithm::HS256).expect("sign");
        assert!(!hmac.verify(Algorithm::HS512, msg, &hs256));
    }

    #[test]
    fn signatures_up_to_rsa_8192_decode_and_longer_ones_do_not() {
        let b64 = |n: usize| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(vec![7u8; n]);
        let mut buf = [0u8; MAX_SIGNATURE];
        for n in [1, 64, 256, 512, 1023, MAX_SIGNATURE] {
            assert_eq!(
                decode_signature(&b64(n), &mut buf).map(<[u8]>::len),
                Some(n)
            );
        }
        assert_eq!(decode_signature(&b64(MAX_SIGNATURE + 1), &mut buf), None);
        assert_eq!(decode_signature("a+b/", &mut buf), None, "not base64url");
        assert_eq!(decode_signature("abc=", &mut buf), None, "padded");
    }

    #[test]
    fn ecdsa_fixed_signatures_become_minimal_der() {
        let mut out = [0u8; MAX_ECDSA_DER];
        // r with the top bit set gets a zero byte; s loses its leading zeros.
        let mut fixed = [0u8; 64];
        fixed[0] = 0x80;
        fixed[31] = 0x01;
        fixed[62] = 0x12;
        fixed[63] = 0x34;
        let der = ecdsa_fixed_to_der(&fixed, 32, &mut out).expect("der");
        let mut want = vec![0x30, 2 + 33 + 2 + 2, 0x02, 33, 0x00, 0x80];
        want.extend_from_slice(&[0; 30]);
        want.extend_from_slice(&[0x01, 0x02, 0x02, 0x12, 0x34]);
        assert_eq!(der, want.as_slice());
        // Zero is one zero byte (and refused later by aws-lc).
        let der = ecdsa_fixed_to_der(&[0; 64], 32, &mut out).expect("der");
        assert_eq!(der, [0x30, 6, 0x02, 1, 0, 0x02, 1, 0]);
        // Largest: P-384 with both top bits set.
        let der = ecdsa_fixed_to_der(&[0xff; 96], 48, &mut out).expect("der");
        assert_eq!(der.len(), MAX_ECDSA_DER);
        assert_eq!(&der[..5], &[0x30, 102, 0x02, 49, 0x00]);
        // Any other length is refused, never truncated or padded.
        for len in [0, 1, 63, 65, 128] {
            assert!(ecdsa_fixed_to_der(&vec![1; len], 32, &mut out).is_none());
        }
        assert!(ecdsa_fixed_to_der(&[1; 98], 49, &mut out).is_none());
    }

    /// The DER path decides exactly as aws-lc-rs's own r‖s (`_FIXED`)
    /// verification, on good signatures and on every single-byte change.
    #[test]
    fn ecdsa_der_path_agrees_with_aws_lc_fixed() {
        use aws_lc_rs::rand::SystemRandom;
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, UnparsedPublicKey};
        let rng = SystemRandom::new();
        for (sign_alg, fixed_alg, jwt_alg) in [
            (
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &signature::ECDSA_P256_SHA256_FIXED,
                Algorithm::ES256,
            ),
            (
                &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                &signature::ECDSA_P384_SHA384_FIXED,
                Algorithm::ES384,
            ),
        ] {
            let pair = EcdsaKeyPair::generate(sign_alg).expect("key");
            let public = pair.public_key().as_ref().to_vec();
            let reference = UnparsedPublicKey::new(fixed_alg, &public);
            let ours = VerifyKey {
                kid: None,
                alg: None,
                family: AlgorithmFamily::Ec,
                prepared: Prepared::Public(
                    vec![(
                        jwt_alg,
                        signature::ParsedPublicKey::new(
                            public_algorithm(jwt_alg).expect("alg"),
                            &public,
                        )
                        .expect("parsed"),
                    )],
                    None,
                ),
            };
            for i in 0..40u8 {
                let msg = [b'm', i];
                let sig = pair.sign(&rng, &msg).expect("sign").as_ref().to_vec();
                let b64 = |s: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
                assert!(ours.verify(jwt_alg, &msg, &b64(&sig)));
                assert!(reference.verify(&msg, &sig).is_ok());
                let mut bad = sig.clone();
                bad[usize::from(i) % sig.len()] ^= 1 << (i % 8);
                assert_eq!(
                    ours.verify(jwt_alg, &msg, &b64(&bad)),
                    reference.verify(&msg, &bad).is_ok()
                );
                assert!(!ours.verify(jwt_alg, &msg, &b64(&bad)));
                assert!(!ours.verify(jwt_alg, b"other", &b64(&sig)));
                assert!(!ours.verify(jwt_alg, &msg, &b64(&sig[1..])));
            }
        }
    }

    #[test]
    fn rsa_der_from_jwk_components() {
        // n with the high bit set gets a leading zero; e = 65537.
        let der = rsa_public_key_der(&[0x00, 0x80, 0x01], &[0x01, 0x00, 0x01]);
        assert_eq!(
            der,
            [0x30, 0x0a, 0x02, 0x03, 0x00, 0x80, 0x01, 0x02, 0x03, 0x01, 0x00, 0x01]
        );
        // Long-form length for a 2048-bit modulus.
        let der = rsa_public_key_der(&[0xff; 256], &[3]);
        assert_eq!(&der[..4], &[0x30, 0x82, 0x01, 0x08]);
        assert_eq!(&der[4..8], &[0x02, 0x82, 0x01, 0x01]);
    }

    #[test]
    fn secret_file_loses_one_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("authgate-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("s");
        std::fs::write(&p, b"abc\n\n").expect("write");
        let s = load_secret(None, Some(&p)).expect("secret");
        assert_eq!(s.expose_secret(), b"abc\n");
        std::fs::write(&p, b"\n").expect("write");
        assert!(load_secret(None, Some(&p)).is_err());
        assert!(load_secret(Some("AUTHGATE_SURELY_UNSET_VAR"), None)
            .expect_err("unset")
            .contains("not set"));
    }
}
