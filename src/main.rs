//! The `mqbridge` command line: parses arguments, sets up logging, and calls
//! into the library. No MQTT or config logic lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use mqbridge::config;
use mqbridge::metrics::inspect;
use mqbridge::metrics::jsonlog;
use mqbridge::metrics::logging::{self, LogFormat};
use mqbridge::run::check;
use mqbridge::run::filewatch::{self, FileWatch};
use mqbridge::store::{Store, StoreError};

/// jemalloc rather than the system allocator: glibc keeps the pages freed
/// when subscriptions or clients go (measured: 80 MB of a 108 MB peak still
/// resident long after the clients left); jemalloc with its background
/// thread hands them back to the OS (see [`return_freed_memory`]).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Starts jemalloc's background thread, which purges freed pages after its
/// decay time (10 s) even while no thread allocates. Without it, pages are
/// purged only on later allocator calls of the thread that freed them.
fn return_freed_memory() {
    // Best effort: without the thread memory is still reused, only returned later.
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
}

/// MQTT-to-MQTT bridge and gateway.
#[derive(Debug, Parser)]
#[command(name = "mqbridge", version, about)]
struct Cli {
    /// Log level or filter (e.g. `info`, `mqbridge=debug,info`); `RUST_LOG`, when set, takes precedence.
    #[arg(
        long,
        global = true,
        env = "MQBRIDGE_LOG_LEVEL",
        default_value = "info"
    )]
    log_level: String,
    /// Log format.
    #[arg(long, global = true, env = "MQBRIDGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// The config file argument shared by every subcommand.
#[derive(Debug, Args)]
struct ConfigArg {
    /// Path to the bridges file.
    #[arg(long, short, env = "MQBRIDGE_CONFIG", default_value = "bridges.yaml")]
    config: PathBuf,
}

/// Where a running instance's HTTP endpoint is.
#[derive(Debug, Args)]
struct UrlArg {
    /// Base URL of the instance's metrics endpoint (e.g. `http://127.0.0.1:9464`).
    /// Default: `MQBRIDGE_METRICS_LISTEN` (what the shipped config and the Docker
    /// image listen on; `0.0.0.0` is reached on loopback), else `127.0.0.1:9464`.
    #[arg(long, env = "MQBRIDGE_URL")]
    url: Option<String>,
}

impl UrlArg {
    fn base(&self) -> String {
        match &self.url {
            Some(u) => inspect::base_url(u),
            None => inspect::base_url(
                &std::env::var("MQBRIDGE_METRICS_LISTEN")
                    .unwrap_or_else(|_| inspect::DEFAULT_METRICS_LISTEN.to_owned()),
            ),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the bridge: start the built-in brokers, connect the remote ones, forward through the pipes.
    /// A config error prints every error and exits 1 without opening any connection.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Runtime worker threads. 1 (the default) runs everything on one thread, which
        /// measured fastest for bridging on small machines; raise it for a busy built-in broker.
        #[arg(long, env = "MQBRIDGE_WORKER_THREADS", default_value_t = 1)]
        worker_threads: usize,
        /// Also reload when the config file changes (polled every second), as on SIGHUP.
        #[arg(long, env = "MQBRIDGE_WATCH")]
        watch: bool,
    },
    /// Check the config file: print a short plan and warnings, or every error (exit 1).
    Validate {
        #[command(flatten)]
        config: ConfigArg,
        /// Also dial every remote endpoint (TCP + TLS handshake, no MQTT) and bind every
        /// built-in listener; exit 1 if a required broker has no reachable endpoint or a
        /// listener cannot be bound.
        #[arg(long, env = "MQBRIDGE_CHECK_ENDPOINTS")]
        check_endpoints: bool,
    },
    /// Show hop by hop where a message published on BROKER with TOPIC goes, and where it stops.
    Route {
        #[command(flatten)]
        config: ConfigArg,
        /// The broker the message is published on.
        #[arg(long, env = "MQBRIDGE_ROUTE_FROM")]
        from: String,
        /// The topic name (no wildcards).
        topic: String,
    },
    /// Ask a running instance whether it is ready (`GET /readyz`): exit 0 if it is, 1 if
    /// not or unreachable. For Docker `HEALTHCHECK` and scripts without curl.
    Health {
        #[command(flatten)]
        target: UrlArg,
    },
    /// Show a running instance's brokers and pipes as tables (from `/readyz` and `/metrics`).
    Status {
        #[command(flatten)]
        target: UrlArg,
    },
    /// Show each pipe's spool: messages and bytes not yet acknowledged by the destination,
    /// the oldest one's age, and orphaned spools (their pipe was removed from the config).
    /// Read-only; while the bridge runs it is read from the bridge (`/spool.json` at
    /// `--url`, else the config's `metrics.listen`), otherwise from `storage.dir`.
    Spool {
        #[command(flatten)]
        config: ConfigArg,
        /// Base URL of the running instance (default: the config's `metrics.listen`).
        #[arg(long, env = "MQBRIDGE_URL")]
        url: Option<String>,
        /// Print the report as JSON (a list of spools).
        #[arg(long)]
        json: bool,
        /// Delete the spool of PIPE and everything in it (only with the bridge stopped, and
        /// only for a pipe the config no longer has: an orphaned spool).
        #[arg(long, value_name = "PIPE")]
        drop: Option<String>,
    },
    /// Print a shell completion script (e.g. `mqbridge completions bash > /etc/bash_completion.d/mqbridge`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), generated from this command line's definition
    /// (e.g. `mqbridge man > mqbridge.1 && man ./mqbridge.1`).
    Man,
}

fn main() -> ExitCode {
    return_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return command_line_error(e),
    };
    let out = Report::new(cli.log_format);
    if let Err(e) = logging::init(cli.log_format, &cli.log_level) {
        out.failure("logging could not be set up", &e);
        return ExitCode::FAILURE;
    }
    match cli.command {
        Command::Run {
            config,
            worker_threads,
            watch,
        } => run(&out, &config.config, worker_threads, watch),
        Command::Validate {
            config,
            check_endpoints,
        } => validate(&out, &config.config, check_endpoints),
        Command::Route {
            config,
            from,
            topic,
        } => route(&out, &config.config, &from, &topic),
        Command::Health { target } => health(&target.base()),
        Command::Status { target } => status(&target.base()),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "mqbridge",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Man => man(),
        Command::Spool {
            config,
            url,
            json,
            drop,
        } => spool(&out, &config.config, url, json, drop.as_deref()),
    }
}

/// `mqbridge health`: one line on stdout (ready) or stderr (not), exit 0/1.
fn health(base: &str) -> ExitCode {
    let url = format!("{base}/readyz");
    match inspect::fetch(base, "/readyz") {
        Ok((200, _)) => {
            println!("{url}: ready");
            ExitCode::SUCCESS
        }
        Ok((code, body)) => {
            let reasons = inspect::parse_ready(&url, &body)
                .map(|r| r.reasons.join("; "))
                .unwrap_or_default();
            eprintln!("{url}: not ready (HTTP {code}) {reasons}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `mqbridge status`: the tables on stdout; exit 1 only if the instance cannot be read.
fn status(base: &str) -> ExitCode {
    let read = || -> Result<String, inspect::InspectError> {
        let url = format!("{base}/readyz");
        let (_, body) = inspect::fetch(base, "/readyz")?;
        let ready = inspect::parse_ready(&url, &body)?;
        let (code, metrics) = inspect::fetch(base, "/metrics")?;
        if code != 200 {
            return Err(inspect::InspectError::Status {
                url: format!("{base}/metrics"),
                code,
            });
        }
        let samples = inspect::parse_exposition(&metrics);
        Ok(inspect::render_status(&ready, &samples))
    };
    match read() {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `mqbridge spool`: the spools from the running bridge, else from the store.
fn spool(
    out: &Report,
    path: &std::path::Path,
    url: Option<String>,
    json: bool,
    drop: Option<&str>,
) -> ExitCode {
    let Some((plan, _)) = load(out, path) else {
        return ExitCode::FAILURE;
    };
    if let Some(pipe) = drop {
        return spool_drop(&plan, pipe);
    }
    let base = inspect::base_url(&url.unwrap_or_else(|| plan.metrics.listen.to_string()));
    let report = match read_spools(&plan, &base) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.spools).unwrap_or_default()
        );
    } else {
        print!("{}", render_spools(&report));
    }
    ExitCode::SUCCESS
}

/// The store is locked by a running bridge: ask it; else open the store.
fn read_spools(plan: &config::Plan, base: &str) -> Result<mqbridge::spool::SpoolReport, String> {
    if !plan.storage.dir.exists() {
        return Ok(mqbridge::spool::SpoolReport::default());
    }
    match Store::open(&plan.storage) {
        Ok(store) => mqbridge::spool::inspect(&store).map_err(|e| e.to_string()),
        Err(StoreError::Locked { .. }) => {
            let (code, body) = inspect::fetch(base, "/spool.json").map_err(|e| {
                format!("the store is in use (a bridge runs?) and its endpoint answers not: {e}")
            })?;
            if code != 200 {
                return Err(format!("{base}/spool.json: HTTP {code}"));
            }
            serde_json::from_str(&body).map_err(|e| format!("{base}/spool.json: {e}"))
        }
        Err(e) => Err(e.to_string()),
    }
}

fn render_spools(r: &mqbridge::spool::SpoolReport) -> String {
    let mut text = format!(
        "{:<24} {:>10} {:>12} {:>6} {:>10}  STATE\n",
        "PIPE", "MESSAGES", "BYTES", "FULL", "OLDEST"
    );
    for s in &r.spools {
        text.push_str(&format!(
            "{:<24} {:>10} {:>12} {:>5.0}% {:>9.1}s  {}\n",
            s.pipe,
            s.depth,
            s.bytes,
            s.fill() * 100.0,
            s.oldest_age_seconds,
            if s.orphaned { "orphaned" } else { "running" }
        ));
    }
    text.push_str(&format!(
        "store: {} bytes on disk, {} bytes free\n",
        r.store.used_bytes, r.store.free_bytes
    ));
    text
}

/// `mqbridge spool --drop PIPE`: deletes an orphaned spool.
fn spool_drop(plan: &config::Plan, pipe: &str) -> ExitCode {
    if plan.pipes.contains_key(pipe) {
        eprintln!(
            "error: pipe {pipe} is in the config; remove it first (its spool holds messages the bridge owes the destination)"
        );
        return ExitCode::FAILURE;
    }
    let store = match Store::open(&plan.storage) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e} (stop the bridge first)");
            return ExitCode::FAILURE;
        }
    };
    match mqbridge::spool::drop_spool(&store, pipe) {
        Ok(true) => {
            println!("spool of {pipe} deleted");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            eprintln!("error: no spool for {pipe}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `mqbridge man`: the roff man page on stdout.
fn man() -> ExitCode {
    let man = clap_mangen::Man::new(Cli::command());
    match man.render(&mut std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A command line clap refused (or `--help`/`--version`): as clap prints it,
/// or, when JSON output was asked for (`--log-format json` or
/// `MQBRIDGE_LOG_FORMAT=json`), as one JSON error object, so scripts that
/// parse JSON never meet a plain-text line. Exit code as clap's (2 for usage).
fn command_line_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let informational = matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if informational
        || !json_requested(
            std::env::args_os().skip(1),
            std::env::var_os("MQBRIDGE_LOG_FORMAT"),
        )
    {
        let _ = e.print();
    } else {
        let text = e.render().to_string();
        let first = text
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ")
            .to_owned();
        Report::new(LogFormat::Json).failure("command line invalid", &first);
    }
    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
}

/// Whether the raw arguments or the environment ask for JSON output (read
/// by hand because clap refused the command line).
fn json_requested(
    args: impl Iterator<Item = std::ffi::OsString>,
    env: Option<std::ffi::OsString>,
) -> bool {
    let mut json = env.is_some_and(|v| v.eq_ignore_ascii_case("json"));
    let mut next_is_format = false;
    for arg in args {
        let arg = arg.to_string_lossy();
        if next_is_format {
            json = arg.eq_ignore_ascii_case("json");
            next_is_format = false;
        } else if arg == "--log-format" {
            next_is_format = true;
        } else if let Some(v) = arg.strip_prefix("--log-format=") {
            json = v.eq_ignore_ascii_case("json");
        }
    }
    json
}

/// Where the command's own messages on stderr go (config errors and
/// warnings, a failed start): plain lines, or with `--log-format json` one
/// JSON object per line like every log line. They are the command's output,
/// not diagnostics, so `--log-level` never hides them.
enum Report {
    /// `file:line:col: message` lines.
    Text,
    /// JSON objects through an unfiltered JSON subscriber.
    Json(tracing::Dispatch),
}

impl Report {
    fn new(format: LogFormat) -> Report {
        match format {
            LogFormat::Text => Report::Text,
            LogFormat::Json => Report::Json(jsonlog::unfiltered()),
        }
    }

    /// An error line (text as given).
    fn error(&self, text: &str) {
        match self {
            Report::Text => eprintln!("{text}"),
            Report::Json(d) => tracing::dispatcher::with_default(d, || tracing::error!("{text}")),
        }
    }

    /// A failure: `error: <e>` as text; as JSON, `what` with the field `error`.
    fn failure(&self, what: &str, e: &dyn std::fmt::Display) {
        match self {
            Report::Text => eprintln!("error: {e}"),
            Report::Json(d) => {
                tracing::dispatcher::with_default(d, || tracing::error!(error = %e, "{what}"))
            }
        }
    }

    /// A warning line (text as given).
    fn warn(&self, text: &str) {
        match self {
            Report::Text => eprintln!("{text}"),
            Report::Json(d) => tracing::dispatcher::with_default(d, || tracing::warn!("{text}")),
        }
    }

    /// Every config error, then how many there were.
    fn config_errors(&self, path: &std::path::Path, errors: &config::ConfigErrors) {
        let n = errors.errors.len();
        match self {
            Report::Text => {
                eprintln!("{errors}");
                eprintln!(
                    "{n} error{} in {}",
                    if n == 1 { "" } else { "s" },
                    path.display()
                );
            }
            Report::Json(d) => tracing::dispatcher::with_default(d, || {
                for e in &errors.errors {
                    diagnostic(tracing::Level::ERROR, "configuration error", e);
                }
                tracing::error!(file = %path.display(), errors = n, "configuration invalid");
            }),
        }
    }

    /// Config warnings (`warning: file:line:col: message`).
    fn config_warnings(&self, warnings: &[config::Warning]) {
        match self {
            Report::Text => {
                for w in warnings {
                    eprintln!("warning: {w}");
                }
            }
            Report::Json(d) => tracing::dispatcher::with_default(d, || {
                for w in warnings {
                    diagnostic(tracing::Level::WARN, "configuration warning", w);
                }
            }),
        }
    }
}

/// One located config diagnostic as a log event: `file`, `line`, `column`,
/// the `broker` or `pipe` it belongs to, and the text as `error`.
fn diagnostic(level: tracing::Level, message: &str, d: &config::Diagnostic) {
    use config::Scope;
    macro_rules! emit {
        ($lvl:expr, $($scope:tt)*) => {
            tracing::event!($lvl, file = %d.file, line = d.line, column = d.column, $($scope)* error = %d.message, "{message}")
        };
    }
    match (level, &d.scope) {
        (tracing::Level::ERROR, Scope::Top) => emit!(tracing::Level::ERROR,),
        (tracing::Level::ERROR, Scope::Broker(b)) => emit!(tracing::Level::ERROR, broker = %b,),
        (tracing::Level::ERROR, Scope::Pipe(p)) => emit!(tracing::Level::ERROR, pipe = %p,),
        (_, Scope::Top) => emit!(tracing::Level::WARN,),
        (_, Scope::Broker(b)) => emit!(tracing::Level::WARN, broker = %b,),
        (_, Scope::Pipe(p)) => emit!(tracing::Level::WARN, pipe = %p,),
    }
}

/// Loads the config, reporting every error on failure.
fn load(out: &Report, path: &std::path::Path) -> Option<(config::Plan, Vec<config::Warning>)> {
    match config::load(path) {
        Ok(v) => Some(v),
        Err(errors) => {
            out.config_errors(path, &errors);
            None
        }
    }
}

fn validate(out: &Report, path: &std::path::Path, check_endpoints: bool) -> ExitCode {
    let Some((plan, warnings)) = load(out, path) else {
        return ExitCode::FAILURE;
    };
    print!("{}", config::summary::describe(&plan));
    out.config_warnings(&warnings);
    println!("{}: ok", path.display());
    if check_endpoints {
        return check(out, &plan);
    }
    ExitCode::SUCCESS
}

/// `validate --check-endpoints`: ok lines on stdout, warnings and errors on stderr.
fn check(out: &Report, plan: &config::Plan) -> ExitCode {
    let runtime = match build_runtime(1) {
        Ok(rt) => rt,
        Err(e) => {
            out.error(&format!("cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(mqbridge::run::check::check_plan(plan));
    for line in &report.lines {
        match line.level {
            check::Level::Ok => println!("{line}"),
            check::Level::Warning => out.warn(&line.to_string()),
            check::Level::Error => out.error(&line.to_string()),
        }
    }
    for broker in &report.unreachable_required {
        out.error(&format!(
            "error: required broker `{broker}` has no reachable endpoint"
        ));
    }
    if report.passed() {
        println!("endpoints: ok");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A current-thread runtime for 1 worker (or fewer), else a multi-thread one.
fn build_runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if worker_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads)
            .enable_all()
            .build()
    }
}

/// `mqbridge route`: a config whose only errors are loops is still traced
/// (the loop is marked in the trace), then exits 1.
fn route(out: &Report, path: &std::path::Path, from: &str, topic: &str) -> ExitCode {
    let looped = match config::load_with_loops(path) {
        Ok(l) => l,
        Err(errors) => {
            out.config_errors(path, &errors);
            return ExitCode::FAILURE;
        }
    };
    let config::LoopedPlan {
        plan,
        warnings,
        loops,
    } = looped;
    out.config_warnings(&warnings);
    if !loops.is_empty() {
        out.config_errors(
            path,
            &config::ConfigErrors {
                errors: loops.clone(),
            },
        );
    }
    if !plan.brokers.contains_key(from) {
        let known: Vec<&str> = plan.brokers.keys().map(String::as_str).collect();
        out.error(&format!(
            "unknown broker \"{from}\" (known: {})",
            known.join(", ")
        ));
        return ExitCode::FAILURE;
    }
    if let Err(e) = mqbridge::topic::validate_topic_name(topic) {
        out.error(&format!("`{topic}` is not a valid topic name: it {e}"));
        return ExitCode::FAILURE;
    }
    let mut budget = 10_000;
    let trace = config::route::trace(&plan, from, topic, &|_| true, &mut budget);
    print!("{}", config::route::format_trace(&trace));
    if loops.is_empty() {
        ExitCode::SUCCESS
    } else {
        out.error(&format!(
            "traced anyway: `run` and `validate` refuse {} for its loop",
            path.display()
        ));
        ExitCode::FAILURE
    }
}

/// `mqbridge run`: load, start, wait for SIGINT/SIGTERM, drain, exit 0.
fn run(out: &Report, path: &std::path::Path, worker_threads: usize, watch: bool) -> ExitCode {
    // The config is checked completely before any socket is opened.
    let Some((plan, warnings)) = load(out, path) else {
        return ExitCode::FAILURE;
    };
    out.config_warnings(&warnings);
    let runtime = match build_runtime(worker_threads) {
        Ok(rt) => rt,
        Err(e) => {
            out.error(&format!("cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_async(plan, path, watch)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            out.failure("the bridge could not start", &format_args!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

async fn run_async(plan: config::Plan, path: &std::path::Path, watch: bool) -> anyhow::Result<()> {
    use anyhow::Context;
    // Handlers first: a signal during start-up must still drain (or, for
    // SIGHUP, reload), not kill.
    let mut signals = mqbridge::shutdown::Signals::new();
    let mut hup = hangup();
    let shutdown = mqbridge::shutdown::Shutdown::new();
    let watch = watch.then(|| FileWatch::new(filewatch::file_stamp(path)));
    let mut handle = mqbridge::run(plan, shutdown.token().clone())
        .await
        .context("starting the bridge")?;
    wait_for_shutdown(path, &mut handle, &mut signals, &mut hup, watch).await;
    tracing::info!("signal received, shutting down");
    shutdown.trigger();
    // A second signal while draining stops at once (unacked messages are redelivered).
    tokio::select! {
        report = handle.finished() => {
            if !report.busy_pipes.is_empty() {
                tracing::warn!(pipes = %jsonlog::list(&report.busy_pipes), "stopped with pipes still busy");
            }
        }
        () = signals.recv() => {
            tracing::warn!("second signal: exiting without waiting for the drain");
        }
    }
    Ok(())
}

/// Waits for SIGINT/SIGTERM; each SIGHUP meanwhile (and, with `--watch`,
/// each settled change of the file) re-reads the config file (an invalid one
/// is logged and ignored).
async fn wait_for_shutdown(
    path: &std::path::Path,
    handle: &mut mqbridge::RunHandle,
    signals: &mut mqbridge::shutdown::Signals,
    hup: &mut Hangup,
    mut watch: Option<FileWatch>,
) {
    let mut tick = tokio::time::interval(filewatch::WATCH_INTERVAL);
    tracing::info!(
        watch = watch.is_some(),
        "waiting for signals: SIGINT/SIGTERM stop, SIGHUP reloads"
    );
    loop {
        // Cancel safety: `Signals::recv`, `Signal::recv` and
        // `Interval::tick` lose nothing when another branch wins.
        tokio::select! {
            () = signals.recv() => return,
            Some(()) = recv_hup(hup) => {
                tracing::info!(config = %path.display(), "SIGHUP: reloading the configuration");
                let _ = handle.reload_file(path).await;
            }
            _ = tick.tick(), if watch.is_some() => {
                if let Some(w) = watch.as_mut()
                    && w.poll(filewatch::file_stamp(path))
                {
                    tracing::info!(config = %path.display(), "config file changed: reloading");
                    let _ = handle.reload_file(path).await;
                }
            }
        }
    }
}

/// The SIGHUP stream (`None` when it cannot be set up, or off Unix).
#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
/// No SIGHUP off Unix.
#[cfg(not(unix))]
type Hangup = Option<()>;

/// Registers the SIGHUP handler (inside the runtime).
#[cfg(unix)]
fn hangup() -> Hangup {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for SIGHUP; reload by signal disabled");
            None
        }
    }
}

/// No SIGHUP off Unix.
#[cfg(not(unix))]
fn hangup() -> Hangup {
    None
}

/// The next SIGHUP; never resolves without a SIGHUP stream.
#[cfg(unix)]
async fn recv_hup(hup: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match hup {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// No SIGHUP off Unix.
#[cfg(not(unix))]
async fn recv_hup(_: &mut Option<()>) -> Option<()> {
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> impl Iterator<Item = std::ffi::OsString> {
        a.iter()
            .map(std::ffi::OsString::from)
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn json_is_requested_by_flag_or_environment() {
        assert!(json_requested(
            args(&["--log-format", "json", "run", "--bogus"]),
            None
        ));
        assert!(json_requested(args(&["run", "--log-format=JSON"]), None));
        assert!(json_requested(args(&["run"]), Some("json".into())));
        assert!(!json_requested(
            args(&["--log-format", "json", "--log-format", "text"]),
            None
        ));
        assert!(!json_requested(args(&["run", "--bogus"]), None));
    }
}
