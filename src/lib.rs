//! tinylm: train a small Llama-style language model from raw text to weights, reproducibly.
//!
//! One TOML config fully determines a run; every input and output is recorded by SHA-256 in
//! the run's manifest; a rerun or a resume reproduces the same weights bit for bit, and
//! `tinylm verify` proves it.

pub mod alloc;
pub mod checkpoint;
pub mod config;
pub mod corpus;
pub mod data;
pub mod dist;
pub mod engine;
pub mod error;
pub mod eval;
pub mod gguf;
pub mod init;
pub mod kernels;
pub mod manifest;
pub mod model;
pub mod modeldir;
pub mod optim;
pub mod progress;
pub mod release;
pub mod rng;
pub mod run;
pub mod sample;
pub mod sources;
pub mod threads;
pub mod tokenizer;
pub mod tokens;
pub mod train;
pub mod util;
pub mod verify;

pub use error::{Error, Result};
