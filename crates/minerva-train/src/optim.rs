//! AdamW over the adapter's factors, as Candle's `candle_nn::AdamW` computes it (decoupled
//! weight decay, bias-corrected moments), with its state in the open: Candle keeps the
//! moments private, and a checkpoint that a killed run resumes from must hold them.

use candle_core::{Tensor, Var};

use crate::Result;

/// Hyper-parameters.
#[derive(Debug, Clone, Copy)]
pub struct AdamWParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamWParams {
    /// PyTorch's and PEFT's usual values at the given learning rate, without weight decay.
    pub fn with_lr(lr: f64) -> Self {
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// The optimizer and its state.
pub struct AdamW {
    pub params: AdamWParams,
    /// Updates applied so far.
    pub steps: u64,
    vars: Vec<Var>,
    /// First and second moments, one pair per var.
    pub moments: Vec<(Tensor, Tensor)>,
}

impl AdamW {
    pub fn new(vars: Vec<Var>, params: AdamWParams) -> Result<Self> {
        let moments = vars
            .iter()
            .map(|v| Ok((v.zeros_like()?, v.zeros_like()?)))
            .collect::<Result<_>>()?;
        Ok(Self {
            params,
            steps: 0,
            vars,
            moments,
        })
    }

    /// The vars it updates.
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// One update, `grads[i]` being the gradient of `vars()[i]` (none: that var stays).
    pub fn step(&mut self, grads: &[Option<Tensor>]) -> Result<()> {
        self.steps += 1;
        let p = self.params;
        let t = self.steps.min(i32::MAX as u64) as i32;
        let (scale_m, scale_v) = (1.0 / (1.0 - p.beta1.powi(t)), 1.0 / (1.0 - p.beta2.powi(t)));
        for ((var, (m, v)), grad) in self.vars.iter().zip(&mut self.moments).zip(grads) {
            let Some(g) = grad else { continue };
            let next_m = ((&*m * p.beta1)? + (g * (1.0 - p.beta1))?)?;
            let next_v = ((&*v * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let update = ((&next_m * scale_m)? / ((&next_v * scale_v)?.sqrt()? + p.eps)?)?;
            let decayed = (var.as_tensor() * (1.0 - p.lr * p.weight_decay))?;
            var.set(&(decayed - (update * p.lr)?)?)?;
            *m = next_m;
            *v = next_v;
        }
        Ok(())
    }
}
