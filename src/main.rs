//! The `portcullis` binary: CLI → config::load → server::run.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand, ValueEnum};
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

fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    use std::io::IsTerminal as _;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().flatten_event(true).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log_level);
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
            Ok(c) => portcullis::plugin::PluginSet::for_config(&c).map(|_| {
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
        Some(Command::Demo { listen }) => rt().block_on(portcullis::demo::run(
            &listen,
            portcullis::server::shutdown_signal(),
        )),
        Some(Command::Run) | None => match cli.config {
            None => Err(anyhow::anyhow!(
                "no config file given: use `portcullis run --config FILE` (or `portcullis demo`)"
            )),
            Some(path) => match portcullis::config::load(&path) {
                Err(e) => Err(anyhow::anyhow!("{e}")),
                Ok(config) => {
                    portcullis::plugin::PluginSet::for_config(&config).and_then(|plugins| {
                        rt().block_on(portcullis::server::run(
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
