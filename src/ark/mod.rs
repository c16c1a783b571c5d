//! The Ark client.

pub mod wire;
