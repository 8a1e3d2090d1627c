//! Integration tests of harvest-stock, one binary: the conformance suite run against
//! every engine, Coalescer behaviour, Redis failure modes, and property tests.

mod coalescer;
mod conformance;
mod harness;
mod model;
mod redis_only;
