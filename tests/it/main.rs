//! The integration suite: one binary, driving the real `seedq` binary (and simulator).

mod bulk;
mod cli;
mod helpers;
mod worker;
