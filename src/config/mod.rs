//! `gateway.toml` → file structs (serde, `deny_unknown_fields`) → [`Config`].
//!
//! Loading reports every problem of a file in one pass: each section and each
//! `[[issuers]]` / `[[routes]]` element is deserialized on its own, and the
//! cross-references (a route's upstream, its issuers, locators, patterns) are
//! checked after. Each [`ConfigError`] names the dotted key and, where the
//! TOML source has it, the line. Secrets are never part of the file: they are
//! read from `*_env` / `*_file` when the runtime is built (see `runtime.rs`).

pub mod duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key, such as `routes[2].upstream`.
    pub key: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    /// Why the key is wrong. Never echoes a secret value.
    pub message: String,
}

/// Every problem found in one file.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "{}: {n} problem{}:",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            match e.line {
                Some(line) => writeln!(f, "  line {line}: {}: {}", e.key, e.message)?,
                None => writeln!(f, "  {}: {}", e.key, e.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// ---------------------------------------------------------------- file structs

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub addr: SocketAddr,
    #[serde(default)]
    pub tls: Option<Tls>,
    /// Client CA for mTLS; may also be written inside `tls`.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Extension: CIDRs of proxies whose `X-Forwarded-For` is believed when
    /// deciding the client IP (rate limits `per = "ip"`). Empty: none.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    #[serde(deserialize_with = "de_duration")]
    pub header_read_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub request_timeout: Duration,
    pub max_connections: usize,
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_grace: Duration,
    /// Extension: a client that accepts no response bytes for this long is
    /// disconnected (slow readers, stalled WebSocket clients).
    #[serde(deserialize_with = "de_duration")]
    pub send_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16_384,
            max_body_bytes: 65_536,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            shutdown_grace: Duration::from_secs(30),
            send_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Pretty,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub format: LogFormat,
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: LogFormat::Json,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub url: String,
    #[serde(default, deserialize_with = "duration::opt::deserialize")]
    pub connect_timeout: Option<Duration>,
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Credentials {
    pub token: Vec<String>,
    pub strip: bool,
}

impl Default for Credentials {
    fn default() -> Self {
        Credentials {
            token: vec!["header:authorization".into()],
            strip: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum PiiMode {
    #[default]
    Redact,
    Reject,
    Allow,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Identity {
    pub header_prefix: String,
    pub customer_id_claim: String,
    pub pseudonymize: bool,
    pub key_env: Option<String>,
    pub key_file: Option<PathBuf>,
    pub customer_info_pii: PiiMode,
    pub assertion: Option<Assertion>,
}

impl Default for Identity {
    fn default() -> Self {
        Identity {
            header_prefix: "x-authgate-".into(),
            customer_id_claim: "sub".into(),
            pseudonymize: true,
            key_env: None,
            key_file: None,
            customer_info_pii: PiiMode::Redact,
            assertion: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assertion {
    pub key: PathBuf,
    pub alg: String,
    #[serde(default, deserialize_with = "duration::opt::deserialize")]
    pub ttl: Option<Duration>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum IssuerKind {
    #[default]
    Jwt,
    Introspection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issuer {
    pub name: String,
    #[serde(default)]
    pub kind: IssuerKind,
    #[serde(default)]
    pub iss: Option<String>,
    #[serde(default)]
    pub audiences: Option<Vec<String>>,
    #[serde(default)]
    pub algorithms: Vec<String>,
    #[serde(default)]
    pub keys: Vec<PathBuf>,
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default, deserialize_with = "duration::opt::deserialize")]
    pub jwks_refresh: Option<Duration>,
    #[serde(default, deserialize_with = "duration::opt::deserialize")]
    pub leeway: Option<Duration>,
    #[serde(default, deserialize_with = "duration::opt::deserialize")]
    pub max_age: Option<Duration>,
    #[serde(default)]
    pub scope_claim: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub secret_env: Option<String>,
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    #[serde(default)]
    pub context_claim: Option<String>,
    #[serde(default)]
    pub context_keys: Option<Vec<String>>,
    #[serde(default)]
    pub introspection_url: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_secret_env: Option<String>,
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "duration::opt::deserialize")]
    pub cache_ttl: Option<Duration>,
    /// Extension: extra roots (PEM) for an https `jwks_url` or
    /// `introspection_url`, on top of the webpki roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cors {
    pub allow_origins: Vec<String>,
    #[serde(default)]
    pub allow_credentials: bool,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Extension: methods a preflight may ask for. Default: the common ones.
    #[serde(default)]
    pub allow_methods: Option<Vec<String>>,
    #[serde(default, deserialize_with = "duration::opt::deserialize")]
    pub max_age: Option<Duration>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    Required,
    Optional,
    None,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RateKey {
    Customer,
    Ip,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per: RateKey,
    pub rate: String,
    #[serde(default)]
    pub burst: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: String,
    pub path: String,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    pub upstream: String,
    #[serde(default)]
    pub auth: AuthMode,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub issuers: Option<Vec<String>>,
    #[serde(default)]
    pub context: Option<String>,
    #[serde(default)]
    pub match_claims: BTreeMap<String, String>,
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    #[serde(default)]
    pub close_on_expiry: bool,
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    duration::parse(&s).map_err(serde::de::Error::custom)
}

// ------------------------------------------------------------ the whole file

/// A syntactically and referentially valid configuration. Keys and secrets
/// are not loaded yet; `runtime::Runtime::build` does that.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from; relative paths resolve against its folder.
    pub path: PathBuf,
    pub listen: Listen,
    pub admin: Option<Admin>,
    pub limits: Limits,
    pub log: Log,
    pub upstreams: BTreeMap<String, Upstream>,
    pub credentials: Credentials,
    pub locators: Vec<Locator>,
    pub identity: Identity,
    pub issuers: Vec<Issuer>,
    pub cors: Option<Cors>,
    pub routes: Vec<Route>,
}

/// A place in a request that may carry a token or a context member.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Locator {
    /// Lower-cased header name.
    Header(String),
    Cookie(String),
    Query(String),
    /// RFC 6901 pointer into a JSON body (`""` is the whole body).
    Body(String),
}

impl Locator {
    /// Parses `header:NAME`, `cookie:NAME`, `query:NAME`, `body:/POINTER`.
    pub fn parse(s: &str) -> Result<Locator, String> {
        let (kind, name) = s
            .split_once(':')
            .ok_or_else(|| format!("`{s}` is not a locator such as \"header:authorization\""))?;
        let valid_name = !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic());
        match kind {
            "header" if valid_name && http::HeaderName::from_bytes(name.as_bytes()).is_ok() => {
                Ok(Locator::Header(name.to_ascii_lowercase()))
            }
            "cookie" if valid_name => Ok(Locator::Cookie(name.to_owned())),
            "query" if valid_name => Ok(Locator::Query(name.to_owned())),
            "body" if name.starts_with('/') => Ok(Locator::Body(if name == "/" {
                String::new()
            } else {
                name.to_owned()
            })),
            "header" | "cookie" | "query" => Err(format!("`{s}` has an invalid name")),
            "body" => Err(format!("`{s}`: a body pointer starts with `/`")),
            _ => Err(format!(
                "`{s}`: the kind must be header, cookie, query or body"
            )),
        }
    }

    pub fn is_body(&self) -> bool {
        matches!(self, Locator::Body(_))
    }
}

impl fmt::Display for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Locator::Header(n) => write!(f, "header:{n}"),
            Locator::Cookie(n) => write!(f, "cookie:{n}"),
            Locator::Query(n) => write!(f, "query:{n}"),
            Locator::Body(p) if p.is_empty() => write!(f, "body:/"),
            Locator::Body(p) => write!(f, "body:{p}"),
        }
    }
}

/// The JWS algorithms authgate accepts in an allow-list (`none` never).
pub const ALGORITHMS: &[&str] = &[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
];

impl Config {
    /// Reads and validates a file. Every problem is reported at once.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let fail = |errors| ConfigErrors {
            file: path.to_owned(),
            errors,
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            fail(vec![ConfigError {
                key: "(file)".into(),
                line: None,
                message: format!("cannot read: {e}"),
            }])
        })?;
        Config::parse(&text, path).map_err(fail)
    }

    /// Validates `text` as if it were read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, Vec<ConfigError>> {
        let spans = Spans::new(text);
        let table: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(e) => {
                let line = e.span().map(|s| spans.line_of_offset(s.start));
                return Err(vec![ConfigError {
                    key: "(syntax)".into(),
                    line,
                    message: e.message().to_owned(),
                }]);
            }
        };
        let mut errors = Vec::new();
        let mut cx = Cx {
            spans: &spans,
            errors: &mut errors,
        };
        const TOP: &[&str] = &[
            "listen",
            "admin",
            "limits",
            "log",
            "upstreams",
            "credentials",
            "identity",
            "issuers",
            "cors",
            "routes",
        ];
        for key in table.keys() {
            if !TOP.contains(&key.as_str()) {
                cx.error(key, format!("unknown key `{key}`"));
            }
        }
        let listen: Option<Listen> = match table.get("listen") {
            Some(v) => cx.section("listen", v),
            None => {
                cx.error(
                    "listen",
                    "the [listen] table with `addr` is required".into(),
                );
                None
            }
        };
        let admin: Option<Admin> = table.get("admin").and_then(|v| cx.section("admin", v));
        let limits: Limits = table
            .get("limits")
            .and_then(|v| cx.section("limits", v))
            .unwrap_or_default();
        let log: Log = table
            .get("log")
            .and_then(|v| cx.section("log", v))
            .unwrap_or_default();
        let mut upstreams = BTreeMap::new();
        match table.get("upstreams") {
            Some(toml::Value::Table(t)) => {
                for (name, v) in t {
                    if let Some(u) = cx.section::<Upstream>(&format!("upstreams.{name}"), v) {
                        upstreams.insert(name.clone(), u);
                    }
                }
            }
            Some(_) => cx.error("upstreams", "must be a table of [upstreams.NAME]".into()),
            None => {}
        }
        let credentials: Credentials = table
            .get("credentials")
            .and_then(|v| cx.section("credentials", v))
            .unwrap_or_default();
        let identity: Identity = table
            .get("identity")
            .and_then(|v| cx.section("identity", v))
            .unwrap_or_default();
        let issuer_slots: Vec<Option<Issuer>> = cx.array("issuers", table.get("issuers"));
        let cors: Option<Cors> = table.get("cors").and_then(|v| cx.section("cors", v));
        let route_slots: Vec<Option<Route>> = cx.array("routes", table.get("routes"));
        let issuers: Vec<&Issuer> = issuer_slots.iter().flatten().collect();

        // ---- cross-checks
        if let Some(listen) = &listen {
            if listen.client_ca.is_some()
                && listen.tls.as_ref().is_some_and(|t| t.client_ca.is_some())
            {
                cx.error(
                    "listen.client_ca",
                    "set either listen.client_ca or listen.tls.client_ca, not both".into(),
                );
            }
            if listen.client_ca.is_some() && listen.tls.is_none() {
                cx.error(
                    "listen.client_ca",
                    "client certificates need [listen.tls]".into(),
                );
            }
            for (i, cidr) in listen.trusted_proxies.iter().enumerate() {
                if crate::pipeline::clientip::Cidr::parse(cidr).is_none() {
                    cx.error(
                        &format!("listen.trusted_proxies[{i}]"),
                        format!("`{cidr}` is not an IP address or CIDR"),
                    );
                }
            }
        }
        if limits.max_header_bytes < 1024 {
            cx.error("limits.max_header_bytes", "must be at least 1024".into());
        }
        if limits.max_connections == 0 {
            cx.error("limits.max_connections", "must be at least 1".into());
        }
        if limits.request_timeout.is_zero() {
            cx.error("limits.request_timeout", "must be positive".into());
        }
        if limits.send_timeout.is_zero() {
            cx.error("limits.send_timeout", "must be positive".into());
        }
        if limits.header_read_timeout.is_zero() {
            cx.error("limits.header_read_timeout", "must be positive".into());
        }
        if tracing_subscriber::EnvFilter::try_new(&log.level).is_err() {
            cx.error(
                "log.level",
                format!("`{}` is not a log level or filter", log.level),
            );
        }
        for (name, u) in &upstreams {
            let key = format!("upstreams.{name}.url");
            match u.url.parse::<http::Uri>() {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("http") | Some("https"))
                        && uri.host().is_some()
                        && uri.query().is_none() => {}
                _ => cx.error(
                    &key,
                    format!(
                        "`{}` is not an http:// or https:// URL without a query",
                        u.url
                    ),
                ),
            }
        }
        let mut locators = Vec::new();
        for (i, l) in credentials.token.iter().enumerate() {
            match Locator::parse(l) {
                Ok(loc) => locators.push(loc),
                Err(m) => cx.error(&format!("credentials.token[{i}]"), m),
            }
        }
        if identity.header_prefix.is_empty()
            || http::HeaderName::from_bytes(identity.header_prefix.as_bytes()).is_err()
            || identity.header_prefix != identity.header_prefix.to_ascii_lowercase()
        {
            cx.error(
                "identity.header_prefix",
                "must be a non-empty lower-case header name prefix".into(),
            );
        }
        if identity.pseudonymize && identity.key_env.is_none() && identity.key_file.is_none() {
            cx.error(
                "identity.key_env",
                "pseudonymize = true needs key_env or key_file".into(),
            );
        }
        if identity.key_env.is_some() && identity.key_file.is_some() {
            cx.error(
                "identity.key_file",
                "set key_env or key_file, not both".into(),
            );
        }
        if identity.customer_id_claim.is_empty() {
            cx.error("identity.customer_id_claim", "must not be empty".into());
        }
        if let Some(a) = &identity.assertion {
            if !matches!(a.alg.as_str(), "ES256" | "EdDSA") {
                cx.error(
                    "identity.assertion.alg",
                    format!("`{}`: the assertion is signed with ES256 or EdDSA", a.alg),
                );
            }
        }
        let mut issuer_names = HashSet::new();
        let mut iss_values = HashSet::new();
        let mut introspection_count = 0;
        for (i, is) in issuer_slots.iter().enumerate() {
            let Some(is) = is else { continue };
            let key = |k: &str| format!("issuers[{i}].{k}");
            if !issuer_names.insert(is.name.as_str()) {
                cx.error(
                    &key("name"),
                    format!("issuer name `{}` is used twice", is.name),
                );
            }
            if is.name.is_empty()
                || !is
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                cx.error(&key("name"), "use letters, digits, `-`, `_` or `.`".into());
            }
            match is.kind {
                IssuerKind::Jwt => check_jwt_issuer(is, &key, &mut cx, &mut iss_values),
                IssuerKind::Introspection => {
                    introspection_count += 1;
                    check_introspection_issuer(is, &key, &mut cx);
                }
            }
        }
        if introspection_count > 1 {
            cx.error(
                "issuers",
                "at most one issuer may have kind = \"introspection\"".into(),
            );
        }
        if let Some(c) = &cors {
            for (i, o) in c.allow_origins.iter().enumerate() {
                if o == "*" && c.allow_credentials {
                    cx.error(
                        &format!("cors.allow_origins[{i}]"),
                        "`*` cannot be combined with allow_credentials".into(),
                    );
                } else if o != "*"
                    && (o
                        .parse::<http::Uri>()
                        .map(|u| u.scheme().is_none() || u.host().is_none() || u.path() != "/")
                        .unwrap_or(true)
                        || o.ends_with('/'))
                {
                    cx.error(
                        &format!("cors.allow_origins[{i}]"),
                        format!("`{o}` is not an origin such as \"https://www.example.com\""),
                    );
                }
            }
            for (i, h) in c.allow_headers.iter().enumerate() {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    cx.error(
                        &format!("cors.allow_headers[{i}]"),
                        format!("`{h}` is not a header name"),
                    );
                }
            }
            for (i, m) in c.allow_methods.iter().flatten().enumerate() {
                if !METHODS.contains(&m.as_str()) {
                    cx.error(
                        &format!("cors.allow_methods[{i}]"),
                        format!("`{m}` is not an HTTP method"),
                    );
                }
            }
        }
        let mut route_names = HashSet::new();
        type Entries<'a> = Vec<(usize, Option<&'a Vec<String>>)>;
        let mut patterns: BTreeMap<&str, Entries<'_>> = BTreeMap::new();
        let mut router = matchit::Router::new();
        for (i, r) in route_slots.iter().enumerate() {
            let Some(r) = r else { continue };
            let key = |k: &str| format!("routes[{i}].{k}");
            if !route_names.insert(r.name.as_str()) {
                cx.error(
                    &key("name"),
                    format!("route name `{}` is used twice", r.name),
                );
            }
            if !upstreams.contains_key(&r.upstream) {
                cx.error(&key("upstream"), format!("no [upstreams.{}]", r.upstream));
            }
            if !r.path.starts_with('/') {
                cx.error(&key("path"), "must start with `/`".into());
            } else if crate::pipeline::path::normalize(&r.path).ok().as_deref()
                != Some(r.path.as_str())
                && !r.path.contains('{')
            {
                cx.error(&key("path"), "must be a normalized path (no `.`/`..` segments, `//` or percent-escapes of unreserved characters)".into());
            }
            let entry = patterns.entry(r.path.as_str()).or_default();
            if entry.is_empty() {
                if let Err(e) = router.insert(r.path.as_str(), ()) {
                    cx.error(&key("path"), format!("`{}`: {e}", r.path));
                }
            }
            entry.push((i, r.methods.as_ref()));
            if let Some(ms) = &r.methods {
                if ms.is_empty() {
                    cx.error(
                        &key("methods"),
                        "must name at least one method (omit it for any)".into(),
                    );
                }
                for (j, m) in ms.iter().enumerate() {
                    if !METHODS.contains(&m.as_str()) {
                        cx.error(
                            &format!("routes[{i}].methods[{j}]"),
                            format!("`{m}` is not an upper-case HTTP method"),
                        );
                    }
                }
            }
            if let Some(list) = &r.issuers {
                for (j, name) in list.iter().enumerate() {
                    if !issuers.iter().any(|is| &is.name == name) {
                        cx.error(
                            &format!("routes[{i}].issuers[{j}]"),
                            format!("no issuer named `{name}`"),
                        );
                    }
                }
            }
            if r.auth == AuthMode::None && !r.scopes.is_empty() {
                cx.error(
                    &key("scopes"),
                    "a route with auth = \"none\" cannot require scopes".into(),
                );
            }
            if r.auth != AuthMode::None && issuers.is_empty() {
                cx.error(&key("auth"), "needs at least one [[issuers]]".into());
            }
            if let Some(c) = &r.context {
                match Locator::parse(c) {
                    Ok(Locator::Body(_)) => {}
                    Ok(_) => cx.error(
                        &key("context"),
                        "the context object is read from a `body:/POINTER` locator".into(),
                    ),
                    Err(m) => cx.error(&key("context"), m),
                }
            }
            for (claim, loc) in &r.match_claims {
                if let Err(m) = Locator::parse(loc) {
                    cx.error(&format!("routes[{i}].match_claims.{claim}"), m);
                }
            }
            if let Some(rl) = &r.rate_limit {
                if let Err(m) = parse_rate(&rl.rate) {
                    cx.error(&format!("routes[{i}].rate_limit.rate"), m);
                }
                if rl.burst == Some(0) {
                    cx.error(
                        &format!("routes[{i}].rate_limit.burst"),
                        "must be at least 1".into(),
                    );
                }
                if rl.per == RateKey::Customer && r.auth == AuthMode::None {
                    cx.error(
                        &format!("routes[{i}].rate_limit.per"),
                        "per = \"customer\" needs a route with auth".into(),
                    );
                }
            }
        }
        // Two routes on one pattern must not both accept a method.
        for (pattern, entries) in &patterns {
            for (a, (i, ma)) in entries.iter().enumerate() {
                for (j, mb) in entries.iter().skip(a + 1) {
                    let overlap = match (ma, mb) {
                        (Some(x), Some(y)) => x.iter().any(|m| y.contains(m)),
                        _ => true,
                    };
                    if overlap {
                        cx.error(
                            &format!("routes[{j}].path"),
                            format!("`{pattern}` with the same method is already routes[{i}]"),
                        );
                    }
                }
            }
        }
        if route_slots.is_empty() {
            cx.error(
                "routes",
                "no [[routes]]: the gateway would deny everything".into(),
            );
        }
        let issuers: Vec<Issuer> = issuer_slots.into_iter().flatten().collect();
        let routes: Vec<Route> = route_slots.into_iter().flatten().collect();
        let Some(listen) = listen else {
            return Err(errors);
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Config {
            path: path.to_owned(),
            listen,
            admin,
            limits,
            log,
            upstreams,
            credentials,
            locators,
            identity,
            issuers,
            cors,
            routes,
        })
    }

    /// Resolves a path written in the file against the file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }
}

fn check_jwt_issuer(
    is: &Issuer,
    key: &dyn Fn(&str) -> String,
    cx: &mut Cx<'_>,
    iss_values: &mut HashSet<String>,
) {
    match &is.iss {
        Some(iss) if !iss.is_empty() => {
            if !iss_values.insert(iss.clone()) {
                cx.error(
                    &key("iss"),
                    format!("another issuer already matches iss `{iss}`"),
                );
            }
        }
        _ => cx.error(&key("iss"), "a JWT issuer needs `iss`".into()),
    }
    if is.algorithms.is_empty() {
        cx.error(
            &key("algorithms"),
            "list the accepted algorithms, e.g. [\"RS256\"]".into(),
        );
    }
    let mut hmac = false;
    let mut public = false;
    for (j, alg) in is.algorithms.iter().enumerate() {
        if !ALGORITHMS.contains(&alg.as_str()) {
            cx.error(
                &format!("{}[{j}]", key("algorithms")),
                format!("`{alg}` is not one of {}", ALGORITHMS.join(", ")),
            );
        } else if alg.starts_with("HS") {
            hmac = true;
        } else {
            public = true;
        }
    }
    let has_secret = is.secret_env.is_some() || is.secret_file.is_some();
    let has_keys = !is.keys.is_empty() || is.jwks_url.is_some();
    if is.secret_env.is_some() && is.secret_file.is_some() {
        cx.error(
            &key("secret_file"),
            "set secret_env or secret_file, not both".into(),
        );
    }
    if hmac && public {
        cx.error(
            &key("algorithms"),
            "mixes HMAC (HS*) and public-key algorithms; use two issuers".into(),
        );
    }
    if hmac && !has_secret {
        cx.error(
            &key("secret_env"),
            "HS* algorithms need secret_env or secret_file".into(),
        );
    }
    if hmac && has_keys {
        cx.error(
            &key("keys"),
            "an HMAC issuer verifies with its secret, never with public keys".into(),
        );
    }
    if public && !has_keys {
        cx.error(
            &key("keys"),
            "public-key algorithms need `keys` or `jwks_url`".into(),
        );
    }
    if public && has_secret {
        cx.error(
            &key("secret_env"),
            "a secret is only for HS* algorithms".into(),
        );
    }
    if let Some(url) = &is.jwks_url {
        if !url.parse::<http::Uri>().is_ok_and(|u| {
            matches!(u.scheme_str(), Some("http") | Some("https")) && u.host().is_some()
        }) {
            cx.error(&key("jwks_url"), format!("`{url}` is not an http(s) URL"));
        }
    }
    if is.jwks_refresh.is_some() && is.jwks_url.is_none() {
        cx.error(&key("jwks_refresh"), "only meaningful with jwks_url".into());
    }
    if is.jwks_refresh.is_some_and(|d| d < Duration::from_secs(1)) {
        cx.error(&key("jwks_refresh"), "must be at least 1s".into());
    }
    for k in [
        "introspection_url",
        "client_id",
        "client_secret_env",
        "client_secret_file",
        "cache_ttl",
    ] {
        let set = match k {
            "introspection_url" => is.introspection_url.is_some(),
            "client_id" => is.client_id.is_some(),
            "client_secret_env" => is.client_secret_env.is_some(),
            "client_secret_file" => is.client_secret_file.is_some(),
            _ => is.cache_ttl.is_some(),
        };
        if set {
            cx.error(&key(k), "only for kind = \"introspection\"".into());
        }
    }
    if is.ca.is_some() && is.jwks_url.is_none() {
        cx.error(
            &key("ca"),
            "only meaningful with jwks_url (or kind = \"introspection\")".into(),
        );
    }
    if is.context_keys.is_some() && is.context_claim.is_none() {
        cx.error(
            &key("context_keys"),
            "only meaningful with context_claim".into(),
        );
    }
}

fn check_introspection_issuer(is: &Issuer, key: &dyn Fn(&str) -> String, cx: &mut Cx<'_>) {
    match &is.introspection_url {
        Some(url)
            if url.parse::<http::Uri>().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http") | Some("https")) && u.host().is_some()
            }) => {}
        Some(url) => cx.error(
            &key("introspection_url"),
            format!("`{url}` is not an http(s) URL"),
        ),
        None => cx.error(
            &key("introspection_url"),
            "kind = \"introspection\" needs introspection_url".into(),
        ),
    }
    if is.client_id.is_none() {
        cx.error(&key("client_id"), "introspection needs client_id".into());
    }
    if is.client_secret_env.is_none() && is.client_secret_file.is_none() {
        cx.error(
            &key("client_secret_env"),
            "introspection needs client_secret_env or client_secret_file".into(),
        );
    }
    for (k, set) in [
        ("algorithms", !is.algorithms.is_empty()),
        ("keys", !is.keys.is_empty()),
        ("jwks_url", is.jwks_url.is_some()),
        ("secret_env", is.secret_env.is_some()),
        ("secret_file", is.secret_file.is_some()),
        ("context_claim", is.context_claim.is_some()),
    ] {
        if set {
            cx.error(&key(k), "not used by kind = \"introspection\"".into());
        }
    }
}

/// Parses `"N/s"`, `"N/m"`, `"N/h"` into tokens per second.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let bad = || format!("`{s}` is not a rate such as \"20/s\", \"100/m\" or \"1000/h\"");
    let (n, unit) = s.split_once('/').ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    let per = match unit.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    if n == 0 {
        return Err(bad());
    }
    Ok(f64::from(n) / per)
}

/// Collects errors and finds lines for dotted keys.
struct Cx<'a> {
    spans: &'a Spans,
    errors: &'a mut Vec<ConfigError>,
}

impl Cx<'_> {
    fn error(&mut self, key: &str, message: String) {
        let line = self.spans.line_of_key(key);
        self.errors.push(ConfigError {
            key: key.to_owned(),
            line,
            message,
        });
    }

    fn section<T: DeserializeOwned>(&mut self, key: &str, value: &toml::Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.inner().to_string();
                // The TOML deserializer appends "\nin `key`"; the key is ours.
                let inner = inner.lines().next().unwrap_or("").trim().to_owned();
                let mut path = e.path().to_string();
                if path == "." {
                    path.clear();
                }
                // `unknown field `x`, expected …`: point at the field itself.
                if let Some(field) = inner
                    .strip_prefix("unknown field `")
                    .and_then(|r| r.split('`').next())
                {
                    if path.rsplit('.').next() != Some(field) {
                        if !path.is_empty() {
                            path.push('.');
                        }
                        path.push_str(field);
                    }
                }
                let full = if path.is_empty() {
                    key.to_owned()
                } else if path.starts_with('[') {
                    format!("{key}{path}")
                } else {
                    format!("{key}.{path}")
                };
                self.error(&full, inner);
                None
            }
        }
    }

    /// Each element, or `None` where it failed (indexes stay those of the file).
    fn array<T: DeserializeOwned>(
        &mut self,
        key: &str,
        value: Option<&toml::Value>,
    ) -> Vec<Option<T>> {
        match value {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| self.section(&format!("{key}[{i}]"), v))
                .collect(),
            Some(_) => {
                self.error(key, format!("must be an array of tables: [[{key}]]"));
                Vec::new()
            }
        }
    }
}

/// Maps dotted keys (`routes[2].upstream`) back to source lines.
struct Spans {
    text: String,
    doc: Option<toml_edit::ImDocument<String>>,
}

impl Spans {
    fn new(text: &str) -> Spans {
        Spans {
            text: text.to_owned(),
            doc: toml_edit::ImDocument::parse(text.to_owned()).ok(),
        }
    }

    fn line_of_offset(&self, offset: usize) -> usize {
        self.text
            .get(..offset)
            .map_or(1, |t| t.bytes().filter(|&b| b == b'\n').count() + 1)
    }

    fn line_of_key(&self, dotted: &str) -> Option<usize> {
        use toml_edit::TableLike;
        enum Node<'d> {
            Item(&'d toml_edit::Item),
            Table(&'d toml_edit::Table),
            Value(&'d toml_edit::Value),
        }
        let doc = self.doc.as_ref()?;
        let mut node = Node::Table(doc.as_table());
        let mut best: Option<std::ops::Range<usize>> = None;
        for segment in split_key(dotted) {
            node = match (segment, node) {
                (Seg::Key(k), node) => {
                    let table: Option<&dyn TableLike> = match node {
                        Node::Item(i) => i.as_table_like(),
                        Node::Table(t) => Some(t),
                        Node::Value(v) => v.as_inline_table().map(|t| t as &dyn TableLike),
                    };
                    let Some((key, value)) = table.and_then(|t| t.get_key_value(k)) else {
                        break;
                    };
                    best = key.span().or(best);
                    Node::Item(value)
                }
                (Seg::Index(i), Node::Item(toml_edit::Item::ArrayOfTables(a))) => {
                    let Some(t) = a.get(i) else { break };
                    best = t.span().or(best);
                    Node::Table(t)
                }
                (Seg::Index(i), Node::Item(toml_edit::Item::Value(toml_edit::Value::Array(a))))
                | (Seg::Index(i), Node::Value(toml_edit::Value::Array(a))) => {
                    let Some(v) = a.get(i) else { break };
                    best = v.span().or(best);
                    Node::Value(v)
                }
                (Seg::Index(_), _) => break,
            };
        }
        best.map(|s| self.line_of_offset(s.start))
    }
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn split_key(dotted: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in dotted.split('.') {
        let mut rest = part;
        if let Some(b) = rest.find('[') {
            if b > 0 {
                out.push(Seg::Key(&rest[..b]));
            }
            rest = &rest[b..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let Some(end) = stripped.find(']') else { break };
                if let Ok(i) = stripped[..end].parse() {
                    out.push(Seg::Index(i));
                }
                rest = &stripped[end + 1..];
            }
        } else if !rest.is_empty() {
            out.push(Seg::Key(rest));
        }
    }
    out
}

/// Fills in lines for errors found after parsing (keys, secrets).
pub fn fill_lines(path: &Path, errors: &mut [ConfigError]) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let spans = Spans::new(&text);
    for e in errors.iter_mut().filter(|e| e.line.is_none()) {
        e.line = spans.line_of_key(&e.key);
    }
}
