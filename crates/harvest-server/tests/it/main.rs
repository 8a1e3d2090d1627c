//! Integration tests of the `harvest` server: the real router on port 0 with a fresh
//! store, talked to over HTTP (and, for signals and the CLI, the real binary).

mod authz;
mod cluster;
mod console;
mod contests;
mod deploy;
mod faults;
mod ops;
mod orders;
mod process;
mod products;
mod rooms;
mod sales;
mod tokens;
mod ws;
