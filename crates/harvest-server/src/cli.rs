//! The `harvest` command line: `serve`, `demo`, `migrate`, `token`, `config`,
//! `reconcile`, `contest replay`.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::auth::{Authenticator, Role, parse_ttl};
use crate::config::{Flags, Settings};

/// Harvest: a live-stream shopping backend.
#[derive(Debug, Parser)]
#[command(name = "harvest", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Settings every subcommand accepts; they override file and environment.
#[derive(Debug, Clone, Args, Default)]
pub struct CommonArgs {
    /// Configuration file (default: ./harvest.toml when it exists).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Listen address, e.g. 127.0.0.1:8080.
    #[arg(long, global = true, value_name = "ADDR")]
    pub listen: Option<String>,
    /// sqlite://PATH or postgres://...
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// redis://HOST:PORT (comma-separated for Redis Cluster).
    #[arg(long, global = true, value_name = "URL")]
    pub redis_url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service.
    Serve(#[command(flatten)] CommonArgs),
    /// Run the service with a seeded, living scenario: farm products, two live rooms,
    /// simulated viewers chatting and buying, flash sales, a PK match and a contest;
    /// prints the console URLs and ready-made tokens.
    Demo(#[command(flatten)] CommonArgs),
    /// Apply SQL migrations and exit.
    Migrate(#[command(flatten)] CommonArgs),
    /// Print a bearer token (and a newline) signed with the configured secret.
    Token(TokenArgs),
    /// Print the effective configuration, secrets redacted.
    Config(#[command(flatten)] CommonArgs),
    /// Compare the stock engine with the SQL record; print each drift; exit 0 when
    /// nothing drifts.
    Reconcile(ReconcileArgs),
    /// Contest tools.
    #[command(subcommand)]
    Contest(ContestCommand),
}

#[derive(Debug, Subcommand)]
pub enum ContestCommand {
    /// Recompute a settled contest's results from the stored event log; print
    /// `identical` (exit 0) or every difference (exit 1).
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The contest id.
    pub id: String,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `harvest contest replay` found differences (exit status 1).
#[derive(Debug, thiserror::Error)]
#[error("the replayed results differ from the stored ones in {0} places")]
pub struct ReplayDiffers(pub usize);

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Only this flash sale.
    #[arg(long, value_name = "ID")]
    pub sale: Option<String>,
    /// Rebuild each drifting sale in the stock engine from the SQL record.
    #[arg(long)]
    pub fix: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// User id (the token's `sub`).
    #[arg(long)]
    pub sub: String,
    /// Role: viewer, streamer, organizer or admin; repeat for several.
    #[arg(long = "role", value_parser = parse_role)]
    pub roles: Vec<Role>,
    /// Display name.
    #[arg(long)]
    pub name: Option<String>,
    /// Lifetime, e.g. 90s, 15m, 24h, 7d.
    #[arg(long, default_value = "24h", value_parser = parse_ttl)]
    pub ttl: std::time::Duration,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `harvest reconcile` found drifts it did not repair (exit status 1).
#[derive(Debug, thiserror::Error)]
#[error("{0} drifts found; run with --fix to rebuild the engine from SQL")]
pub struct ReconcileDrift(pub usize);

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s)
        .ok_or_else(|| format!("unknown role {s:?}: use viewer, streamer, organizer or admin"))
}

impl CommonArgs {
    fn flags(&self) -> Flags {
        Flags {
            config: self.config.clone(),
            listen: self.listen.clone(),
            database_url: self.database_url.clone(),
            redis_url: self.redis_url.clone(),
        }
    }

    fn settings(&self) -> anyhow::Result<Settings> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Ok(Settings::resolve(&env, &self.flags())?)
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(common) => {
            let settings = common.settings()?;
            crate::telemetry::init(settings.log_format);
            let addr = settings.listen_addr()?;
            let state = crate::build_state(settings).await?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            tracing::info!(
                addr = %listener.local_addr()?,
                database = state.store.backend().as_str(),
                redis = state.redis.is_some(),
                node_id = %state.settings.node_id,
                "harvest is serving"
            );
            crate::serve(listener, state, crate::app::shutdown_signal()).await
        }
        Command::Demo(common) => {
            let settings = common.settings()?;
            crate::telemetry::init(settings.log_format);
            crate::demo::run(settings).await
        }
        Command::Migrate(common) => {
            let settings = common.settings()?;
            crate::telemetry::init(settings.log_format);
            let store = harvest_store::Store::connect(
                settings.database_url.expose(),
                harvest_store::StoreOptions::default(),
            )
            .await?;
            store.migrate().await?;
            store.close().await;
            eprintln!("migrations applied to {:?}", settings.database_url);
            Ok(())
        }
        Command::Token(args) => {
            let settings = args.common.settings()?;
            crate::telemetry::init(settings.log_format);
            let secret = settings.jwt_secret()?;
            let auth =
                Authenticator::new(secret.expose().as_bytes()).context("invalid jwt_secret")?;
            let roles = if args.roles.is_empty() {
                vec![Role::Viewer]
            } else {
                args.roles
            };
            println!(
                "{}",
                auth.mint(&args.sub, args.name.as_deref(), &roles, args.ttl)
            );
            Ok(())
        }
        Command::Config(common) => {
            let settings = common.settings()?;
            print!("{}", settings.to_redacted_toml());
            Ok(())
        }
        Command::Reconcile(args) => {
            let settings = args.common.settings()?;
            crate::telemetry::init(settings.log_format);
            let report = crate::reconcile::run(&settings, args.sale.as_deref(), args.fix).await?;
            for drift in &report.drifts {
                println!("drift: {drift}");
            }
            for sale in &report.fixed {
                println!("fixed: sale {sale} rebuilt from SQL");
            }
            if settings.redis_url.is_none() {
                println!(
                    "note: the memory stock engine lives in the serving process; only the SQL record was checked"
                );
            }
            println!(
                "{} sales checked, {} drifts, {} fixed",
                report.sales_checked,
                report.drifts.len(),
                report.fixed.len()
            );
            if report.is_clean() {
                Ok(())
            } else {
                Err(ReconcileDrift(report.drifts.len()).into())
            }
        }
        Command::Contest(ContestCommand::Replay(args)) => {
            let settings = args.common.settings()?;
            crate::telemetry::init(settings.log_format);
            let store = harvest_store::Store::connect(
                settings.database_url.expose(),
                harvest_store::StoreOptions::default(),
            )
            .await?;
            store.migrate().await?;
            let replay = crate::contests::replay(&store, &args.id).await;
            store.close().await;
            let replay = replay?;
            if replay.differences.is_empty() {
                println!("identical");
                eprintln!(
                    "contest {}: {} events replayed; results settled at {} reproduced exactly",
                    replay.contest_id,
                    replay.events,
                    replay.settled_at.to_rfc3339()
                );
                Ok(())
            } else {
                for d in &replay.differences {
                    println!("{d}");
                }
                Err(ReplayDiffers(replay.differences.len()).into())
            }
        }
    }
}
