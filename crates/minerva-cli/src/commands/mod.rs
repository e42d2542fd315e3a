//! One module per subcommand.

pub mod adapter;
pub mod audit;
pub mod bench;
pub mod bench_embed;
pub mod bench_pool;
pub mod bench_registry;
pub mod client;
pub mod create;
pub mod doctor;
pub mod embed;
pub mod finetune;
pub mod generate;
pub mod import;
pub mod keygen;
pub mod models;
pub mod perplexity;
pub mod pull;
pub mod quantize;
pub mod serve;
pub mod settings;
pub mod tokenize;
pub mod top;
pub mod tune;
pub mod verify;
