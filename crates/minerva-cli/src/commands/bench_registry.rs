//! `minerva bench registry --against postgres://…`: what the registry costs a request
//! and a load, on the embedded SQLite file beside the models and on a shared PostgreSQL
//! database, side by side in one run, with a lived-in history in both.
//!
//! Each database gets the same content: the default models registered, and an access log
//! of `--history` events (what a replica that has served for a while holds). Then, for each,
//! the median and p95 of the calls the server makes:
//! - `check` (before every load: the record, and the file's size and time against it);
//! - `settings` (read at every load);
//! - `record_accesses` of a batch of 8 (the pool's usage writer, off the request path);
//! - `events_since` of the last hour (the usage patterns the preloader reads).

use std::time::Instant;

use anyhow::{Context, Result, bail};
use minerva_store::{AccessKind, ModelId, ModelStore, Registry, is_postgres_url, now_millis};

#[derive(clap::Args)]
pub struct Args {
    /// The PostgreSQL database to compare with the SQLite file (its tables are created; use
    /// an empty database: the benchmark writes to it).
    #[arg(long)]
    against: String,
    /// Calls of each kind per database.
    #[arg(long, default_value_t = 400)]
    calls: usize,
    /// Access events written before measuring.
    #[arg(long, default_value_t = 20_000)]
    history: usize,
}

struct Row {
    call: &'static str,
    sqlite: (f64, f64),
    postgres: (f64, f64),
}

pub fn run(store: &ModelStore, args: Args) -> Result<()> {
    if !is_postgres_url(&args.against) {
        bail!("--against takes a postgres:// URL");
    }
    let ids: Vec<ModelId> = store.list()?.into_iter().map(|m| m.id).collect();
    if ids.is_empty() {
        bail!("no models in {} to register", store.root().display());
    }
    let dir = tempfile::tempdir()?;
    let sqlite = Registry::open(&dir.path().join("registry.sqlite"))?;
    let postgres = Registry::connect(&args.against).context("connecting to --against")?;
    let mut rows = Vec::new();
    let mut results = Vec::new();
    for registry in [&sqlite, &postgres] {
        eprintln!(
            "registering {} models and {} events in {}",
            ids.len(),
            args.history,
            registry.location()
        );
        prepare(registry, store, &ids, args.history)?;
        results.push(measure(registry, store, &ids, args.calls)?);
    }
    for (i, call) in ["check", "settings", "record_accesses (8)", "events_since (1 h)"]
        .into_iter()
        .enumerate()
    {
        rows.push(Row {
            call,
            sqlite: results[0][i],
            postgres: results[1][i],
        });
    }
    println!("| call | SQLite p50 ms | p95 | PostgreSQL p50 ms | p95 | ratio p50 |\n|---|---|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.1}x |",
            row.call,
            row.sqlite.0,
            row.sqlite.1,
            row.postgres.0,
            row.postgres.1,
            row.postgres.0 / row.sqlite.0.max(1e-6)
        );
    }
    println!("({} calls each; PostgreSQL at {})", args.calls, postgres.location());
    Ok(())
}

fn prepare(registry: &Registry, store: &ModelStore, ids: &[ModelId], history: usize) -> Result<()> {
    for id in ids {
        registry.check(store, id)?;
    }
    let now = now_millis();
    let events: Vec<(ModelId, AccessKind, i64)> = (0..history)
        .map(|i| {
            (
                ids[i % ids.len()].clone(),
                AccessKind::Request,
                now - (history - i) as i64 * 100,
            )
        })
        .collect();
    for batch in events.chunks(500) {
        registry.record_accesses(batch)?;
    }
    Ok(())
}

/// (p50, p95) in milliseconds of each call.
fn measure(registry: &Registry, store: &ModelStore, ids: &[ModelId], calls: usize) -> Result<Vec<(f64, f64)>> {
    let mut out = Vec::new();
    let mut time = |f: &mut dyn FnMut(usize) -> Result<()>| -> Result<()> {
        let mut samples = Vec::with_capacity(calls);
        for i in 0..calls {
            let start = Instant::now();
            f(i)?;
            samples.push(start.elapsed().as_secs_f64() * 1e3);
        }
        samples.sort_by(f64::total_cmp);
        out.push((samples[calls / 2], samples[calls * 95 / 100]));
        Ok(())
    };
    time(&mut |i| Ok(registry.check(store, &ids[i % ids.len()]).map(drop)?))?;
    time(&mut |i| Ok(registry.settings(&ids[i % ids.len()]).map(drop)?))?;
    time(&mut |i| {
        let now = now_millis();
        let batch: Vec<_> = (0..8)
            .map(|j| (ids[(i + j) % ids.len()].clone(), AccessKind::Request, now))
            .collect();
        Ok(registry.record_accesses(&batch)?)
    })?;
    time(&mut |_| Ok(registry.events_since(now_millis() - 3_600_000).map(drop)?))?;
    Ok(out)
}
