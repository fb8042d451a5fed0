//! `authgate`: parses the command line and dispatches; everything else is in
//! the library.

use authgate::cli::{self, Cli, Command};
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        None => serve(cli.config),
        Some(Command::Run { config }) => serve(config),
        Some(Command::Check { config }) => cli::check(&config),
        Some(Command::Token {
            key,
            alg,
            iss,
            sub,
            aud,
            scopes,
            ttl,
            claims,
            kid,
        }) => cli::token(
            &key,
            alg.as_deref(),
            &iss,
            &sub,
            &aud,
            &scopes,
            &ttl,
            &claims,
            kid.as_deref(),
        ),
        Some(Command::CustomerId {
            config,
            namespace,
            subject,
        }) => cli::customer_id(&config, namespace.as_deref(), &subject),
        Some(Command::Demo { tls }) => with_runtime(authgate::demo::run(tls)),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn serve(config: std::path::PathBuf) -> i32 {
    // AUTHGATE_ES256=aws-lc turns the ES256 tables off (src/keys/p256.rs);
    // a value that is neither is refused before anything starts.
    match authgate::keys::es256_tables(std::env::var("AUTHGATE_ES256").ok().as_deref()) {
        Ok(on) => authgate::keys::set_es256_tables(on),
        Err(e) => {
            eprintln!("authgate: {e}");
            return 1;
        }
    }
    // The runtime shape (bench/PERFORMANCE.md, *What was chosen*): by
    // default one current-thread runtime per worker, each with its own
    // SO_REUSEPORT listener (server::set_per_core);
    // AUTHGATE_RUNTIME=multi-thread for tokio's work-stealing runtime
    // instead.
    match std::env::var("AUTHGATE_RUNTIME").as_deref() {
        Ok("multi-thread") => with_runtime(authgate::server::run(config)),
        Err(_) | Ok("" | "per-core") => {
            let workers = worker_threads().unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            });
            authgate::server::set_per_core(workers);
            run_current_thread(authgate::server::run(config))
        }
        Ok(other) => {
            eprintln!(
                "authgate: AUTHGATE_RUNTIME={other:?}: expected `per-core` or `multi-thread`"
            );
            1
        }
    }
}

/// AUTHGATE_WORKER_THREADS=N, when set to a positive number.
fn worker_threads() -> Option<usize> {
    std::env::var("AUTHGATE_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
}

fn with_runtime(fut: impl std::future::Future<Output = Result<(), String>>) -> i32 {
    // AUTHGATE_WORKER_THREADS=N: N worker threads (default: one per core).
    // With 1, a current-thread runtime: no work-stealing, no cross-thread
    // wake-ups — measurably cheaper per request when pinned to one core.
    let threads = worker_threads();
    if threads == Some(1) {
        return run_current_thread(fut);
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n);
    }
    block_on(builder, fut)
}

fn run_current_thread(fut: impl std::future::Future<Output = Result<(), String>>) -> i32 {
    block_on(tokio::runtime::Builder::new_current_thread(), fut)
}

fn block_on(
    mut builder: tokio::runtime::Builder,
    fut: impl std::future::Future<Output = Result<(), String>>,
) -> i32 {
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("authgate: {message}");
            1
        }
    }
}

/// See the `jemalloc` feature in Cargo.toml.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
