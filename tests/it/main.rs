//! The integration suite: one binary, driving the real `seedq` binary (and simulator).

mod archive;
mod budget;
mod bulk;
mod cli;
mod demo;
mod helpers;
mod ops;
mod validation;
mod worker;
