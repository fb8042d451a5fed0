//! `authgate demo` prints commands that work when pasted: run the binary,
//! paste each printed curl command into bash, check the documented answer.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn demo_commands_produce_the_documented_answers() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("SKIPPED: curl is not installed");
        return;
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_authgate"))
        .arg("demo")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start demo");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut commands = Vec::new();
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("demo printed its commands in time");
        if line.starts_with("curl ") || line.starts_with("python3 ") {
            commands.push(line.clone());
        }
        if line.contains("Press Ctrl-C") {
            break;
        }
    }
    let expected: [&[&str]; 8] = [
        &[
            "\"x-authgate-auth\": \"authenticated\"",
            "\"x-authgate-customer-id\": \"cid_",
        ],
        &["401", "\"needs_refresh\":true", "token_expired"],
        &["403", "insufficient_scope", "scope=\"paybill\""],
        &["\"x-authgate-auth\": \"anonymous\""],
        &["401", "missing_token"],
        &[
            "x-authgate-customer-info",
            "[redacted]",
            "x-authgate-segments",
        ],
        &["x-authgate-context", "msdyn_cartvalue"],
        &[
            "101 Switching Protocols",
            "echo:   hello from the chat widget",
        ],
    ];
    assert_eq!(commands.len(), expected.len(), "{commands:#?}");
    for (cmd, want) in commands.iter().zip(expected) {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("timeout 20 {cmd}"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run command");
        let text = String::from_utf8_lossy(&out.stdout);
        for w in want {
            assert!(text.contains(w), "`{cmd}` should print {w:?}, got:\n{text}");
        }
        assert!(!text.contains("cid_spoofed"), "{text}");
    }
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
