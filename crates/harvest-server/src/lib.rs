//! The Harvest server: the axum router, authentication, configuration, wiring and
//! shutdown order, and the `harvest` command line.
//!
//! This is the only crate that knows every other one. [`app::build_state`] opens the
//! components a configuration names, [`app::router`] builds the HTTP surface with its
//! middleware (metrics, tracing, deadline and JSON errors, panic catching, body
//! limit), and [`app::serve`] runs it until a shutdown signal, then stops in order:
//! readiness off, listener closed, in-flight requests drained, connections closed.

pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod console;
pub mod contests;
pub mod demo;
pub mod error;
pub mod extract;
pub mod flash;
pub mod live;
pub mod metrics;
pub mod openapi;
pub mod payments;
pub mod reconcile;
pub mod redis_check;
pub mod routes;
pub mod state;
pub mod telemetry;

pub use app::{build_state, router, serve};
pub use config::Settings;
pub use state::AppState;
