//! The command line (clap derive): `run`, `check`, `token`, `customer-id`,
//! `demo`. Exit codes: 0 success, 1 invalid configuration or runtime
//! failure, 2 usage error (clap's own).

use crate::config::{Config, ConfigErrors};
use crate::runtime::Runtime;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "authgate",
    version,
    about = "Reverse-proxy authentication gateway for customer-chat backends"
)]
pub struct Cli {
    /// Configuration file (for `authgate` without a command).
    #[arg(long, global = false, default_value = "gateway.toml")]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Run {
        #[arg(long, default_value = "gateway.toml")]
        config: PathBuf,
    },
    /// Validate the configuration and print a summary.
    Check {
        #[arg(long, default_value = "gateway.toml")]
        config: PathBuf,
    },
    /// Mint a signed test token and print it.
    Token {
        /// PEM private key, or for HS* a file holding the secret.
        #[arg(long)]
        key: PathBuf,
        /// Algorithm; default inferred from the key.
        #[arg(long)]
        alg: Option<String>,
        #[arg(long)]
        iss: String,
        #[arg(long)]
        sub: String,
        #[arg(long)]
        aud: Vec<String>,
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Lifetime such as 15m; negative (`--ttl=-5m`) mints an expired token.
        #[arg(long, default_value = "15m", allow_hyphen_values = true)]
        ttl: String,
        /// Extra claim NAME=JSON (repeatable).
        #[arg(long = "claim")]
        claims: Vec<String>,
        /// Key id for the JWT header.
        #[arg(long)]
        kid: Option<String>,
    },
    /// Print the opaque customer id the gateway forwards for SUBJECT.
    CustomerId {
        #[arg(long, default_value = "gateway.toml")]
        config: PathBuf,
        /// Issuer namespace; default: the only one the configuration uses.
        #[arg(long)]
        namespace: Option<String>,
        subject: String,
    },
    /// Start an echo chat backend and the gateway in front of it, with fresh keys.
    Demo {
        /// Serve the gateway over HTTPS with a generated certificate.
        #[arg(long)]
        tls: bool,
    },
}

/// Loads and fully builds a configuration (keys, secrets, env vars).
pub fn load_and_build(path: &std::path::Path) -> Result<Runtime, ConfigErrors> {
    let config = Config::load(path)?;
    Runtime::build(config).map_err(|mut errors| {
        crate::config::fill_lines(path, &mut errors);
        ConfigErrors {
            file: path.to_owned(),
            errors,
        }
    })
}

/// `authgate check`.
pub fn check(path: &std::path::Path) -> i32 {
    match load_and_build(path) {
        Err(e) => {
            eprint!("{e}");
            1
        }
        Ok(rt) => {
            let c = &rt.config;
            println!("{}: configuration is valid", path.display());
            println!("listeners:");
            println!(
                "  gateway  {} ({})",
                c.listen.addr,
                if c.listen.tls.is_some() {
                    "HTTPS, h2 + http/1.1"
                } else {
                    "HTTP/1.1 + h2c"
                }
            );
            match &c.admin {
                Some(a) => println!("  admin    {}", a.addr),
                None => println!("  admin    (none)"),
            }
            println!("upstreams:");
            for (name, u) in &c.upstreams {
                println!("  {name:<12} {}", u.url);
            }
            println!("issuers:");
            for is in &c.issuers {
                let keys = match (&is.jwks_url, is.kind) {
                    (_, crate::config::IssuerKind::Introspection) => "introspection".to_string(),
                    (Some(u), _) => format!("jwks {u}"),
                    (None, _) if is.secret_env.is_some() || is.secret_file.is_some() => {
                        "secret".into()
                    }
                    (None, _) => format!("{} key file(s)", is.keys.len()),
                };
                println!(
                    "  {:<12} iss={} algorithms=[{}] keys={} namespace={}",
                    is.name,
                    is.iss.as_deref().unwrap_or("-"),
                    is.algorithms.join(","),
                    keys,
                    is.namespace.as_deref().unwrap_or(&is.name)
                );
            }
            println!("routes:");
            for r in &c.routes {
                println!(
                    "  {:<12} {:<28} methods={} auth={:?} scopes=[{}] upstream={}",
                    r.name,
                    r.path,
                    r.methods.as_ref().map_or("any".into(), |m| m.join(",")),
                    r.auth,
                    r.scopes.join(","),
                    r.upstream
                );
            }
            0
        }
    }
}

/// `authgate customer-id`.
pub fn customer_id(path: &std::path::Path, namespace: Option<&str>, subject: &str) -> i32 {
    let rt = match load_and_build(path) {
        Ok(rt) => rt,
        Err(e) => {
            eprint!("{e}");
            return 1;
        }
    };
    let ns = match namespace {
        Some(ns) => ns.to_owned(),
        None => {
            let mut all: Vec<&str> = rt.issuers.iter().map(|i| i.namespace.as_str()).collect();
            all.sort_unstable();
            all.dedup();
            match all.as_slice() {
                [one] => (*one).to_owned(),
                [] => {
                    eprintln!("no issuers configured; pass --namespace");
                    return 2;
                }
                many => {
                    eprintln!("several namespaces ({}); pass --namespace", many.join(", "));
                    return 2;
                }
            }
        }
    };
    println!("{}", rt.customer_id(&ns, subject));
    0
}

/// `authgate token`.
#[allow(clippy::too_many_arguments)]
pub fn token(
    key: &std::path::Path,
    alg: Option<&str>,
    iss: &str,
    sub: &str,
    aud: &[String],
    scopes: &[String],
    ttl: &str,
    claims: &[String],
    kid: Option<&str>,
) -> i32 {
    let ttl_secs = match crate::config::duration::parse_signed(ttl) {
        Ok((neg, d)) => {
            let s = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if neg {
                -s
            } else {
                s
            }
        }
        Err(m) => {
            eprintln!("--ttl: {m}");
            return 2;
        }
    };
    let mut extra = Vec::new();
    for c in claims {
        match crate::token::parse_claim(c) {
            Ok(kv) => extra.push(kv),
            Err(m) => {
                eprintln!("--claim: {m}");
                return 2;
            }
        }
    }
    let (key, alg) = match crate::token::encoding_key(key, alg) {
        Ok(k) => k,
        Err(m) => {
            eprintln!("--key: {m}");
            return 1;
        }
    };
    let claims = crate::token::Claims {
        iss: iss.to_owned(),
        sub: sub.to_owned(),
        aud: aud.to_vec(),
        scopes: scopes.to_vec(),
        ttl_secs,
        extra,
        kid: kid.map(str::to_owned),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    match crate::token::mint(&key, alg, &claims, now) {
        Ok(t) => {
            println!("{t}");
            0
        }
        Err(m) => {
            eprintln!("{m}");
            1
        }
    }
}
