//! Black-box tests of the `authgate` binary: `check`, `token`,
//! `customer-id`, and `run` as an operator sees it — signals (SIGHUP
//! reload, SIGTERM drain), an upstream restarting under load, two instances
//! behaving as one, and logs that never carry a credential.
//!
//! Every gateway listens on 127.0.0.1:0; its addresses come from the
//! `authgate serving` log line. Waiting is polling with a deadline, never a
//! sleep standing in for an event.

#[path = "it/support/mod.rs"]
mod support;

use base64::Engine;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::Upstream;

const BIN: &str = env!("CARGO_BIN_EXE_authgate");
const ISS: &str = "https://web.issuer.test";
const ISS_HS: &str = "omni.issuer.test";
const AUD: &str = "chat-gateway";
const ID_KEY: &str = "test-only-id-key-0123456789abcdef-XYZZY";
const HS_SECRET: &str = "hs-secret-0123456789abcdef0123456789abcdef-QUUX";
const RAW_SUBJECT: &str = "alice-raw-subject@example.com";
/// How long anything in these tests may take before it counts as hung.
const DEADLINE: Duration = Duration::from_secs(30);

// ------------------------------------------------------------ processes

/// Output of a finished command.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary to completion (bounded by [`DEADLINE`]).
fn authgate(args: &[&str], env: &[(&str, &str)]) -> Ran {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env_remove("AUTHGATE_ID_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn authgate");
    let out = drain(child.stdout.take().expect("stdout"));
    let err = drain(child.stderr.take().expect("stderr"));
    let status = wait_until(&mut child, DEADLINE).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("`authgate {}` did not finish", args.join(" "))
    });
    Ran {
        code: status.code(),
        stdout: out.join().expect("stdout thread"),
        stderr: err.join().expect("stderr thread"),
    }
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// Polls `child` until it exits or `limit` passes.
fn wait_until(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {sig} {pid}");
}

/// A running `authgate run`, killed on drop if still alive.
struct Gateway {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Gateway {
    /// Starts `authgate run --config path` and waits until it serves and is ready.
    async fn start(config: &Path, env: &[(&str, &str)]) -> Gateway {
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .env("AUTHGATE_WORKER_THREADS", "2")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn authgate run");
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let stderr: Arc<Mutex<Vec<String>>> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let out = child.stdout.take().expect("stdout");
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if line.contains("authgate serving") {
                    let _ = tx.send(line.clone());
                }
                l.lock().expect("lock").push(line);
            }
        });
        let err = child.stderr.take().expect("stderr");
        let e = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                e.lock().expect("lock").push(line);
            }
        });
        let serving = match rx.recv_timeout(DEADLINE) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "no `authgate serving` line; stdout: {:?} stderr: {:?}",
                    lines.lock().expect("lock"),
                    stderr.lock().expect("lock")
                );
            }
        };
        let v: Value = serde_json::from_str(&serving).expect("JSON log line");
        let listen: SocketAddr = v["listen"]
            .as_str()
            .expect("listen")
            .parse()
            .expect("listen addr");
        let admin = v["admin"].as_str().expect("admin");
        let admin: SocketAddr = admin
            .trim_start_matches("Some(")
            .trim_end_matches(')')
            .parse()
            .expect("admin addr");
        let gw = Gateway {
            child,
            lines,
            stderr,
            listen,
            admin,
        };
        gw.wait_ready().await;
        gw
    }

    async fn wait_ready(&self) {
        let url = format!("http://{}/readyz", self.admin);
        poll("readyz 200", || {
            let url = url.clone();
            async move { status_of(&url).await == Some(200) }
        })
        .await;
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    async fn metrics(&self) -> String {
        support::get(&format!("http://{}/metrics", self.admin), &[])
            .await
            .raw
    }

    /// SIGTERM, then waits (bounded) for the exit.
    fn terminate(&mut self, limit: Duration) -> ExitStatus {
        self.stop_with("-TERM", limit)
    }

    /// Sends `sig`, then waits (bounded) for the exit.
    fn stop_with(&mut self, sig: &str, limit: Duration) -> ExitStatus {
        signal(self.pid(), sig);
        wait_until(&mut self.child, limit)
            .unwrap_or_else(|| panic!("the gateway exits after {sig}"))
    }

    /// Everything written to stdout and stderr so far.
    fn output(&self) -> String {
        let mut s = self.lines.lock().expect("lock").join("\n");
        s.push('\n');
        s.push_str(&self.stderr.lock().expect("lock").join("\n"));
        s
    }

    fn json_lines(&self) -> Vec<Value> {
        self.lines
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `check` every 20 ms until it holds; panics after [`DEADLINE`].
async fn poll<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + DEADLINE;
    while !check().await {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn status_of(url: &str) -> Option<u16> {
    support::client()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

// ------------------------------------------------------------ keys and configs

/// Throwaway keys and a configuration directory.
struct Setup {
    dir: tempfile::TempDir,
    ec_private: PathBuf,
    ec_pem: String,
    other_ec_pem: String,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec");
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec");
        let ec_private = dir.path().join("ec.pem");
        std::fs::write(&ec_private, ec.serialize_pem()).expect("write");
        std::fs::write(dir.path().join("ec.pub.pem"), ec.public_key_pem()).expect("write");
        std::fs::write(dir.path().join("hs.secret"), format!("{HS_SECRET}\n")).expect("write");
        Setup {
            ec_pem: ec.serialize_pem(),
            other_ec_pem: other.serialize_pem(),
            dir,
            ec_private,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The test configuration: JSON logs, `AUTHGATE_ID_KEY`, an ES256 issuer
    /// with a relative key path, an HS256 issuer with a secret file, and
    /// routes `chat` (scope chat), `public` (auth none), `down` (an upstream
    /// nobody listens on), plus `extra`.
    fn config(&self, upstream: SocketAddr, extra: &str) -> String {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let dead_addr = dead.local_addr().expect("addr");
        drop(dead);
        format!(
            r#"[listen]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"

[limits]
request_timeout = "10s"
shutdown_grace = "20s"

[log]
format = "json"
level = "info"

[upstreams.chat]
url = "http://{upstream}"
connect_timeout = "1s"

[upstreams.down]
url = "http://{dead_addr}"
connect_timeout = "1s"

[credentials]
token = ["header:authorization", "cookie:AuthCookie", "query:access_token"]
strip = true

[identity]
pseudonymize = true
key_env = "AUTHGATE_ID_KEY"

[[issuers]]
name = "web"
iss = "{ISS}"
audiences = ["{AUD}"]
algorithms = ["ES256"]
keys = ["ec.pub.pem"]
namespace = "customers"

[[issuers]]
name = "omni"
iss = "{ISS_HS}"
algorithms = ["HS256"]
secret_file = "hs.secret"
namespace = "customers"

[[routes]]
name = "chat"
path = "/api/chat/{{*rest}}"
upstream = "chat"
auth = "required"
scopes = ["chat"]

[[routes]]
name = "public"
path = "/api/public/{{*rest}}"
upstream = "chat"
auth = "none"

[[routes]]
name = "down"
path = "/api/down/{{*rest}}"
upstream = "down"
auth = "required"
{extra}"#
        )
    }

    /// Writes `text` as `gateway.toml` (atomically: a reload never sees half a file).
    fn write(&self, text: &str) -> PathBuf {
        let tmp = self.path("gateway.toml.tmp");
        std::fs::write(&tmp, text).expect("write config");
        let path = self.path("gateway.toml");
        std::fs::rename(&tmp, &path).expect("rename config");
        path
    }

    /// An ES256 token for the `web` issuer; `ttl` may be negative.
    fn token(&self, sub: &str, scope: &str, ttl: i64) -> String {
        let now = support::now();
        let c = json!({"iss": ISS, "sub": sub, "aud": AUD, "scope": scope, "iat": now, "exp": now + ttl});
        let key = EncodingKey::from_ec_pem(self.ec_pem.as_bytes()).expect("key");
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &c, &key).expect("sign")
    }

    /// The same claims signed by a key the gateway does not know.
    fn forged(&self, sub: &str) -> String {
        let now = support::now();
        let c = json!({"iss": ISS, "sub": sub, "aud": AUD, "scope": "chat", "iat": now, "exp": now + 600});
        let key = EncodingKey::from_ec_pem(self.other_ec_pem.as_bytes()).expect("key");
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &c, &key).expect("sign")
    }

    fn hs_token(&self, sub: &str) -> String {
        let now = support::now();
        let c = json!({"iss": ISS_HS, "sub": sub, "scope": "chat", "iat": now, "exp": now + 600});
        let key = EncodingKey::from_secret(HS_SECRET.as_bytes());
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &c, &key).expect("sign")
    }
}

const ENV: &[(&str, &str)] = &[("AUTHGATE_ID_KEY", ID_KEY)];

/// `authgate check --config path`, which must refuse the file (exit 1).
fn check_refuses(path: &Path, env: &[(&str, &str)]) -> Ran {
    let r = authgate(&["check", "--config", path.to_str().expect("utf8")], env);
    assert_eq!(
        r.code,
        Some(1),
        "stdout: {}\nstderr: {}",
        r.stdout,
        r.stderr
    );
    r
}

fn payload(token: &str) -> Value {
    let part = token.trim().split('.').nth(1).expect("three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON payload")
}

// ------------------------------------------------------------ check

/// Per-core workers share their port through SO_REUSEPORT; a second
/// instance on a port already served must still fail, not share it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_a_served_port_fails_instead_of_sharing_it() {
    let s = Setup::new();
    let backend = Backend::start().await;
    let config = s.write(&s.config(backend.addr, ""));
    let gw = Gateway::start(&config, ENV).await;
    let taken = s.config(backend.addr, "").replacen(
        "addr = \"127.0.0.1:0\"",
        &format!("addr = \"{}\"", gw.listen),
        1,
    );
    let path = s.dir.path().join("second.toml");
    std::fs::write(&path, taken).expect("write");
    let r = tokio::task::block_in_place(|| {
        authgate(&["run", "--config", path.to_str().expect("utf8")], ENV)
    });
    assert_eq!(
        r.code,
        Some(1),
        "stdout: {}\nstderr: {}",
        r.stdout,
        r.stderr
    );
    assert!(r.stderr.contains("cannot listen on"), "{}", r.stderr);
    // The first instance still answers every request.
    let url = gw.url("/api/public/x");
    for _ in 0..20 {
        assert_eq!(status_of(&url).await, Some(200));
    }
}

/// `authgate run` with `var=value` exits 1 naming the variable, before it
/// serves anything.
fn refused_before_anything_starts(var: &str, value: &str) {
    let s = Setup::new();
    let path = s.write(&s.config("127.0.0.1:9".parse().expect("addr"), ""));
    let env = [ENV[0], (var, value)];
    let r = authgate(&["run", "--config", path.to_str().expect("utf8")], &env);
    assert_eq!(
        r.code,
        Some(1),
        "stdout: {}\nstderr: {}",
        r.stdout,
        r.stderr
    );
    assert!(r.stderr.contains(var), "{}", r.stderr);
    assert!(!r.stdout.contains("authgate serving"), "{}", r.stdout);
}

#[test]
fn an_unknown_runtime_shape_is_refused_before_anything_starts() {
    refused_before_anything_starts("AUTHGATE_RUNTIME", "fastest");
}

#[test]
fn an_unknown_es256_mode_is_refused_before_anything_starts() {
    refused_before_anything_starts("AUTHGATE_ES256", "fastest");
}

#[test]
fn check_accepts_a_valid_file_and_summarizes_it() {
    let s = Setup::new();
    let path = s.write(&s.config("127.0.0.1:9".parse().expect("addr"), ""));
    let r = authgate(&["check", "--config", path.to_str().expect("utf8")], ENV);
    assert_eq!(
        r.code,
        Some(0),
        "stdout: {}\nstderr: {}",
        r.stdout,
        r.stderr
    );
    for want in [
        "listeners",
        "127.0.0.1:0",
        "issuers",
        "web",
        "omni",
        ISS,
        "routes",
        "chat",
        "public",
        "down",
        "/api/chat/",
    ] {
        assert!(
            r.stdout.contains(want),
            "`{want}` missing in:\n{}",
            r.stdout
        );
    }
    assert!(!r.stdout.contains(ID_KEY) && !r.stdout.contains(HS_SECRET));
}

#[test]
fn check_reports_every_problem_with_its_key_and_line() {
    let s = Setup::new();
    let text = r#"[listen]
addr = "127.0.0.1:0"

[limits]
request_timeout = "30 seconds"

[upstreams.chat]
url = "http://127.0.0.1:9"

[identity]
pseudonymize = false

[[routes]]
name = "a"
path = "/a"
upstream = "chat"
scoeps = ["chat"]

[[routes]]
name = "b"
path = "/b"
upstream = "missing"
"#;
    let path = s.write(text);
    let r = check_refuses(&path, &[]);
    let line_of = |key: &str| -> String {
        r.stderr
            .lines()
            .find(|l| l.contains(key))
            .unwrap_or_else(|| panic!("`{key}` not named in:\n{}", r.stderr))
            .to_owned()
    };
    let scoeps = line_of("routes[0].scoeps");
    assert!(scoeps.contains("line 17"), "{scoeps}");
    let upstream = line_of("routes[1].upstream");
    assert!(upstream.contains("line 22"), "{upstream}");
    assert!(upstream.contains("missing"), "{upstream}");
    let duration = line_of("limits.request_timeout");
    assert!(duration.contains("line 5"), "{duration}");
}

#[test]
fn check_refuses_a_zero_send_timeout() {
    let s = Setup::new();
    let text = s.config("127.0.0.1:9".parse().expect("addr"), "").replace(
        "shutdown_grace = \"20s\"",
        "shutdown_grace = \"20s\"\nsend_timeout = \"0s\"",
    );
    assert!(text.contains("send_timeout"));
    let path = s.write(&text);
    let r = check_refuses(&path, ENV);
    assert!(r.stderr.contains("limits.send_timeout"), "{}", r.stderr);
}

#[test]
fn check_names_an_unset_environment_variable() {
    let s = Setup::new();
    let text = s
        .config("127.0.0.1:9".parse().expect("addr"), "")
        .replace("AUTHGATE_ID_KEY", "AUTHGATE_TEST_UNSET_KEY_VAR");
    let path = s.write(&text);
    let r = check_refuses(&path, &[]);
    assert!(
        r.stderr.contains("AUTHGATE_TEST_UNSET_KEY_VAR"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("identity.key_env"), "{}", r.stderr);
    // A missing file is a configuration problem too.
    let r = authgate(&["check", "--config", "/nonexistent/gateway.toml"], &[]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["frobnicate"][..],
        &["check", "--bogus"],
        &["token", "--iss", "x"],
        &["customer-id"],
    ] {
        let r = authgate(args, &[]);
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.stderr);
        assert!(!r.stderr.is_empty());
    }
}

#[test]
fn startup_with_an_invalid_configuration_never_serves() {
    let s = Setup::new();
    let path = s.write(&s.config("127.0.0.1:9".parse().expect("addr"), "bogus = 1\n"));
    let r = authgate(&["run", "--config", path.to_str().expect("utf8")], ENV);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(!r.stdout.contains("authgate serving"));
}

// ------------------------------------------------------------ token

#[test]
fn token_mints_the_requested_claims() {
    let s = Setup::new();
    let key = s.ec_private.to_str().expect("utf8").to_owned();
    let r = authgate(
        &[
            "token",
            "--key",
            &key,
            "--iss",
            "I",
            "--sub",
            "S",
            "--scope",
            "a",
            "--scope",
            "b",
            "--ttl",
            "5m",
            "--claim",
            "n=5",
            "--claim",
            "o={\"k\":true}",
        ],
        &[],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let token = r.stdout.trim();
    assert_eq!(token.split('.').count(), 3, "{token}");
    let p = payload(token);
    assert_eq!(p["iss"], "I");
    assert_eq!(p["sub"], "S");
    assert_eq!(p["scope"], "a b");
    assert_eq!(p["n"], 5);
    assert_eq!(p["o"], json!({"k": true}));
    let (iat, exp) = (
        p["iat"].as_i64().expect("iat"),
        p["exp"].as_i64().expect("exp"),
    );
    assert_eq!(exp - iat, 300);
    // And it really is ES256 under the matching public key.
    let public = std::fs::read(s.path("ec.pub.pem")).expect("pem");
    let mut v = Validation::new(Algorithm::ES256);
    v.validate_aud = false;
    v.set_issuer(&["I"]);
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_ec_pem(&public).expect("pem"), &v)
        .expect("a valid ES256 token");
}

#[test]
fn token_with_negative_ttl_is_expired() {
    let s = Setup::new();
    let key = s.ec_private.to_str().expect("utf8").to_owned();
    let r = authgate(
        &[
            "token",
            "--key",
            &key,
            "--iss",
            "I",
            "--sub",
            "S",
            "--ttl=-5m",
        ],
        &[],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let p = payload(&r.stdout);
    let exp = p["exp"].as_i64().expect("exp");
    assert_eq!(p["iat"].as_i64().expect("iat") - exp, 300);
    assert!(exp < support::now());
}

#[test]
fn token_hs256_from_a_secret_file_and_never_alg_none() {
    let s = Setup::new();
    let secret = s.path("hs.secret");
    let secret = secret.to_str().expect("utf8");
    let r = authgate(
        &[
            "token", "--key", secret, "--alg", "HS256", "--iss", ISS_HS, "--sub", "S", "--aud", AUD,
        ],
        &[],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let token = r.stdout.trim();
    let mut v = Validation::new(Algorithm::HS256);
    v.set_audience(&[AUD]);
    // The trailing newline of the file is not part of the secret.
    let data =
        jsonwebtoken::decode::<Value>(token, &DecodingKey::from_secret(HS_SECRET.as_bytes()), &v)
            .expect("signed with the file's secret");
    assert_eq!(data.claims["aud"], AUD);
    assert_eq!(data.header.alg, Algorithm::HS256);

    for alg in ["none", "None"] {
        let r = authgate(
            &[
                "token", "--key", secret, "--alg", alg, "--iss", "I", "--sub", "S",
            ],
            &[],
        );
        assert_ne!(r.code, Some(0), "alg {alg} minted: {}", r.stdout);
        assert!(r.stdout.trim().is_empty(), "{}", r.stdout);
    }
    // An EC key cannot sign HS256 (no public-key HMAC confusion in tooling either).
    let key = s.ec_private.to_str().expect("utf8").to_owned();
    let r = authgate(
        &[
            "token", "--key", &key, "--alg", "HS256", "--iss", "I", "--sub", "S",
        ],
        &[],
    );
    assert_ne!(r.code, Some(0), "{}", r.stdout);
}

// ------------------------------------------------------------ customer-id, instances

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_id_matches_what_a_running_gateway_forwards() {
    let s = Setup::new();
    let upstream = Upstream::start().await;
    let config = s.write(&s.config(upstream.addr, ""));
    let cfg = config.to_str().expect("utf8");
    let r = authgate(
        &[
            "customer-id",
            "--config",
            cfg,
            "--namespace",
            "customers",
            "alice",
        ],
        ENV,
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let printed = r.stdout.trim().to_owned();
    assert!(printed.starts_with("cid_"), "{printed}");
    assert!(!r.stdout.contains("alice"), "{}", r.stdout);
    // With one namespace in the file, --namespace may be left out.
    let r = authgate(&["customer-id", "--config", cfg, "alice"], ENV);
    assert_eq!(r.stdout.trim(), printed, "{}", r.stderr);
    // Another key, another id: the id is keyed.
    let r = authgate(
        &["customer-id", "--config", cfg, "alice"],
        &[("AUTHGATE_ID_KEY", "another-key-of-at-least-16-bytes")],
    );
    assert_ne!(r.stdout.trim(), printed);

    // A token minted by `authgate token`, sent through `authgate run`.
    let key = s.ec_private.to_str().expect("utf8").to_owned();
    let t = authgate(
        &[
            "token", "--key", &key, "--iss", ISS, "--aud", AUD, "--sub", "alice", "--scope", "chat",
        ],
        &[],
    );
    assert_eq!(t.code, Some(0), "{}", t.stderr);
    let gw = Gateway::start(&config, ENV).await;
    let bearer = format!("Bearer {}", t.stdout.trim());
    let r = support::get(&gw.url("/api/chat/x"), &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let up = upstream.only();
    assert_eq!(up.header("x-authgate-customer-id"), Some(printed.as_str()));
    assert!(!up.raw_text().contains("alice"));
}

/// What a client sees, minus the per-request id.
fn decision(r: &support::Reply) -> (u16, Value) {
    let mut body = r.body.clone();
    if let Some(o) = body.as_object_mut() {
        o.remove("request_id");
    }
    (r.status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_behave_as_one() {
    let s = Setup::new();
    let upstream = Upstream::start().await;
    let config = s.write(&s.config(upstream.addr, ""));
    let a = Gateway::start(&config, ENV).await;
    let b = Gateway::start(&config, ENV).await;
    assert_ne!(a.listen, b.listen);
    let cases: Vec<(String, Vec<(String, String)>)> = vec![
        (
            "/api/chat/x".into(),
            vec![(
                "authorization".into(),
                format!("Bearer {}", s.token("bob", "chat", 600)),
            )],
        ),
        (
            "/api/chat/x".into(),
            vec![(
                "authorization".into(),
                format!("Bearer {}", s.hs_token("bob")),
            )],
        ),
        (
            "/api/chat/x".into(),
            vec![(
                "cookie".into(),
                format!("AuthCookie={}", s.token("carol", "chat", 600)),
            )],
        ),
        (
            "/api/chat/x".into(),
            vec![(
                "authorization".into(),
                format!("Bearer {}", s.token("bob", "other", 600)),
            )],
        ),
        (
            "/api/chat/x".into(),
            vec![(
                "authorization".into(),
                format!("Bearer {}", s.token("bob", "chat", -600)),
            )],
        ),
        (
            "/api/chat/x".into(),
            vec![(
                "authorization".into(),
                format!("Bearer {}", s.forged("bob")),
            )],
        ),
        ("/api/chat/x".into(), vec![]),
        (
            "/api/public/x".into(),
            vec![("x-authgate-customer-id".into(), "cid_spoofed".into())],
        ),
        ("/nowhere".into(), vec![]),
    ];
    let mut statuses = Vec::new();
    for (path, headers) in &cases {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let ra = support::get(&a.url(path), &h).await;
        let rb = support::get(&b.url(path), &h).await;
        assert_eq!(decision(&ra), decision(&rb), "{path} {headers:?}");
        statuses.push(ra.status);
    }
    assert_eq!(statuses, [200, 200, 200, 403, 401, 401, 401, 200, 404]);
    // Each forwarded request went out twice (once per instance), identically.
    let seen = upstream.seen();
    assert_eq!(seen.len(), 8);
    let ids: Vec<Option<&str>> = seen
        .iter()
        .map(|r| r.header("x-authgate-customer-id"))
        .collect();
    for pair in ids.chunks(2) {
        assert_eq!(pair[0], pair[1]);
    }
    // bob via ES256 and via HS256 share the "customers" namespace.
    assert_eq!(ids[0], ids[2]);
    assert!(ids[0].is_some_and(|id| id.starts_with("cid_")));
    assert_ne!(ids[0], ids[4], "carol is not bob");
    assert_eq!(
        ids[6], None,
        "anonymous: no id, and the spoofed one is gone"
    );
}

// ------------------------------------------------------------ load

/// A client loop: `workers` tasks sending back-to-back GETs until stopped.
struct Load {
    sent: Arc<AtomicUsize>,
    statuses: Arc<Mutex<BTreeMap<u16, usize>>>,
    transport_errors: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, headers: Vec<(&'static str, String)>, workers: usize) -> Load {
        let load = Load {
            sent: Arc::default(),
            statuses: Arc::default(),
            transport_errors: Arc::default(),
            stop: Arc::default(),
            tasks: Vec::new(),
        };
        let client = support::client();
        let tasks = (0..workers)
            .map(|_| {
                let (client, url, headers) = (client.clone(), url.clone(), headers.clone());
                let (sent, statuses, errors, stop) = (
                    load.sent.clone(),
                    load.statuses.clone(),
                    load.transport_errors.clone(),
                    load.stop.clone(),
                );
                tokio::spawn(async move {
                    // Paced so that the load is a few hundred requests a
                    // second rather than whatever the machine can do.
                    let mut tick = tokio::time::interval(Duration::from_millis(8));
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        let mut rb = client.get(&url).timeout(Duration::from_secs(10));
                        for (k, v) in &headers {
                            rb = rb.header(*k, v);
                        }
                        match rb.send().await {
                            Ok(r) => {
                                let code = r.status().as_u16();
                                let _ = r.bytes().await;
                                *statuses.lock().expect("lock").entry(code).or_default() += 1;
                            }
                            Err(e) => {
                                if !e.is_connect() {
                                    eprintln!("load: transport error: {e:?}");
                                }
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load { tasks, ..load }
    }

    fn count(&self, status: u16) -> usize {
        self.statuses
            .lock()
            .expect("lock")
            .get(&status)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until `n` more requests than now have completed.
    async fn more(&self, n: usize) {
        let target = self.sent.load(Ordering::Relaxed) + n;
        poll(&format!("{n} more requests"), || async {
            self.sent.load(Ordering::Relaxed) >= target
        })
        .await;
    }

    /// Stops the loop; returns (requests, statuses, transport errors).
    async fn finish(self) -> (usize, BTreeMap<u16, usize>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            tokio::time::timeout(DEADLINE, t)
                .await
                .expect("load stops")
                .expect("load task");
        }
        let statuses = self.statuses.lock().expect("lock").clone();
        (
            self.sent.load(Ordering::Relaxed),
            statuses,
            self.transport_errors.load(Ordering::Relaxed),
        )
    }
}

fn failures(statuses: &BTreeMap<u16, usize>) -> usize {
    statuses
        .iter()
        .filter(|(s, _)| !(200..300).contains(*s))
        .map(|(_, n)| n)
        .sum()
}

/// The `problems` of the last "reload refused" log line.
fn reload_problems(gw: &Gateway) -> Option<String> {
    gw.json_lines()
        .iter()
        .rev()
        .find(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("reload refused"))
        })
        .and_then(|v| v["problems"].as_str().map(str::to_owned))
}

fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

const NEW_ROUTE: &str = r#"
[[routes]]
name = "added"
path = "/api/added/{*rest}"
upstream = "chat"
auth = "required"
scopes = ["chat"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_valid_config_adds_a_route_without_failing_a_request() {
    let s = Setup::new();
    let upstream = Upstream::start().await;
    let config = s.write(&s.config(upstream.addr, ""));
    let gw = Gateway::start(&config, ENV).await;
    let bearer = format!("Bearer {}", s.token("loader", "chat", 600));
    assert_eq!(
        support::get(&gw.url("/api/added/x"), &[("authorization", &bearer)])
            .await
            .status,
        404
    );
    let load = Load::start(
        gw.url("/api/chat/load"),
        vec![("authorization", bearer.clone())],
        4,
    );
    load.more(600).await;
    s.write(&s.config(upstream.addr, NEW_ROUTE));
    signal(gw.pid(), "-HUP");
    let url = gw.url("/api/added/x");
    poll("the new route", || {
        let (url, bearer) = (url.clone(), bearer.clone());
        async move {
            support::get(&url, &[("authorization", &bearer)])
                .await
                .status
                == 200
        }
    })
    .await;
    load.more(600).await;
    let (sent, statuses, errors) = load.finish().await;
    eprintln!("SIGHUP (valid) under load: {sent} requests, statuses {statuses:?}, transport errors {errors}");
    assert!(sent >= 1200);
    assert_eq!(failures(&statuses), 0, "{statuses:?}");
    assert_eq!(errors, 0, "no request failed in transport");
    let m = gw.metrics().await;
    assert_eq!(
        sample(&m, "authgate_config_reloads_total{result=\"success\"}"),
        1.0,
        "{m}"
    );
    // Everything the upstream got was authenticated.
    assert!(upstream
        .seen()
        .iter()
        .all(|r| r.header("x-authgate-auth") == Some("authenticated")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_config_keeps_serving_and_logs_what_check_prints() {
    let s = Setup::new();
    let upstream = Upstream::start().await;
    let config = s.write(&s.config(upstream.addr, ""));
    let gw = Gateway::start(&config, ENV).await;
    let bearer = format!("Bearer {}", s.token("loader", "chat", 600));
    let load = Load::start(
        gw.url("/api/chat/load"),
        vec![("authorization", bearer.clone())],
        4,
    );
    load.more(400).await;

    // 1. Problems in the file itself: a typo and a missing upstream.
    let broken = s.config(
        upstream.addr,
        "\n[[routes]]\nname = \"typo\"\npath = \"/api/typo\"\nupstream = \"chat\"\nscoeps = [\"x\"]\n\n[[routes]]\nname = \"orphan\"\npath = \"/api/orphan\"\nupstream = \"nowhere\"\n",
    );
    s.write(&broken);
    let check = check_refuses(&config, ENV);
    signal(gw.pid(), "-HUP");
    poll("the refused reload in the log", || async {
        reload_problems(&gw).is_some()
    })
    .await;
    let logged = reload_problems(&gw).expect("problems");
    for line in check.stderr.lines().skip(1) {
        assert!(
            logged.contains(line.trim()),
            "check printed `{}`, the log has:\n{logged}",
            line.trim()
        );
    }
    assert!(logged.contains("routes[3].scoeps") && logged.contains("routes[4].upstream"));
    load.more(400).await;

    // 2. A file that parses, but whose key file does not exist.
    let missing_key = s
        .config(upstream.addr, NEW_ROUTE)
        .replace("\"ec.pub.pem\"", "\"missing.pub.pem\"");
    s.write(&missing_key);
    let check = check_refuses(&config, ENV);
    signal(gw.pid(), "-HUP");
    let m = gw.admin;
    poll("the second refused reload", || async move {
        let text = support::get(&format!("http://{m}/metrics"), &[]).await.raw;
        sample(&text, "authgate_config_reloads_total{result=\"failure\"}") >= 2.0
    })
    .await;
    poll("the second refused reload in the log", || async {
        reload_problems(&gw).is_some_and(|p| p.contains("issuers[0].keys[0]"))
    })
    .await;
    load.more(400).await;
    let (sent, statuses, errors) = load.finish().await;
    eprintln!("SIGHUP (broken) under load: {sent} requests, statuses {statuses:?}, transport errors {errors}");
    assert_eq!(failures(&statuses), 0, "{statuses:?}");
    assert_eq!(errors, 0);
    // Old behaviour kept: no new route, old ones as before.
    assert_eq!(
        support::get(&gw.url("/api/added/x"), &[("authorization", &bearer)])
            .await
            .status,
        404
    );
    assert_eq!(
        support::get(&gw.url("/api/typo"), &[("authorization", &bearer)])
            .await
            .status,
        404
    );
    assert_eq!(
        support::get(&gw.url("/api/chat/x"), &[("authorization", &bearer)])
            .await
            .status,
        200
    );
    // The same key and message as `check` (the line number: see
    // `refused_reload_logs_the_line_numbers_check_prints`).
    let logged = reload_problems(&gw).expect("problems");
    for line in check.stderr.lines().skip(1) {
        let problem = without_line(line);
        assert!(
            logged.contains(problem),
            "check printed `{problem}`, the log has:\n{logged}"
        );
    }
}

/// `  line 36: key: message` → `key: message`.
fn without_line(line: &str) -> &str {
    let line = line.trim();
    match line.strip_prefix("line ") {
        Some(rest) => rest.split_once(": ").map_or(line, |(_, p)| p),
        None => line,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_reload_logs_the_line_numbers_check_prints() {
    let s = Setup::new();
    let upstream = Upstream::start().await;
    let config = s.write(&s.config(upstream.addr, ""));
    let gw = Gateway::start(&config, ENV).await;
    s.write(
        &s.config(upstream.addr, "")
            .replace("\"ec.pub.pem\"", "\"missing.pub.pem\""),
    );
    let check = check_refuses(&config, ENV);
    signal(gw.pid(), "-HUP");
    poll("the refused reload in the log", || async {
        reload_problems(&gw).is_some()
    })
    .await;
    let logged = reload_problems(&gw).expect("problems");
    for line in check.stderr.lines().skip(1) {
        assert!(
            logged.contains(line.trim()),
            "check printed `{}`, the log has:\n{logged}",
            line.trim()
        );
    }
}

// ------------------------------------------------------------ a controllable upstream

/// An upstream that can hold `/hold` requests until released, and be
/// stopped (connections dropped) and restarted on the same port.
struct Backend {
    addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    release: tokio::sync::watch::Sender<bool>,
    held: Arc<AtomicUsize>,
}

impl Backend {
    async fn start() -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, _) = tokio::sync::watch::channel(false);
        let (release, _) = tokio::sync::watch::channel(false);
        let b = Backend {
            addr,
            stop,
            release,
            held: Arc::default(),
        };
        b.serve(listener);
        b
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        // `send` would not store the value while nobody subscribes.
        self.stop.send_replace(false);
        let mut stop = self.stop.subscribe();
        let release = self.release.subscribe();
        let held = self.held.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
                    _ = stop.wait_for(|s| *s) => return,
                };
                let mut conn_stop = stop.clone();
                let (release, held) = (release.clone(), held.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let mut release = release.clone();
                        let held = held.clone();
                        async move {
                            if req.uri().path().starts_with("/api/chat/hold") {
                                held.fetch_add(1, Ordering::SeqCst);
                                let _ = release.wait_for(|r| *r).await;
                            }
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = conn_stop.wait_for(|s| *s) => {}
                    }
                });
            }
        });
    }

    /// Closes the listener and every connection.
    fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Listens again on the same address.
    async fn restart(&self) {
        let end = Instant::now() + DEADLINE;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) => {
                    assert!(Instant::now() < end, "rebind {}: {e}", self.addr);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        self.serve(listener);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    drains_in_flight_requests_and_exits_0(ENV).await;
}

/// The default runs one current-thread runtime per worker (here 2, each
/// with its own SO_REUSEPORT listener: "the listener to close" means all of
/// them); the work-stealing runtime, still selectable, must drain the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_multi_thread_runtime_drains_like_the_default() {
    let env = [ENV[0], ("AUTHGATE_RUNTIME", "multi-thread")];
    drains_in_flight_requests_and_exits_0(&env).await;
}

async fn drains_in_flight_requests_and_exits_0(env: &[(&str, &str)]) {
    let s = Setup::new();
    let backend = Backend::start().await;
    let config = s.write(&s.config(backend.addr, ""));
    let mut gw = Gateway::start(&config, env).await;
    let bearer = format!("Bearer {}", s.token("drain", "chat", 600));
    let load = Load::start(
        gw.url("/api/chat/load"),
        vec![("authorization", bearer.clone())],
        2,
    );
    load.more(50).await;
    // A slow request, held by the upstream until the test releases it.
    let url = gw.url("/api/chat/hold");
    let b = bearer.clone();
    let slow = tokio::spawn(async move { support::get(&url, &[("authorization", &b)]).await });
    let held = backend.held.clone();
    poll("the upstream to hold the slow request", || {
        let held = held.clone();
        async move { held.load(Ordering::SeqCst) == 1 }
    })
    .await;

    signal(gw.pid(), "-TERM");
    let readyz = format!("http://{}/readyz", gw.admin);
    poll("readyz 503 while draining", || {
        let readyz = readyz.clone();
        async move { status_of(&readyz).await == Some(503) }
    })
    .await;
    // New connections are no longer accepted.
    let listen = gw.listen;
    poll("the listener to close", || async move {
        tokio::net::TcpStream::connect(listen).await.is_err()
    })
    .await;
    let (sent, statuses, errors) = load.finish().await;
    eprintln!("SIGTERM under load: {sent} requests, statuses {statuses:?}, transport errors after the listener closed {errors}");
    assert_eq!(
        failures(&statuses),
        0,
        "every answered request succeeded: {statuses:?}"
    );
    assert!(!slow.is_finished(), "the slow request is still in flight");
    assert!(
        gw.child.try_wait().expect("wait").is_none(),
        "still draining"
    );

    let _ = backend.release.send(true);
    let r = tokio::time::timeout(DEADLINE, slow)
        .await
        .expect("slow request completes")
        .expect("task");
    assert_eq!(r.status, 200, "the in-flight request completes: {}", r.raw);
    assert_eq!(r.raw, "ok");
    // shutdown_grace = 20s bounds the exit.
    let status = tokio::task::block_in_place(|| {
        wait_until(&mut gw.child, Duration::from_secs(20)).expect("exit within shutdown_grace")
    });
    assert_eq!(status.code(), Some(0), "{}", gw.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_restart_gives_502_then_recovers_without_a_gateway_restart() {
    let s = Setup::new();
    let backend = Backend::start().await;
    let config = s.write(&s.config(backend.addr, ""));
    let mut gw = Gateway::start(&config, ENV).await;
    let bearer = format!("Bearer {}", s.token("restart", "chat", 600));
    let load = Load::start(
        gw.url("/api/chat/load"),
        vec![("authorization", bearer.clone())],
        4,
    );
    load.more(100).await;
    assert_eq!(failures(&load.statuses.lock().expect("lock")), 0);

    backend.stop();
    poll("502s while the upstream is down", || async {
        load.count(502) >= 5
    })
    .await;
    let ok_while_down = load.count(200);
    backend.restart().await;
    poll("recovery", || async {
        load.count(200) >= ok_while_down + 50
    })
    .await;
    let (sent, statuses, errors) = load.finish().await;
    eprintln!("upstream restart under load: {sent} requests, statuses {statuses:?}, transport errors {errors}");
    assert!(
        statuses.keys().all(|s| *s == 200 || *s == 502),
        "only 200 and 502: {statuses:?}"
    );
    assert_eq!(errors, 0);
    assert!(gw.child.try_wait().expect("wait").is_none(), "same process");
    let m = gw.metrics().await;
    assert!(
        sample(
            &m,
            "authgate_upstream_errors_total{upstream=\"chat\",kind=\"connect\"}"
        ) >= 1.0,
        "{m}"
    );
    let status = tokio::task::block_in_place(|| gw.terminate(DEADLINE));
    assert_eq!(status.code(), Some(0));
}

// ------------------------------------------------------------ log hygiene

type Case<'a> = (&'a str, &'a str, Vec<(&'a str, String)>, u16);

/// Sends each case with `x-request-id` = its id + `suffix`; checks the status.
async fn send_cases(base: &str, cases: &[Case<'_>], suffix: &str) -> Vec<(String, u16)> {
    let mut sent = Vec::new();
    for (id, path, headers, want) in cases {
        let rid = format!("{id}{suffix}");
        let mut h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        h.push(("x-request-id", &rid));
        let r = support::get(&format!("{base}{path}"), &h).await;
        assert_eq!(r.status, *want, "{rid}: {}", r.raw);
        sent.push((rid, *want));
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_one_access_line_per_request_and_no_credentials() {
    let s = Setup::new();
    let upstream = Upstream::start().await;
    let config = s.write(&s.config(upstream.addr, ""));
    let mut gw = Gateway::start(&config, ENV).await;

    let good = s.token(RAW_SUBJECT, "chat", 600);
    let cookie_token = s.token(RAW_SUBJECT, "chat", 601);
    let query_token = s.token(RAW_SUBJECT, "chat", 602);
    let hs = s.hs_token(RAW_SUBJECT);
    let forged = s.forged(RAW_SUBJECT);
    let expired = s.token(RAW_SUBJECT, "chat", -600);
    let api_key = "sk_live_S3CR3T-header-value-0042";
    let cookie_secret = "session-cookie-value-0xDEADBEEF";
    let b = |t: &str| format!("Bearer {t}");
    let c = |t: &str| format!("AuthCookie={t}; other={cookie_secret}");
    let query_path = format!("/api/chat/x?access_token={query_token}");
    let cases: Vec<Case> = vec![
        (
            "h-bearer",
            "/api/chat/x",
            vec![("authorization", b(&good)), ("x-api-key", api_key.into())],
            200,
        ),
        (
            "h-cookie",
            "/api/chat/x",
            vec![("cookie", c(&cookie_token))],
            200,
        ),
        (
            "h-hs256",
            "/api/chat/x",
            vec![("authorization", b(&hs))],
            200,
        ),
        (
            "h-forged",
            "/api/chat/x",
            vec![("authorization", b(&forged))],
            401,
        ),
        (
            "h-expired",
            "/api/chat/x",
            vec![("authorization", b(&expired))],
            401,
        ),
        ("h-query", &query_path, vec![], 401),
        (
            "h-conflict",
            "/api/chat/x",
            vec![("authorization", b(&good)), ("cookie", c(&forged))],
            400,
        ),
        (
            "h-basic",
            "/api/chat/x",
            vec![(
                "authorization",
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{RAW_SUBJECT}:{api_key}"))
                ),
            )],
            401,
        ),
        (
            "h-down",
            "/api/down/x",
            vec![("authorization", b(&good))],
            502,
        ),
        (
            "h-public",
            "/api/public/x",
            vec![
                ("authorization", b(&good)),
                ("x-authgate-customer-id", RAW_SUBJECT.into()),
            ],
            200,
        ),
    ];
    let mut sent = send_cases(&gw.url(""), &cases, "").await;

    // A valid reload, then a refused one, then the same requests again.
    s.write(&s.config(upstream.addr, NEW_ROUTE));
    signal(gw.pid(), "-HUP");
    let m = gw.admin;
    poll("the reload", || async move {
        let text = support::get(&format!("http://{m}/metrics"), &[]).await.raw;
        sample(&text, "authgate_config_reloads_total{result=\"success\"}") >= 1.0
    })
    .await;
    let customer_id = authgate(
        &[
            "customer-id",
            "--config",
            config.to_str().expect("utf8"),
            RAW_SUBJECT,
        ],
        ENV,
    )
    .stdout
    .trim()
    .to_owned();
    assert!(customer_id.starts_with("cid_"), "{customer_id}");
    s.write(&s.config(upstream.addr, "bogus = 1\n"));
    signal(gw.pid(), "-HUP");
    poll("the refused reload", || async move {
        let text = support::get(&format!("http://{m}/metrics"), &[]).await.raw;
        sample(&text, "authgate_config_reloads_total{result=\"failure\"}") >= 1.0
    })
    .await;
    sent.extend(send_cases(&gw.url(""), &cases, "-2").await);

    let status = tokio::task::block_in_place(|| gw.terminate(DEADLINE));
    assert_eq!(status.code(), Some(0));
    // The reader threads see EOF once the process is gone.
    poll("the final log line", || async {
        gw.output().contains("authgate stopped")
    })
    .await;
    let output = gw.output();

    let mut secrets: Vec<(&str, String)> = vec![
        ("id key", ID_KEY.into()),
        ("HMAC secret", HS_SECRET.into()),
        ("raw subject", RAW_SUBJECT.into()),
        ("api key header", api_key.into()),
        ("cookie value", cookie_secret.into()),
    ];
    for (what, t) in [
        ("bearer token", &good),
        ("cookie token", &cookie_token),
        ("query token", &query_token),
        ("HS256 token", &hs),
        ("forged token", &forged),
        ("expired token", &expired),
    ] {
        secrets.push((what, t.clone()));
        for (i, part) in t.split('.').enumerate().skip(1) {
            secrets.push((
                if i == 1 {
                    "token payload"
                } else {
                    "token signature"
                },
                part.to_owned(),
            ));
        }
    }
    for (what, secret) in &secrets {
        assert!(
            !output.contains(secret.as_str()),
            "the {what} appears in the logs:\n{output}"
        );
    }

    let access: Vec<Value> = gw
        .json_lines()
        .into_iter()
        .filter(|v| v["target"] == "authgate::access")
        .collect();
    assert_eq!(
        access.len(),
        sent.len(),
        "one access line per request: {access:#?}"
    );
    for (rid, want) in &sent {
        let lines: Vec<&Value> = access.iter().filter(|v| v["request_id"] == **rid).collect();
        assert_eq!(lines.len(), 1, "{rid}: {lines:#?}");
        let l = lines[0];
        assert_eq!(l["status"], *want, "{l}");
        assert_eq!(l["method"], "GET", "{l}");
        for field in ["route", "auth", "latency_ms"] {
            assert!(!l[field].is_null(), "{field} missing: {l}");
        }
        assert!(l["latency_ms"].is_number(), "{l}");
        if l["auth"] == "authenticated" {
            assert_eq!(l["customer_id"], customer_id.as_str(), "{l}");
        } else {
            assert!(l["customer_id"].is_null(), "{l}");
        }
        if *want >= 400 {
            assert!(l["error"].is_string(), "the error code is logged: {l}");
        }
    }
    let by_id = |rid: &str| {
        access
            .iter()
            .find(|v| v["request_id"] == rid)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(by_id("h-bearer")["auth"], "authenticated");
    assert_eq!(by_id("h-bearer")["route"], "chat");
    assert_eq!(by_id("h-expired")["error"], "token_expired");
    assert_eq!(by_id("h-forged")["error"], "invalid_token");
    assert_eq!(by_id("h-down")["error"], "upstream_unavailable");
    assert_eq!(by_id("h-public")["auth"], "anonymous");
    // The upstream's time is measured for a request that reached it, and
    // only for such a request.
    assert!(by_id("h-bearer")["upstream_ms"].is_number(), "{access:#?}");
    assert!(by_id("h-expired")["upstream_ms"].is_null(), "{access:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_subjects_stay_out_of_the_log_without_pseudonymization() {
    let s = Setup::new();
    let upstream = Upstream::start().await;
    let config = s.write(&s.config(upstream.addr, "").replace(
        "pseudonymize = true\nkey_env = \"AUTHGATE_ID_KEY\"",
        "pseudonymize = false",
    ));
    let mut gw = Gateway::start(&config, &[]).await;
    let token = s.token(RAW_SUBJECT, "chat", 600);
    let r = support::get(
        &gw.url("/api/chat/x"),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    // The upstream gets the subject itself (that is what pseudonymize = false means)…
    assert_eq!(
        upstream.only().header("x-authgate-customer-id"),
        Some(RAW_SUBJECT)
    );
    // (SIGINT stops it like SIGTERM.)
    let status = tokio::task::block_in_place(|| gw.stop_with("-INT", DEADLINE));
    assert_eq!(status.code(), Some(0));
    poll("the final log line", || async {
        gw.output().contains("authgate stopped")
    })
    .await;
    // …but the log does not.
    let output = gw.output();
    assert!(!output.contains(RAW_SUBJECT), "{output}");
    assert!(!output.contains(&token), "{output}");
    let access: Vec<Value> = gw
        .json_lines()
        .into_iter()
        .filter(|v| v["target"] == "authgate::access")
        .collect();
    assert_eq!(access.len(), 1, "{access:#?}");
    assert_eq!(access[0]["auth"], "authenticated");
    assert_eq!(access[0]["customer_id_withheld"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_gives_up_on_a_stuck_request_after_shutdown_grace_and_exits_0() {
    let s = Setup::new();
    let backend = Backend::start().await;
    let config = s.write(
        &s.config(backend.addr, "")
            .replace("shutdown_grace = \"20s\"", "shutdown_grace = \"1s\""),
    );
    let mut gw = Gateway::start(&config, ENV).await;
    let bearer = format!("Bearer {}", s.token("stuck", "chat", 600));
    let url = gw.url("/api/chat/hold");
    let stuck = tokio::spawn(async move {
        support::client()
            .get(&url)
            .header("authorization", bearer)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    let held = backend.held.clone();
    poll("the upstream to hold the request", || {
        let held = held.clone();
        async move { held.load(Ordering::SeqCst) == 1 }
    })
    .await;
    // Never released: the gateway must still exit, cleanly, after the grace.
    let status = tokio::task::block_in_place(|| gw.terminate(DEADLINE));
    assert_eq!(status.code(), Some(0), "{}", gw.output());
    poll("the final log line", || async {
        gw.output().contains("authgate stopped")
    })
    .await;
    assert!(
        gw.output().contains("shutdown_grace elapsed"),
        "{}",
        gw.output()
    );
    let r = tokio::time::timeout(DEADLINE, stuck)
        .await
        .expect("the client is not left hanging")
        .expect("task");
    assert!(r.is_err(), "the cut request fails in transport: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_keep_alive_connections_without_waiting_for_the_grace() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Setup::new();
    let upstream = Upstream::start().await;
    let config = s.write(&s.config(upstream.addr, ""));
    let mut gw = Gateway::start(&config, ENV).await;
    // One request on a keep-alive connection, then the connection idles.
    let mut conn = tokio::net::TcpStream::connect(gw.listen)
        .await
        .expect("connect");
    conn.write_all(b"GET /api/public/x HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(DEADLINE, conn.read(&mut buf))
        .await
        .expect("response")
        .expect("read");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );

    let status = tokio::task::block_in_place(|| gw.terminate(DEADLINE));
    assert_eq!(status.code(), Some(0));
    // The idle connection was closed by the gateway, not abandoned.
    let n = tokio::time::timeout(DEADLINE, conn.read(&mut buf))
        .await
        .expect("closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "EOF on the idle connection");
    poll("the final log line", || async {
        gw.output().contains("authgate stopped")
    })
    .await;
    assert!(
        !gw.output().contains("shutdown_grace elapsed"),
        "an idle connection does not hold the drain: {}",
        gw.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_on_the_configuration_they_began_with() {
    let s = Setup::new();
    let backend = Backend::start().await;
    let config = s.write(&s.config(backend.addr, ""));
    let gw = Gateway::start(&config, ENV).await;
    let bearer = format!("Bearer {}", s.token("inflight", "chat", 600));
    let (url, b) = (gw.url("/api/chat/hold"), bearer.clone());
    let held_request =
        tokio::spawn(async move { support::get(&url, &[("authorization", &b)]).await });
    let held = backend.held.clone();
    poll("the upstream to hold the request", || {
        let held = held.clone();
        async move { held.load(Ordering::SeqCst) == 1 }
    })
    .await;
    // The new configuration requires a scope the token does not have.
    s.write(
        &s.config(backend.addr, "")
            .replace("scopes = [\"chat\"]", "scopes = [\"chat-v2\"]"),
    );
    signal(gw.pid(), "-HUP");
    let url = gw.url("/api/chat/x");
    poll("the new configuration", || {
        let (url, bearer) = (url.clone(), bearer.clone());
        async move {
            support::get(&url, &[("authorization", &bearer)])
                .await
                .status
                == 403
        }
    })
    .await;
    let _ = backend.release.send(true);
    let r = tokio::time::timeout(DEADLINE, held_request)
        .await
        .expect("completes")
        .expect("task");
    assert_eq!(r.status, 200, "{}", r.raw);
}
