//! The integration suite: one binary, driving the real `seedq` binary (and simulator).

mod api;
mod archive;
mod bench_fleet;
mod bench_fleet_flex;
mod budget;
mod bulk;
mod catalogue;
mod cli;
mod clients;
mod demo;
mod disk;
mod doors;
mod fleet;
mod flex;
mod golden;
mod helpers;
mod hostile;
mod identity;
mod limits;
mod ops;
mod outage;
mod pause;
mod storage;
mod validation;
mod worker;
