//! Integration tests of harvest-contest, one binary: rules parsing and validation,
//! hand-computed standings in both modes, exclusions and the audit, PK matches, and
//! property tests (incremental = batch, canonical order, the parser never panics).

mod common;
mod matches;
mod props;
mod rules;
mod scoring;
