//! The training loop: shuffled batches each epoch (the order a function of the seed and
//! the epoch, so a resumed run continues the same sequence of updates), AdamW on the
//! adapter's factors, the held-out loss after every epoch, checkpoints.
//!
//! With differential privacy ([`Privacy`]), each step is DP-SGD (Abadi et al. 2016): the
//! batch is a Poisson sample of the training examples (each in with probability
//! `batch / n`), every example's gradient is computed alone and clipped to an L2 norm of
//! `clip`, and Gaussian noise of standard deviation `noise · clip` is added to their sum;
//! the privacy spent is what [`crate::privacy`]'s accountant says of those steps.

use std::path::Path;
use std::time::Instant;

use candle_core::Tensor;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rayon::iter::{IndexedParallelIterator, ParallelIterator};
use rayon::slice::ParallelSlice;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, State};
use crate::data::{Dataset, Example};
use crate::model::{Batch, LoraLlama};
use crate::optim::{AdamW, AdamWParams};
use crate::{Result, TrainError};

/// DP-SGD's parameters.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Privacy {
    /// Largest L2 norm of one example's gradient.
    pub clip: f64,
    /// The noise's standard deviation, in units of `clip`.
    pub noise: f64,
}

/// How a run trains.
#[derive(Debug, Clone)]
pub struct Options {
    pub lr: f64,
    pub epochs: usize,
    /// Sequences per step (the expected number, under DP's Poisson sampling).
    pub batch: usize,
    pub seed: u64,
    /// Steps between checkpoints (0: only at the end of each epoch).
    pub checkpoint_every: u64,
    pub privacy: Option<Privacy>,
    /// Seals the checkpoints (encryption at rest).
    pub key: Option<minerva_seal::Key>,
}

/// What one epoch measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochReport {
    /// 1-based.
    pub epoch: usize,
    /// Mean loss per target token over the epoch's steps.
    pub train_loss: f64,
    /// Mean loss per target token on the held-out set, after the epoch.
    pub held_out_loss: Option<f64>,
    /// Time spent training (evaluation excluded).
    pub seconds: f64,
    /// Tokens through the forward and backward passes (padding excluded).
    pub tokens: u64,
    pub tokens_per_s: f64,
}

/// What the caller is told as the run goes.
#[derive(Debug)]
pub enum Event<'a> {
    /// A checkpoint was found and the run continues from it.
    Resumed { step: u64, epoch: usize },
    /// A step is done.
    Step {
        epoch: usize,
        step: u64,
        steps: u64,
        loss: f64,
        tokens_per_s: f64,
    },
    /// An epoch is done.
    Epoch(&'a EpochReport),
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub history: Vec<EpochReport>,
    /// Noisy steps taken (private runs).
    pub private_steps: u64,
}

/// Trains `model`'s adapter on `data`. With `checkpoints`, state is saved there and a run
/// of the same `fingerprint` found there is resumed.
pub fn run(
    model: &LoraLlama,
    data: &Dataset,
    options: &Options,
    checkpoints: Option<&Path>,
    fingerprint: &str,
    mut on: impl FnMut(Event<'_>),
) -> Result<Outcome> {
    if options.batch == 0 || options.epochs == 0 || options.lr.is_nan() || options.lr <= 0.0 {
        return Err(TrainError::Options(
            "batch, epochs and learning rate must be positive".into(),
        ));
    }
    if let Some(p) = options.privacy
        && (p.clip.is_nan() || p.noise.is_nan() || p.clip <= 0.0 || p.noise <= 0.0)
    {
        return Err(TrainError::Options(
            "DP's clipping norm and noise multiplier must be positive".into(),
        ));
    }
    keep_freed_memory();
    let mut optimizer = AdamW::new(model.vars(), AdamWParams::with_lr(options.lr))?;
    let mut state = State::fresh(fingerprint);
    if let Some(dir) = checkpoints
        && let Some((saved, tensors)) = checkpoint::load(dir, fingerprint, options.key.as_ref())?
    {
        checkpoint::restore(&mut optimizer, &tensors, saved.step)?;
        state = saved;
        on(Event::Resumed {
            step: state.step,
            epoch: state.epoch,
        });
    }
    let n = data.train.len();
    let per_epoch = n.div_ceil(options.batch);
    let total_steps = (per_epoch * options.epochs) as u64;
    // Noise must not be predictable from anything the user or the checkpoint holds.
    let mut noise_rng = rand::rngs::StdRng::from_os_rng();
    while state.epoch < options.epochs {
        let order = epoch_order(n, options.seed, state.epoch);
        for b in state.batch_in_epoch..per_epoch {
            let started = Instant::now();
            let (loss, targets, tokens) = match options.privacy {
                None => {
                    let members: Vec<&Example> = order[b * options.batch..((b + 1) * options.batch).min(n)]
                        .iter()
                        .map(|&i| &data.train[i])
                        .collect();
                    plain_step(model, &mut optimizer, &members)?
                }
                Some(privacy) => {
                    let members = poisson_sample(data, options, state.step);
                    state.private_steps += 1;
                    private_step(model, &mut optimizer, &members, privacy, options.batch, &mut noise_rng)?
                }
            };
            let seconds = started.elapsed().as_secs_f64();
            state.step += 1;
            state.batch_in_epoch = b + 1;
            state.epoch_loss += loss * targets as f64;
            state.epoch_targets += targets as u64;
            state.epoch_tokens += tokens as u64;
            state.epoch_seconds += seconds;
            on(Event::Step {
                epoch: state.epoch + 1,
                step: state.step,
                steps: total_steps,
                loss,
                tokens_per_s: tokens as f64 / seconds.max(1e-9),
            });
            if let Some(dir) = checkpoints
                && options.checkpoint_every > 0
                && state.step.is_multiple_of(options.checkpoint_every)
                && b + 1 < per_epoch
            {
                checkpoint::save(dir, &mut state, &optimizer, options.key.as_ref())?;
            }
        }
        let report = EpochReport {
            epoch: state.epoch + 1,
            train_loss: state.epoch_loss / state.epoch_targets.max(1) as f64,
            held_out_loss: if data.held_out.is_empty() {
                None
            } else {
                Some(evaluate(model, &data.held_out, options.batch)?)
            },
            seconds: state.epoch_seconds,
            tokens: state.epoch_tokens,
            tokens_per_s: state.epoch_tokens as f64 / state.epoch_seconds.max(1e-9),
        };
        on(Event::Epoch(&report));
        state.history.push(report);
        state.epoch += 1;
        state.batch_in_epoch = 0;
        state.epoch_loss = 0.0;
        state.epoch_targets = 0;
        state.epoch_tokens = 0;
        state.epoch_seconds = 0.0;
        if let Some(dir) = checkpoints {
            checkpoint::save(dir, &mut state, &optimizer, options.key.as_ref())?;
        }
    }
    Ok(Outcome {
        history: state.history,
        private_steps: state.private_steps,
    })
}

/// Candle allocates every intermediate tensor afresh, megabytes each, thousands per step;
/// glibc hands blocks that large back to the kernel when freed, and the kernel zeroes the
/// pages again at the next allocation: a third of a step's time in the profile. Raising
/// glibc's thresholds (once, for the process) keeps freed blocks for reuse.
fn keep_freed_memory() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: mallopt only adjusts the allocator's parameters; any value is valid.
        unsafe {
            // 32 MiB: the largest threshold glibc accepts on 64-bit systems.
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        }
    });
}

/// The training examples' order in `epoch`.
fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    order.shuffle(&mut rng);
    order
}

/// DP-SGD's batch for `step`: every training example with probability `batch / n`.
fn poisson_sample<'a>(data: &'a Dataset, options: &Options, step: u64) -> Vec<&'a Example> {
    let rate = (options.batch as f64 / data.train.len() as f64).min(1.0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed ^ step.wrapping_mul(0xD1B5_4A32_D192_ED03));
    data.train.iter().filter(|_| rng.random_bool(rate)).collect()
}

fn batch_of(examples: &[&Example]) -> Result<Batch> {
    let views: Vec<(&[u32], &[bool])> = examples.iter().map(|e| (&e.tokens[..], &e.mask[..])).collect();
    Batch::new(&views)
}

/// Candle runs a tensor operation on one thread (only its products use several), so a
/// batch is split into one shard per thread of Rayon's pool, each shard's forward and
/// backward passes run at once, and their gradients are combined in shard order (the same
/// sums in the same order every run).
fn shards<'a, 'b>(members: &'b [&'a Example]) -> impl IndexedParallelIterator<Item = &'b [&'a Example]> {
    let size = members.len().div_ceil(rayon::current_num_threads().max(1)).max(1);
    members.par_chunks(size)
}

/// `Σ weight · grads`, var by var, over the shards' gradients.
fn combine(parts: Vec<(Vec<Option<Tensor>>, f64)>) -> Result<Vec<Option<Tensor>>> {
    let mut total: Vec<Option<Tensor>> = Vec::new();
    for (grads, weight) in parts {
        if total.is_empty() {
            total = vec![None; grads.len()];
        }
        for (sum, grad) in total.iter_mut().zip(grads) {
            if let Some(grad) = grad {
                let grad = (grad * weight)?;
                *sum = Some(match sum.take() {
                    Some(s) => (s + grad)?,
                    None => grad,
                });
            }
        }
    }
    Ok(total)
}

/// One AdamW step on the mean loss of `members`: (loss, targets, tokens).
fn plain_step(model: &LoraLlama, optimizer: &mut AdamW, members: &[&Example]) -> Result<(f64, usize, usize)> {
    let vars = optimizer.vars();
    let parts: Vec<(Vec<Option<Tensor>>, f64, usize, usize)> = shards(members)
        .map(|shard| {
            let batch = batch_of(shard)?;
            let loss = model.loss(&batch)?;
            let grads = loss.backward()?;
            let grads = vars.iter().map(|v| grads.get(v).cloned()).collect();
            Ok((
                grads,
                f64::from(loss.to_scalar::<f32>()?),
                batch.n_targets,
                batch.n_tokens,
            ))
        })
        .collect::<Result<_>>()?;
    let targets: usize = parts.iter().map(|p| p.2).sum();
    let tokens: usize = parts.iter().map(|p| p.3).sum();
    let loss = parts.iter().map(|p| p.1 * p.2 as f64).sum::<f64>() / targets.max(1) as f64;
    // The mean over all targets: each shard's mean weighted by its share of them.
    let grads = combine(
        parts
            .into_iter()
            .map(|p| (p.0, p.2 as f64 / targets.max(1) as f64))
            .collect(),
    )?;
    optimizer.step(&grads)?;
    Ok((loss, targets, tokens))
}

/// One DP-SGD step: per-example gradients clipped to `clip`, summed, noised, divided by
/// the expected batch size.
fn private_step(
    model: &LoraLlama,
    optimizer: &mut AdamW,
    members: &[&Example],
    privacy: Privacy,
    expected_batch: usize,
    rng: &mut rand::rngs::StdRng,
) -> Result<(f64, usize, usize)> {
    let vars = optimizer.vars();
    // Each shard sums its examples' clipped gradients: (sum, loss · targets, targets, tokens).
    let parts: Vec<(Vec<Option<Tensor>>, f64, usize, usize)> = shards(members)
        .map(|shard| {
            let mut sum: Vec<Option<Tensor>> = vec![None; vars.len()];
            let (mut loss_sum, mut targets, mut tokens) = (0.0, 0, 0);
            for example in shard {
                let batch = batch_of(&[example])?;
                let loss = model.loss(&batch)?;
                let grads = loss.backward()?;
                let per_var: Vec<Option<&Tensor>> = vars.iter().map(|v| grads.get(v)).collect();
                let mut norm2 = 0.0f64;
                for g in per_var.iter().flatten() {
                    norm2 += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
                }
                let factor = (privacy.clip / norm2.sqrt().max(1e-12)).min(1.0);
                for (s, g) in sum.iter_mut().zip(&per_var) {
                    if let Some(g) = g {
                        let clipped = (*g * factor)?;
                        *s = Some(match s.take() {
                            Some(s) => (s + clipped)?,
                            None => clipped,
                        });
                    }
                }
                loss_sum += f64::from(loss.to_scalar::<f32>()?) * batch.n_targets as f64;
                targets += batch.n_targets;
                tokens += batch.n_tokens;
            }
            Ok((sum, loss_sum, targets, tokens))
        })
        .collect::<Result<_>>()?;
    let targets: usize = parts.iter().map(|p| p.2).sum();
    let tokens: usize = parts.iter().map(|p| p.3).sum();
    let loss = parts.iter().map(|p| p.1).sum::<f64>() / targets.max(1) as f64;
    let sum = combine(parts.into_iter().map(|p| (p.0, 1.0)).collect())?;
    let normal = rand_distr::Normal::new(0.0f32, (privacy.noise * privacy.clip) as f32)
        .map_err(|e| TrainError::Options(format!("noise: {e}")))?;
    let mut grads = Vec::with_capacity(vars.len());
    for (i, v) in vars.iter().enumerate() {
        let noise: Vec<f32> = (0..v.elem_count()).map(|_| rng.sample(normal)).collect();
        let noise = Tensor::from_vec(noise, v.shape(), v.device())?;
        // An empty sample still gets its noise: that is what the accountant counts.
        let noisy = match sum.get(i).cloned().flatten() {
            Some(s) => (s + noise)?,
            None => noise,
        };
        grads.push(Some((noisy / expected_batch as f64)?));
    }
    optimizer.step(&grads)?;
    Ok((loss, targets, tokens))
}

/// Mean loss per target token of `examples`, in batches of `batch` (sharded as in
/// training).
pub fn evaluate(model: &LoraLlama, examples: &[Example], batch: usize) -> Result<f64> {
    let (mut sum, mut targets) = (0.0, 0usize);
    for chunk in examples.chunks(batch.max(1)) {
        let members: Vec<&Example> = chunk.iter().collect();
        let parts: Vec<(f64, usize)> = shards(&members)
            .map(|shard| {
                let batch = batch_of(shard)?;
                let loss = model.loss(&batch)?;
                Ok((f64::from(loss.to_scalar::<f32>()?), batch.n_targets))
            })
            .collect::<Result<_>>()?;
        for (loss, n) in parts {
            sum += loss * n as f64;
            targets += n;
        }
    }
    Ok(sum / targets.max(1) as f64)
}
