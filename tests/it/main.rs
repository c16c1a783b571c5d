//! The integration suite: one binary, driving the real `seedq` binary (and simulator).

mod archive;
mod bench_fleet;
mod budget;
mod bulk;
mod cli;
mod demo;
mod disk;
mod fleet;
mod flex;
mod golden;
mod helpers;
mod hostile;
mod identity;
mod ops;
mod pause;
mod storage;
mod validation;
mod worker;
