//! The integration suite: one binary, driving the real `seedq` binary (and simulator).

mod archive;
mod bulk;
mod cli;
mod demo;
mod helpers;
mod identity;
mod ops;
mod worker;
