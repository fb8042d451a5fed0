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
    pub kind: IssuerKind,
    pub iss: String,
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
}

/// RFC 7662 endpoint settings.
pub struct Introspection {
    pub url: http::Uri,
    pub client_id: String,
    pub client_secret: SecretSlice<u8>,
    pub cache_ttl: Duration,
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
            for a in &is.algorithms {
                if let Ok(alg) = a.parse::<Algorithm>() {
                    algorithms.push(alg);
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
                    match (
                        secret,
                        is.introspection_url.as_deref().map(str::parse::<http::Uri>),
                    ) {
                        (Ok(client_secret), Some(Ok(url))) => {
                            introspection = Some(Introspection {
                                url,
                                client_id: is.client_id.clone().unwrap_or_default(),
                                client_secret,
                                cache_ttl: is.cache_ttl.unwrap_or(Duration::from_secs(60)),
                            })
                        }
                        (Err(m), _) => err(k("client_secret_env"), m),
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
                                uri,
                                is.jwks_refresh.unwrap_or(Duration::from_secs(300)),
                            ))),
                            Err(_) => KeySource::Static(Arc::new(KeySet::default())),
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
            if let Some(iss) = &is.iss {
                if is.kind == IssuerKind::Jwt {
                    iss_index.insert(iss.clone(), i);
                }
            }
            let name_header =
                HeaderValue::from_str(&is.name).unwrap_or(HeaderValue::from_static("issuer"));
            issuers.push(IssuerRt {
                name: is.name.clone(),
                name_header,
                kind: is.kind,
                iss: is.iss.clone().unwrap_or_default(),
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
        let fetch_client = match forward::UpstreamClient::fetcher() {
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
        for (i, r) in config.routes.iter().enumerate() {
            by_pattern.entry(r.path.as_str()).or_default().push(i);
            let issuers_allowed = r.issuers.as_ref().map(|names| {
                names
                    .iter()
                    .filter_map(|n| config.issuers.iter().position(|is| &is.name == n))
                    .collect()
            });
            let context = r.context.as_deref().and_then(|c| Locator::parse(c).ok());
            let match_claims: Vec<(ClaimPath, Locator)> = r
                .match_claims
                .iter()
                .filter_map(|(c, l)| Some((ClaimPath::parse(c), Locator::parse(l).ok()?)))
                .collect();
            for (c, _) in &match_claims {
                let root = c.root();
                if !kept_claims.contains(&root) {
                    kept_claims.push(root);
                }
            }
            let reads_body = context.is_some()
                || match_claims.iter().any(|(_, l)| l.is_body())
                || (r.auth != AuthMode::None && body_token);
            let rate_limit = r.rate_limit.as_ref().and_then(|rl| {
                let rate = config::parse_rate(&rl.rate).ok()?;
                Some(RateLimiter::new(
                    rl.per == RateKey::Customer,
                    rate,
                    rl.burst,
                ))
            });
            routes.push(RouteRt {
                name: Arc::from(r.name.as_str()),
                methods: r
                    .methods
                    .as_ref()
                    .map(|ms| ms.iter().filter_map(|m| m.parse::<Method>().ok()).collect()),
                upstream: upstream_index.get(&r.upstream).copied().unwrap_or(0),
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
        let trusted_proxies = config
            .listen
            .trusted_proxies
            .iter()
            .filter_map(|c| Cidr::parse(c))
            .collect();
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

    /// The pseudonymized (or raw) customer id the gateway forwards for
    /// `subject` verified by an issuer of `namespace`.
    pub fn customer_id(&self, namespace: &str, subject: &str) -> Option<String> {
        match &self.identity.key {
            Some(k) => Some(k.customer_id(namespace, subject)),
            None => Some(subject.to_owned()),
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
