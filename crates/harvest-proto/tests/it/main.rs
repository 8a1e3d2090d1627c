//! Integration tests of the wire protocol, through the public API only.

mod client;
mod events;
mod samples;
mod schema;
