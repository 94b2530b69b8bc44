use std::process::ExitCode;

use clap::Parser;
use spansink::cmd;
use spansink::cmd::{Cli, Command};
use spansink::config::{LogArgs, LogFormat};
use spansink::error::{Class, Error};

/// See Cargo.toml: decoding is allocation-heavy.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc asks the kernel for transparent huge pages on its arenas, and
/// where the kernel grants them on request (THP `madvise`, a common default)
/// a 2 MiB page is resident whole once any byte of it is touched, and stays
/// so after mimalloc gives most of it back. Under a 10M-span backlog that
/// was a fifth of peak RSS, outside anything the memory budget can count
/// (BENCHMARKS.md, "A tenth machine"). The setting is the process's, so it
/// also covers librdkafka's allocations and holds on a THP `always` kernel.
fn keep_pages_small() {
    // Refused only by kernels older than 3.15: memory is then as it was
    // before, which is no reason not to start.
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!("spansink: cannot turn transparent huge pages off: {e}");
    }
}

fn main() -> ExitCode {
    keep_pages_small();
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Demo(_) => "warn",
        _ => "info",
    };
    if let Err(e) = init_tracing(&cli.log, default_filter) {
        eprintln!("spansink: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("spansink: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        // Asked to stop while waiting (for PostgreSQL, a topic): a clean exit.
        Ok(()) | Err(Error::Shutdown) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(
                error = spansink::error::chain(&e),
                class = e.class().as_str(),
                "spansink stopped"
            );
            eprintln!("spansink: {}", spansink::error::chain(&e));
            // 2 for a configuration the operator must fix; 1 for anything else.
            match e {
                Error::Config { .. } => ExitCode::from(2),
                Error::Internal(_) => ExitCode::FAILURE,
                _ if e.class() == Class::Fatal => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

async fn dispatch(command: Command) -> spansink::error::Result<()> {
    match command {
        Command::Run(args) => {
            let metrics = spansink::metric::install()?;
            let shutdown =
                spansink::shutdown::install().map_err(|e| Error::io("signal handlers", e))?;
            cmd::run::run(&args, metrics, shutdown).await
        }
        Command::Migrate(args) => cmd::migrate::run(&args).await,
        Command::Loadgen(args) => cmd::loadgen::run(&args)
            .await
            .map(|report| println!("{report}")),
        Command::Replay(args) => cmd::replay::run(&args)
            .await
            .map(|report| println!("{report}")),
        Command::Spool(args) => cmd::spool::run(&args).await,
        Command::Tenant(args) => cmd::tenant::run(&args)
            .await
            .map(|report| println!("{report}")),
        Command::Retention(args) => cmd::retention::run(&args).await,
        Command::Healthcheck(args) => cmd::healthcheck::run(&args),
        Command::Bench(args) => cmd::bench::run(&args)
            .await
            .map(|table| println!("{table}")),
        Command::MockBroker(args) => cmd::bench::serve_mock_broker(&args),
        Command::Demo(args) => {
            let metrics = spansink::metric::install()?;
            let shutdown =
                spansink::shutdown::install().map_err(|e| Error::io("signal handlers", e))?;
            cmd::demo::run(&args, metrics, shutdown).await
        }
    }
}

fn init_tracing(log: &LogArgs, default_filter: &str) -> Result<(), String> {
    let filter =
        tracing_subscriber::EnvFilter::try_new(log.log.as_deref().unwrap_or(default_filter))
            .map_err(|e| format!("invalid configuration: --log: {e}"))?;
    // Colours only on a terminal: a log file or a collector gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let result = match log.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    result.map_err(|e| e.to_string())
}
