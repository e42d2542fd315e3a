//! `minerva keygen`: a fresh AES-256 key for encryption at rest, written to a file only
//! its owner may read (or printed). With `MINERVA_KEY_FILE` naming that file (or
//! `MINERVA_KEY` holding the key), Minerva seals what it writes that holds user data:
//! fine-tuned adapters, training checkpoints, the embedding cache's file.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use minerva_seal::{KEY_FILE_ENV, Key};

#[derive(clap::Args)]
pub struct Args {
    /// The file to write (mode 0600); without it the key is printed.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace an existing file (what it sealed can no longer be opened).
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> Result<()> {
    let key = Key::generate();
    let Some(out) = args.out else {
        println!("{}", key.encode());
        return Ok(());
    };
    if out.exists() && !args.force {
        bail!(
            "{} exists; files sealed with it would be lost with it (--force replaces it)",
            out.display()
        );
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&out)
        .with_context(|| format!("creating {}", out.display()))?;
    writeln!(file, "{}", key.encode()).with_context(|| format!("writing {}", out.display()))?;
    file.sync_all()?;
    eprintln!(
        "wrote a new key to {}; keep a copy: what it seals cannot be read without it. Use it with\n  export {KEY_FILE_ENV}={}",
        out.display(),
        out.display()
    );
    Ok(())
}
