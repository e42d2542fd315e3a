//! Checkpoints of a training run, in one directory: `step-N.safetensors` (the adapter's
//! factors and the optimizer's moments) and `state.json` (where the run is, what it has
//! measured, and which tensors file is current). Each file is written whole to a
//! temporary name and renamed, the state last, so a run killed at any point leaves the
//! previous checkpoint or the new one, never a mix; the older tensors go after. With a key
//! (encryption at rest), both files are sealed: the factors are derived from the data.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use minerva_seal::Key;
use serde::{Deserialize, Serialize};

use crate::optim::AdamW;
use crate::train::EpochReport;
use crate::{Result, TrainError};

const STATE: &str = "state.json";

/// Where a run stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// Identifies the run: the data and every option that shapes the updates' order.
    pub fingerprint: String,
    /// Optimizer updates so far.
    pub step: u64,
    /// The epoch under way (0-based).
    pub epoch: usize,
    /// Batches of that epoch done.
    pub batch_in_epoch: usize,
    /// That epoch's summed loss (per target token), targets, tokens and seconds so far.
    pub epoch_loss: f64,
    pub epoch_targets: u64,
    pub epoch_tokens: u64,
    pub epoch_seconds: f64,
    /// Finished epochs.
    pub history: Vec<EpochReport>,
    /// Noisy (DP-SGD) steps taken so far: with the run's noise multiplier and sampling
    /// rate, what the accountant reads.
    #[serde(default)]
    pub private_steps: u64,
    /// The tensors file of this state.
    pub tensors: String,
}

impl State {
    pub fn fresh(fingerprint: &str) -> Self {
        Self {
            fingerprint: fingerprint.to_owned(),
            step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            epoch_loss: 0.0,
            epoch_targets: 0,
            epoch_tokens: 0,
            epoch_seconds: 0.0,
            history: Vec::new(),
            private_steps: 0,
            tensors: String::new(),
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |e| TrainError::Io {
        path: path.to_owned(),
        source: e,
    }
}

/// Writes `state` with the optimizer's vars and moments into `dir`, sealed with `key`.
pub fn save(dir: &Path, state: &mut State, optimizer: &AdamW, key: Option<&Key>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut tensors = HashMap::new();
    for (i, (var, (m, v))) in optimizer.vars().iter().zip(&optimizer.moments).enumerate() {
        tensors.insert(format!("var.{i}"), var.as_tensor().clone());
        tensors.insert(format!("m.{i}"), m.clone());
        tensors.insert(format!("v.{i}"), v.clone());
    }
    let previous = std::mem::replace(&mut state.tensors, format!("step-{}.safetensors", state.step));
    let bytes = safetensors::tensor::serialize(tensors, None)
        .map_err(|e| TrainError::Checkpoint(format!("serializing the tensors: {e}")))?;
    minerva_seal::write(&dir.join(&state.tensors), key, &bytes)?;
    let json = serde_json::to_vec_pretty(state).expect("the state serializes");
    minerva_seal::write(&dir.join(STATE), key, &json)?;
    if !previous.is_empty() && previous != state.tensors {
        let _ = std::fs::remove_file(dir.join(previous));
    }
    Ok(())
}

/// The checkpoint in `dir`, when there is one; one of another run is an error (the
/// caller decides whether to start over).
pub fn load(dir: &Path, fingerprint: &str, key: Option<&Key>) -> Result<Option<(State, HashMap<String, Tensor>)>> {
    let state_path = dir.join(STATE);
    if !state_path.exists() {
        return Ok(None);
    }
    let bytes = minerva_seal::read(&state_path, key)?;
    let state: State =
        serde_json::from_slice(&bytes).map_err(|e| TrainError::Checkpoint(format!("{}: {e}", state_path.display())))?;
    if state.fingerprint != fingerprint {
        return Err(TrainError::Checkpoint(format!(
            "{} holds a run on other data or options; start over with --restart",
            dir.display()
        )));
    }
    let file = dir.join(&state.tensors);
    let bytes = minerva_seal::read(&file, key)?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", file.display())))?;
    Ok(Some((state, tensors)))
}

/// Puts a checkpoint's tensors back into the optimizer's vars and moments.
pub fn restore(optimizer: &mut AdamW, tensors: &HashMap<String, Tensor>, steps: u64) -> Result<()> {
    let get = |name: String| {
        tensors
            .get(&name)
            .cloned()
            .ok_or_else(|| TrainError::Checkpoint(format!("the checkpoint has no {name}")))
    };
    let vars = optimizer.vars().to_vec();
    for (i, var) in vars.iter().enumerate() {
        let value = get(format!("var.{i}"))?;
        if value.shape() != var.shape() {
            return Err(TrainError::Checkpoint(format!("var.{i} has another shape")));
        }
        var.set(&value)?;
        optimizer.moments[i] = (get(format!("m.{i}"))?, get(format!("v.{i}"))?);
    }
    optimizer.steps = steps;
    Ok(())
}
