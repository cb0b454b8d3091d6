//! The `portcullis` binary: CLI → config::load → plugins → app::run.
#![forbid(unsafe_code)]

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use portcullis::config::{AccessLogFile, AccessLogFormat};
use portcullis::proxy::access_log::writer as access_log;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "portcullis", version, about = "An API gateway for AI systems")]
struct Cli {
    /// Config file (same as `run --config FILE`).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Log level or filter (`info`, `warn`, `portcullis=debug`); RUST_LOG overrides it.
    /// `warn` turns the access log off.
    #[arg(long, default_value = "info", global = true)]
    log_level: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with a config file.
    Run,
    /// Check a config file: exit 0, or print the first error (file:line:column: key) and exit 1.
    Validate { file: PathBuf },
    /// Run a self-contained demo: demo model services and a gateway in front of them.
    Demo {
        /// Where the demo gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Where its admin API and dashboard listen.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin_listen: String,
    },
    /// Plugin tools.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Create a working auth plugin project (with the WIT and a build.sh) in DIR/NAME.
    New {
        /// The plugin's language.
        #[arg(long, value_enum)]
        lang: portcullis::scaffold::Lang,
        /// The plugin's name (a-z, 0-9, `-`).
        name: String,
        /// Where to create it.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The log on stderr, and the access log (`proxy/access_log`) when `serving`: on at the
/// default `info` level (a filter that turns off target `access`, e.g. `--log-level warn`,
/// turns it off), always with `server.access_log`, whose file then gets the lines instead
/// of stderr. The returned guard writes out the lines not yet written when dropped.
fn init_logging(
    format: LogFormat,
    level: &str,
    access_file: Option<&AccessLogFile>,
    serving: bool,
) -> anyhow::Result<Option<access_log::Flush>> {
    use std::io::IsTerminal as _;
    use tracing_subscriber::{fmt, prelude::*, EnvFilter, Layer};
    let out = match access_file {
        Some(file) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&file.path)
                .with_context(|| {
                    format!(
                        "cannot open the access log `{}` (server.access_log.path)",
                        file.path.display()
                    )
                })?,
        ),
        None => None,
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let stderr = fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let stderr = match format {
        LogFormat::Text => stderr.boxed(),
        LogFormat::Json => stderr.json().flatten_event(true).boxed(),
    };
    tracing_subscriber::registry()
        .with(stderr.with_filter(filter))
        .init();
    if !serving {
        return Ok(None);
    }
    let (out, format) = match (out, access_file) {
        (Some(f), Some(file)) => (access_log::Output::File(f), file.format),
        // Asked once here: the request path reads the answer from a static.
        _ if tracing::enabled!(target: "access", tracing::Level::INFO) => (
            access_log::Output::Stderr,
            match format {
                LogFormat::Text => AccessLogFormat::Text,
                LogFormat::Json => AccessLogFormat::Json,
            },
        ),
        _ => return Ok(None),
    };
    let flush = access_log::start(out, format).context("cannot start the access-log writer")?;
    Ok(Some(flush))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` loads its config before logging starts: the config may move the access log.
    let loaded = match (&cli.command, &cli.config) {
        (Some(Command::Run) | None, Some(path)) => Some(portcullis::config::load(path)),
        _ => None,
    };
    let access_file = match &loaded {
        Some(Ok(c)) => c.server.access_log.as_ref(),
        _ => None,
    };
    let serving = matches!(
        cli.command,
        Some(Command::Run | Command::Demo { .. }) | None
    );
    let _flush_on_exit = match init_logging(cli.log_format, &cli.log_level, access_file, serving) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let rt = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("start the tokio runtime")
    };
    let result = match cli.command {
        Some(Command::Validate { file }) => match portcullis::config::load(&file) {
            // Plugins are compiled and configured too: a plugin that rejects its
            // route's config fails validation with its own message.
            Ok(c) => portcullis::plugin::PluginSet::for_config(&c).map(|plugins| {
                let auth = plugins.authenticated();
                for w in portcullis::router::bare_prefix::warnings(&c, &auth) {
                    eprintln!("warning: {w}");
                }
                println!(
                    "{}: ok ({} routes, {} upstreams, {} plugins)",
                    file.display(),
                    c.routes.len(),
                    c.upstreams.len(),
                    c.plugins.len()
                );
            }),
            Err(e) => Err(anyhow::anyhow!("{e}")),
        },
        Some(Command::Plugin {
            command: PluginCommand::New { lang, name, dir },
        }) => portcullis::scaffold::new_plugin(lang, &name, &dir).map(|root| {
            println!(
                "created {}; build it with `bash {}/build.sh`",
                root.display(),
                root.display()
            );
        }),
        Some(Command::Demo {
            listen,
            admin_listen,
        }) => rt().block_on(portcullis::demo::run(
            &listen,
            &admin_listen,
            portcullis::server::shutdown_signal(),
        )),
        Some(Command::Run) | None => match loaded {
            None => Err(anyhow::anyhow!(
                "no config file given: use `portcullis run --config FILE` (or `portcullis demo`)"
            )),
            Some(loaded) => match loaded {
                Err(e) => Err(anyhow::anyhow!("{e}")),
                Ok(config) => {
                    portcullis::plugin::PluginSet::for_config(&config).and_then(|plugins| {
                        rt().block_on(portcullis::app::run(
                            config,
                            plugins,
                            portcullis::server::shutdown_signal(),
                        ))
                    })
                }
            },
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
