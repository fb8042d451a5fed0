//! The immutable snapshot a request runs on, built from a [`Config`]:
//! the route table, issuers with their keys, upstream clients, identity
//! settings and the verification cache. A reload builds a new one and swaps
//! it in whole (`reload.rs`); a request loads one snapshot and uses only it.

use crate::config::{self, AuthMode, Config, ConfigError, IssuerKind, Locator, PiiMode, RateKey};
use crate::identity::{CustomerIdKey, Verified};
use crate::keys::{self, jwks::JwksStore, KeySet, KeySource};
use crate::pipeline::clientip::Cidr;
use crate::pipeline::forward::{self, UpstreamClient};
use crate::pipeline::ratelimit::RateLimiter;
use http::{HeaderName, HeaderValue, Method};
use jsonwebtoken::Algorithm;
use secrecy::SecretSlice;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Introspection requests in flight at most; more get 503 `keys_unavailable`.
pub const INTROSPECTION_CONCURRENCY: usize = 64;

/// Entries in the verification cache (bounded; evicts least recently used).
pub const TOKEN_CACHE_CAPACITY: usize = 50_000;

/// A claim named by `customer_id_claim` / `match_claims`: a top-level name or
/// an RFC 6901 pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimPath {
    Name(String),
    Pointer(String),
}

impl ClaimPath {
    pub fn parse(s: &str) -> ClaimPath {
        if s.starts_with('/') {
            ClaimPath::Pointer(s.to_owned())
        } else {
            ClaimPath::Name(s.to_owned())
        }
    }

    pub fn get<'a>(
        &self,
        claims: &'a serde_json::Map<String, serde_json::Value>,
    ) -> Option<&'a serde_json::Value> {
        match self {
            ClaimPath::Name(n) => claims.get(n),
            ClaimPath::Pointer(p) => {
                let (first, rest) = split_pointer(p)?;
                let v = claims.get(&first)?;
                if rest.is_empty() {
                    Some(v)
                } else {
                    v.pointer(rest)
                }
            }
        }
    }

    /// The top-level claim this path starts at.
    pub fn root(&self) -> String {
        match self {
            ClaimPath::Name(n) => n.clone(),
            ClaimPath::Pointer(p) => split_pointer(p).map(|(f, _)| f).unwrap_or_default(),
        }
    }
}

fn split_pointer(p: &str) -> Option<(String, &str)> {
    let body = p.strip_prefix('/')?;
    let (first, rest) = match body.find('/') {
        Some(i) => (&body[..i], &body[i..]),
        None => (body, ""),
    };
    Some((first.replace("~1", "/").replace("~0", "~"), rest))
}

/// One `[[issuers]]` entry, ready to verify.
pub struct IssuerRt {
    pub name: String,
    pub name_header: HeaderValue,
    pub audiences: Option<Vec<String>>,
    pub algorithms: Vec<Algorithm>,
    pub keys: KeySource,
    pub leeway: u64,
    pub max_age: Option<u64>,
    pub scope_claim: Option<String>,
    pub namespace: String,
    pub context_claim: Option<String>,
    pub context_keys: Option<Vec<String>>,
    pub introspection: Option<Introspection>,
    /// A fetch client trusting the issuer's own `ca` (extension), if set.
    pub fetch_client: Option<UpstreamClient>,
}

/// RFC 7662 endpoint settings.
pub struct Introspection {
    pub url: http::Uri,
    /// `Authorization: Basic …` with the client credentials, built once and
    /// marked sensitive (never logged, never HPACK-indexed).
    pub authorization: HeaderValue,
    pub cache_ttl: Duration,
}

impl Introspection {
    pub fn new(
        url: http::Uri,
        client_id: &str,
        client_secret: &SecretSlice<u8>,
        cache_ttl: Duration,
    ) -> Result<Introspection, String> {
        Ok(Introspection {
            url,
            authorization: keys::introspect::basic_authorization(client_id, client_secret)?,
            cache_ttl,
        })
    }
}

/// One `[[routes]]` entry.
pub struct RouteRt {
    pub name: Arc<str>,
    pub methods: Option<Vec<Method>>,
    pub upstream: usize,
    pub auth: AuthMode,
    pub scopes: Vec<String>,
    /// Issuer indexes allowed; `None`: any.
    pub issuers: Option<Vec<usize>>,
    pub context: Option<Locator>,
    pub match_claims: Vec<(ClaimPath, Locator)>,
    /// Whether the body is buffered (a `body:` locator applies here).
    pub reads_body: bool,
    pub close_on_expiry: bool,
    pub rate_limit: Option<RateLimiter>,
}

impl RouteRt {
    pub fn allows(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(method))
    }
}

/// Header names under the configured prefix, built once.
pub struct IdentityHeaders {
    pub prefix: String,
    pub auth: HeaderName,
    pub customer_id: HeaderName,
    pub issuer: HeaderName,
    pub scopes: HeaderName,
    pub token_expires: HeaderName,
    pub context: HeaderName,
    pub customer_info: HeaderName,
    pub segments: HeaderName,
    pub subdivision: HeaderName,
    pub session_id: HeaderName,
    pub session_type: HeaderName,
    pub assertion: HeaderName,
}

impl IdentityHeaders {
    fn new(prefix: &str) -> Result<IdentityHeaders, String> {
        let h = |suffix: &str| {
            HeaderName::from_bytes(format!("{prefix}{suffix}").as_bytes())
                .map_err(|_| format!("`{prefix}{suffix}` is not a header name"))
        };
        Ok(IdentityHeaders {
            prefix: prefix.to_owned(),
            auth: h("auth")?,
            customer_id: h("customer-id")?,
            issuer: h("issuer")?,
            scopes: h("scopes")?,
            token_expires: h("token-expires")?,
            context: h("context")?,
            customer_info: h("customer-info")?,
            segments: h("segments")?,
            subdivision: h("subdivision")?,
            session_id: h("session-id")?,
            session_type: h("session-type")?,
            assertion: h("assertion")?,
        })
    }
}

/// Identity settings.
pub struct IdentityRt {
    pub headers: IdentityHeaders,
    pub claim: ClaimPath,
    /// `Some` when `pseudonymize = true`.
    pub key: Option<CustomerIdKey>,
    pub pii: PiiMode,
    /// Top-level claims kept in the cache for `match_claims`.
    pub kept_claims: Vec<String>,
}

/// Everything a request needs, immutable.
pub struct Runtime {
    pub config: Config,
    router: matchit::Router<Vec<usize>>,
    pub routes: Vec<RouteRt>,
    pub issuers: Vec<IssuerRt>,
    iss_index: HashMap<String, usize>,
    pub introspection_issuer: Option<usize>,
    pub upstreams: Vec<UpstreamClient>,
    pub locators: Vec<Locator>,
    pub identity: IdentityRt,
    pub trusted_proxies: Vec<Cidr>,
    pub token_cache: quick_cache::sync::Cache<[u8; 32], Arc<Verified>>,
    /// Opaque tokens introspection called inactive, until the Unix second given.
    pub negative_cache: quick_cache::sync::Cache<[u8; 32], u64>,
    /// At most this many introspection calls in flight.
    pub introspection_permits: tokio::sync::Semaphore,
    /// Signs `x-authgate-assertion` when `[identity.assertion]` is set.
    pub assertion: Option<crate::keys::assertion::AssertionSigner>,
    /// A client for JWKS and introspection (webpki roots).
    pub fetch_client: UpstreamClient,
}

/// What route resolution found.
pub enum RouteMatch<'a> {
    Found(usize),
    NotFound,
    MethodNotAllowed(&'a [usize]),
}

impl Runtime {
    /// Loads keys, secrets and CA files named by `config`. Every problem is
    /// reported; nothing is bound or fetched here.
    pub fn build(config: Config) -> Result<Runtime, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut err = |key: String, message: String| {
            errors.push(ConfigError {
                key,
                line: None,
                message,
            })
        };
        // Identity.
        let id = &config.identity;
        let headers = match IdentityHeaders::new(&id.header_prefix) {
            Ok(h) => Some(h),
            Err(m) => {
                err("identity.header_prefix".into(), m);
                None
            }
        };
        let key = if id.pseudonymize {
            match keys::load_secret(
                id.key_env.as_deref(),
                id.key_file.as_ref().map(|p| config.resolve(p)).as_deref(),
            ) {
                Ok(secret) if secrecy::ExposeSecret::expose_secret(&secret).len() < 16 => {
                    err(
                        id_key_name(id),
                        "the pseudonymization key must be at least 16 bytes".into(),
                    );
                    None
                }
                Ok(secret) => Some(CustomerIdKey::new(&secret)),
                Err(m) => {
                    err(id_key_name(id), m);
                    None
                }
            }
        } else {
            None
        };
        // Issuers.
        let mut issuers = Vec::new();
        let mut iss_index = HashMap::new();
        let mut introspection_issuer = None;
        for (i, is) in config.issuers.iter().enumerate() {
            let k = |s: &str| format!("issuers[{i}].{s}");
            let mut algorithms = Vec::new();
            for (j, a) in is.algorithms.iter().enumerate() {
                match a.parse::<Algorithm>() {
                    Ok(alg) => algorithms.push(alg),
                    Err(_) => err(
                        format!("issuers[{i}].algorithms[{j}]"),
                        format!("`{a}` is not a supported algorithm"),
                    ),
                }
            }
            let mut introspection = None;
            let keys = match is.kind {
                IssuerKind::Introspection => {
                    introspection_issuer = Some(i);
                    let secret = keys::load_secret(
                        is.client_secret_env.as_deref(),
                        is.client_secret_file
                            .as_ref()
                            .map(|p| config.resolve(p))
                            .as_deref(),
                    );
                    let url = match is.introspection_url.as_deref().map(str::parse::<http::Uri>) {
                        Some(Ok(url)) => Some(url),
                        Some(Err(_)) => {
                            err(k("introspection_url"), "not an http(s) URL".into());
                            None
                        }
                        None => {
                            err(
                                k("introspection_url"),
                                "kind = \"introspection\" needs introspection_url".into(),
                            );
                            None
                        }
                    };
                    if is.client_id.is_none() {
                        err(k("client_id"), "introspection needs client_id".into());
                    }
                    match (secret, url, &is.client_id) {
                        (Ok(client_secret), Some(url), Some(client_id)) => {
                            match Introspection::new(
                                url,
                                client_id,
                                &client_secret,
                                is.cache_ttl.unwrap_or(Duration::from_secs(60)),
                            ) {
                                Ok(intro) => introspection = Some(intro),
                                Err(m) => err(k("client_id"), m),
                            }
                        }
                        (Err(m), _, _) => err(k("client_secret_env"), m),
                        // The missing URL or client_id is reported above.
                        _ => {}
                    }
                    KeySource::Static(Arc::new(KeySet::default()))
                }
                IssuerKind::Jwt if is.secret_env.is_some() || is.secret_file.is_some() => {
                    match keys::load_secret(
                        is.secret_env.as_deref(),
                        is.secret_file
                            .as_ref()
                            .map(|p| config.resolve(p))
                            .as_deref(),
                    ) {
                        Ok(secret) => {
                            if secrecy::ExposeSecret::expose_secret(&secret).len() < 32 {
                                err(
                                    k(if is.secret_env.is_some() {
                                        "secret_env"
                                    } else {
                                        "secret_file"
                                    }),
                                    "an HMAC secret must be at least 32 bytes (RFC 7518 §3.2)"
                                        .into(),
                                );
                            }
                            KeySource::Static(Arc::new(keys::hmac_keyset(&secret)))
                        }
                        Err(m) => {
                            err(
                                k(if is.secret_env.is_some() {
                                    "secret_env"
                                } else {
                                    "secret_file"
                                }),
                                m,
                            );
                            KeySource::Static(Arc::new(KeySet::default()))
                        }
                    }
                }
                IssuerKind::Jwt => {
                    if let Some(url) = &is.jwks_url {
                        match url.parse::<http::Uri>() {
                            Ok(uri) => KeySource::Jwks(Arc::new(JwksStore::new(
                                is.name.clone(),
                                i,
                                uri,
                                is.jwks_refresh.unwrap_or(Duration::from_secs(300)),
                            ))),
                            Err(_) => {
                                err(k("jwks_url"), format!("`{url}` is not an http(s) URL"));
                                KeySource::Static(Arc::new(KeySet::default()))
                            }
                        }
                    } else {
                        let mut set = KeySet::default();
                        for (j, p) in is.keys.iter().enumerate() {
                            match keys::load_key_file(&config.resolve(p)) {
                                Ok(mut ks) => set.keys.append(&mut ks),
                                Err(m) => err(format!("issuers[{i}].keys[{j}]"), m),
                            }
                        }
                        KeySource::Static(Arc::new(set))
                    }
                }
            };
            if is.kind == IssuerKind::Jwt {
                match &is.iss {
                    Some(iss) if !iss.is_empty() => {
                        if iss_index.insert(iss.clone(), i).is_some() {
                            err(
                                k("iss"),
                                format!("another issuer already matches iss `{iss}`"),
                            );
                        }
                    }
                    _ => err(k("iss"), "a JWT issuer needs `iss`".into()),
                }
            }
            let name_header = match HeaderValue::from_str(&is.name) {
                Ok(h) => h,
                Err(_) => {
                    err(k("name"), "not a valid header value".into());
                    HeaderValue::from_static("")
                }
            };
            let fetch_client = match &is.ca {
                None => None,
                Some(ca) => match forward::UpstreamClient::fetcher(Some(&config.resolve(ca))) {
                    Ok(c) => Some(c),
                    Err(m) => {
                        err(k("ca"), m);
                        None
                    }
                },
            };
            issuers.push(IssuerRt {
                name: is.name.clone(),
                name_header,
                audiences: is.audiences.clone(),
                algorithms,
                keys,
                leeway: is.leeway.unwrap_or(Duration::from_secs(30)).as_secs(),
                max_age: is.max_age.map(|d| d.as_secs()),
                scope_claim: is.scope_claim.clone(),
                namespace: is.namespace.clone().unwrap_or_else(|| is.name.clone()),
                context_claim: is.context_claim.clone(),
                context_keys: is.context_keys.clone(),
                introspection,
                fetch_client,
            });
        }
        // Upstreams.
        let mut upstream_index = HashMap::new();
        let mut upstreams = Vec::new();
        for (name, u) in &config.upstreams {
            match forward::UpstreamClient::new(name, u, &config, config.limits.max_connections) {
                Ok(c) => {
                    upstream_index.insert(name.clone(), upstreams.len());
                    upstreams.push(c);
                }
                Err(m) => err(format!("upstreams.{name}"), m),
            }
        }
        let fetch_client = match forward::UpstreamClient::fetcher(None) {
            Ok(c) => c,
            Err(m) => {
                err("(tls)".into(), m);
                return Err(errors);
            }
        };
        // Routes.
        let body_token = config.locators.iter().any(Locator::is_body);
        let mut router: matchit::Router<Vec<usize>> = matchit::Router::new();
        let mut by_pattern: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut routes = Vec::new();
        let mut kept_claims = Vec::new();
        // `Config::parse` validated every reference below; a failure here
        // means the two validators disagree, and the route would run with
        // less checking than configured. Refuse the configuration instead.
        for (i, r) in config.routes.iter().enumerate() {
            by_pattern.entry(r.path.as_str()).or_default().push(i);
            let k = |s: &str| format!("routes[{i}].{s}");
            let issuers_allowed = r.issuers.as_ref().map(|names| {
                let mut idx = Vec::with_capacity(names.len());
                for (j, n) in names.iter().enumerate() {
                    match config.issuers.iter().position(|is| &is.name == n) {
                        Some(p) => idx.push(p),
                        None => err(
                            format!("routes[{i}].issuers[{j}]"),
                            format!("no issuer named `{n}`"),
                        ),
                    }
                }
                idx
            });
            let context = match r.context.as_deref().map(Locator::parse) {
                None => None,
                Some(Ok(l)) if l.is_body() => Some(l),
                Some(Ok(_)) => {
                    err(
                        k("context"),
                        "the context object is read from a `body:/POINTER` locator".into(),
                    );
                    None
                }
                Some(Err(m)) => {
                    err(k("context"), m);
                    None
                }
            };
            let mut match_claims: Vec<(ClaimPath, Locator)> =
                Vec::with_capacity(r.match_claims.len());
            for (c, l) in &r.match_claims {
                match Locator::parse(l) {
                    Ok(loc) => match_claims.push((ClaimPath::parse(c), loc)),
                    Err(m) => err(format!("routes[{i}].match_claims.{c}"), m),
                }
            }
            for (c, _) in &match_claims {
                let root = c.root();
                if !kept_claims.contains(&root) {
                    kept_claims.push(root);
                }
            }
            let reads_body = context.is_some()
                || match_claims.iter().any(|(_, l)| l.is_body())
                || (r.auth != AuthMode::None && body_token);
            let rate_limit = match &r.rate_limit {
                None => None,
                Some(rl) => match config::parse_rate(&rl.rate) {
                    Ok(rate) => Some(RateLimiter::new(
                        rl.per == RateKey::Customer,
                        rate,
                        rl.burst,
                    )),
                    Err(m) => {
                        err(k("rate_limit.rate"), m);
                        None
                    }
                },
            };
            let methods = r.methods.as_ref().map(|ms| {
                let mut out = Vec::with_capacity(ms.len());
                for (j, m) in ms.iter().enumerate() {
                    match m.parse::<Method>() {
                        Ok(m) => out.push(m),
                        Err(_) => err(
                            format!("routes[{i}].methods[{j}]"),
                            format!("`{m}` is not an HTTP method"),
                        ),
                    }
                }
                out
            });
            let upstream = match upstream_index.get(&r.upstream) {
                Some(&u) => u,
                None => {
                    // A configured upstream whose client failed is already
                    // reported under `upstreams.NAME`.
                    if !config.upstreams.contains_key(&r.upstream) {
                        err(k("upstream"), format!("no [upstreams.{}]", r.upstream));
                    }
                    continue;
                }
            };
            routes.push(RouteRt {
                name: Arc::from(r.name.as_str()),
                methods,
                upstream,
                auth: r.auth,
                scopes: r.scopes.clone(),
                issuers: issuers_allowed,
                context,
                match_claims,
                reads_body,
                close_on_expiry: r.close_on_expiry,
                rate_limit,
            });
        }
        for (pattern, idx) in by_pattern {
            if let Err(e) = router.insert(pattern, idx) {
                err("routes".into(), format!("`{pattern}`: {e}"));
            }
        }
        let mut trusted_proxies = Vec::with_capacity(config.listen.trusted_proxies.len());
        for (i, c) in config.listen.trusted_proxies.iter().enumerate() {
            match Cidr::parse(c) {
                Some(cidr) => trusted_proxies.push(cidr),
                None => err(
                    format!("listen.trusted_proxies[{i}]"),
                    format!("`{c}` is not an IP address or CIDR"),
                ),
            }
        }
        let claim = ClaimPath::parse(&config.identity.customer_id_claim);
        let assertion = match &config.identity.assertion {
            None => None,
            Some(a) => match crate::keys::assertion::AssertionSigner::load(
                &config.resolve(&a.key),
                &a.alg,
                a.ttl.unwrap_or(Duration::from_secs(60)).as_secs().max(1),
            ) {
                Ok(s) => Some(s),
                Err(m) => {
                    err("identity.assertion.key".into(), m);
                    None
                }
            },
        };
        let (Some(headers), true) = (headers, errors.is_empty()) else {
            return Err(errors);
        };
        if upstreams.is_empty() {
            return Err(vec![ConfigError {
                key: "upstreams".into(),
                line: None,
                message: "no [upstreams.NAME]".into(),
            }]);
        }
        Ok(Runtime {
            router,
            routes,
            issuers,
            iss_index,
            introspection_issuer,
            upstreams,
            locators: config.locators.clone(),
            identity: IdentityRt {
                headers,
                claim,
                key,
                pii: config.identity.customer_info_pii,
                kept_claims,
            },
            trusted_proxies,
            token_cache: quick_cache::sync::Cache::new(TOKEN_CACHE_CAPACITY),
            negative_cache: quick_cache::sync::Cache::new(10_000),
            introspection_permits: tokio::sync::Semaphore::new(INTROSPECTION_CONCURRENCY),
            assertion,
            fetch_client,
            config,
        })
    }

    /// Finds the route for a normalized path and method.
    pub fn resolve(&self, path: &str, method: &Method) -> RouteMatch<'_> {
        let Ok(m) = self.router.at(path) else {
            return RouteMatch::NotFound;
        };
        match m.value.iter().find(|&&i| self.routes[i].allows(method)) {
            Some(&i) => RouteMatch::Found(i),
            None => RouteMatch::MethodNotAllowed(m.value),
        }
    }

    /// The `Allow` header value for a path whose routes refused a method.
    pub fn allow_header(&self, candidates: &[usize]) -> String {
        let mut methods: Vec<&str> = Vec::new();
        for &i in candidates {
            match &self.routes[i].methods {
                Some(ms) => methods.extend(ms.iter().map(Method::as_str)),
                None => return "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS".into(),
            }
        }
        methods.sort_unstable();
        methods.dedup();
        methods.join(", ")
    }

    /// The JWT issuer whose `iss` this is.
    pub fn issuer_by_iss(&self, iss: &str) -> Option<usize> {
        self.iss_index.get(iss).copied()
    }

    /// Whether every issuer has keys (for `/readyz`).
    pub fn keys_ready(&self) -> bool {
        self.issuers.iter().all(|is| is.keys.current().is_some())
    }

    /// The JWKS stores to keep fresh.
    pub fn jwks_stores(&self) -> impl Iterator<Item = &Arc<JwksStore>> {
        self.issuers.iter().filter_map(|is| match &is.keys {
            KeySource::Jwks(s) => Some(s),
            KeySource::Static(_) => None,
        })
    }

    /// The client that fetches an issuer's JWKS or introspects its tokens:
    /// its own (trusting its `ca`) or the shared one (webpki roots).
    pub fn fetcher(&self, issuer: usize) -> &UpstreamClient {
        self.issuers
            .get(issuer)
            .and_then(|is| is.fetch_client.as_ref())
            .unwrap_or(&self.fetch_client)
    }

    /// The JWK Set of the identity assertion key (empty without one).
    pub fn assertion_jwks(&self) -> String {
        self.assertion
            .as_ref()
            .map_or_else(|| "{\"keys\":[]}".to_owned(), |a| a.jwks.clone())
    }

    /// Carries the keys of JWKS issuers over from the previous runtime (same
    /// issuer name and URL), so a reload never makes an issuer unavailable.
    pub fn inherit_keys(&self, old: &Runtime) {
        for new in self.jwks_stores() {
            if let Some(prev) = old
                .jwks_stores()
                .find(|o| o.issuer == new.issuer && o.url == new.url)
            {
                if let (None, Some(keys)) = (new.current(), prev.current()) {
                    new.store(keys);
                }
            }
        }
    }

    /// The pseudonymized (or, without an id key, raw) customer id the
    /// gateway forwards for `subject` verified by an issuer of `namespace`.
    pub fn customer_id(&self, namespace: &str, subject: &str) -> String {
        match &self.identity.key {
            Some(k) => k.customer_id(namespace, subject),
            None => subject.to_owned(),
        }
    }
}

fn id_key_name(id: &config::Identity) -> String {
    if id.key_file.is_some() {
        "identity.key_file".into()
    } else {
        "identity.key_env".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config() -> Config {
        Config::parse(
            r#"
[listen]
addr = "127.0.0.1:0"
trusted_proxies = ["10.0.0.0/8"]

[identity]
pseudonymize = false

[upstreams.app]
url = "http://127.0.0.1:9"

[[routes]]
name = "r"
path = "/x"
methods = ["POST"]
upstream = "app"
auth = "none"
context = "body:/ctx"
match_claims = { sub = "body:/customer" }
rate_limit = { per = "ip", rate = "5/s" }
"#,
            Path::new("/nonexistent/gateway.toml"),
        )
        .expect("valid configuration")
    }

    fn build_errors(config: Config) -> Vec<String> {
        match Runtime::build(config) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.into_iter().map(|e| e.key).collect(),
        }
    }

    #[tokio::test]
    async fn a_valid_configuration_builds() {
        let rt = Runtime::build(config()).map_err(|e| format!("{e:?}"));
        let rt = rt.expect("builds");
        let route = &rt.routes[0];
        assert_eq!(route.methods.as_deref(), Some(&[Method::POST][..]));
        assert_eq!(route.match_claims.len(), 1);
        assert!(route.context.is_some() && route.rate_limit.is_some());
        assert_eq!(rt.trusted_proxies.len(), 1);
    }

    /// Whatever `Config::parse` let through but the runtime cannot use is a
    /// build error, never a silently dropped check.
    #[tokio::test]
    async fn build_fails_closed_where_the_validators_disagree() {
        type Break = fn(&mut Config);
        let cases: [(&str, Break); 7] = [
            ("routes[0].rate_limit.rate", |c| {
                if let Some(rl) = c.routes[0].rate_limit.as_mut() {
                    rl.rate = "fast".into();
                }
            }),
            ("routes[0].methods[0]", |c| {
                c.routes[0].methods = Some(vec!["P OST".into()]);
            }),
            ("routes[0].upstream", |c| {
                c.routes[0].upstream = "nope".into()
            }),
            ("routes[0].match_claims.sub", |c| {
                c.routes[0]
                    .match_claims
                    .insert("sub".into(), "bogus".into());
            }),
            ("routes[0].context", |c| {
                c.routes[0].context = Some("header:x-ctx".into());
            }),
            ("routes[0].issuers[0]", |c| {
                c.routes[0].issuers = Some(vec!["ghost".into()]);
            }),
            ("listen.trusted_proxies[0]", |c| {
                c.listen.trusted_proxies = vec!["nope".into()];
            }),
        ];
        for (key, break_it) in cases {
            let mut c = config();
            break_it(&mut c);
            assert_eq!(build_errors(c), vec![key.to_owned()], "{key}");
        }
    }
}
