//! One module per subcommand.

pub mod bench;
pub mod embed;
pub mod generate;
pub mod models;
pub mod perplexity;
pub mod tokenize;
