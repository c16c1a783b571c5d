//! The integration suite: one binary, driving the real `seedq` binary (and simulator).

mod archive;
mod bulk;
mod cli;
mod demo;
mod flex;
mod helpers;
mod hostile;
mod ops;
mod validation;
mod storage;
mod worker;
