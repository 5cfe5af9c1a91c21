//! `pool-obs-agent`: attaches to a running worker pool by PID and serves its per-model metrics.
//!
//! The data flows: [`manifest`] + [`attach::symbols`] → [`attach::plan`] → [`attach`] (kernel
//! programs) → [`ring`] → [`decode`] → [`aggregate`] → [`publish`] → [`export`] (`/metrics`,
//! `/health`, `/requests/{id}`); [`agent`] runs it. This file parses the command line, runs
//! the command, and maps its error to an exit code.

mod agent;
mod aggregate;
mod anomaly;
mod attach;
mod cli;
mod clock;
mod decode;
#[cfg(test)]
mod docs;
mod error;
mod export;
mod follow;
mod inspect;
mod kernel;
mod manifest;
mod memory;
mod outcome;
mod privileges;
mod profile;
mod publish;
mod ring;
mod target;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::EnvFilter;

use crate::{
    aggregate::REQUEST_LOG,
    attach::symbols::SymbolError,
    cli::{Cli, Command, LogFormat},
    error::{Class, Refusal},
    profile::{Format, Selection},
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.run.log_format);
    if cli.command.is_some() {
        // `symbols … | head`: end quietly when the reader goes, as command-line tools do, rather
        // than panic on the closed pipe. (The agent itself keeps ignoring SIGPIPE: a scraper
        // that hangs up must not kill it.)
        // SAFETY: restoring a signal's default disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match &cli.command {
        Some(Command::Symbols { target, debug, pattern }) => {
            inspect::symbols(target, debug, pattern.as_deref())
        }
        Some(Command::Check { manifest, target, debug }) => inspect::check(manifest, target, debug),
        Some(Command::Init { target, debug, functions }) => inspect::init(target, debug, functions),
        Some(Command::Kernel) => kernel::check(),
        Some(Command::Profile { pid, seconds, model, output, agent }) => {
            let selection = Selection {
                seconds: *seconds,
                model: model.clone(),
                pid: *pid,
                format: Format::of_path(output),
            };
            profile::fetch::fetch(*agent, &selection, output).map_err(anyhow::Error::from)
        }
        None => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the async runtime")
            .and_then(|runtime| runtime.block_on(agent::run(cli.run))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pool-obs-agent: error: {error:#}");
            ExitCode::from(exit_code(&error))
        }
    }
}

/// The exit code for an error: that of the first classified error in its chain.
fn exit_code(error: &anyhow::Error) -> u8 {
    let class = error.chain().find_map(|cause| {
        (cause.downcast_ref::<Refusal>().map(|refusal| refusal.class))
            .or_else(|| cause.downcast_ref::<manifest::ManifestError>().map(|manifest| manifest.class))
            .or_else(|| cause.downcast_ref::<SymbolError>().map(SymbolError::class))
    });
    class.unwrap_or(Class::Other) as u8
}

/// `RUST_LOG` filters as usual (default `info`), except that failed, timed-out and slow
/// requests are logged at info even when the rest is filtered more strictly.
fn init_logging(format: LogFormat) {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let user_chose_request_level = std::env::var("RUST_LOG").is_ok_and(|spec| spec.contains(REQUEST_LOG));
    if filter.max_level_hint().is_some_and(|level| level < LevelFilter::INFO) && !user_chose_request_level {
        filter = filter.add_directive(format!("{REQUEST_LOG}=info").parse().expect("a valid directive"));
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
