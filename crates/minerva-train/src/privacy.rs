//! The privacy a DP-SGD run spends: Rényi-DP accounting of the sampled Gaussian mechanism
//! (Mironov, Talwar and Zhang, 2019), converted to (ε, δ) as Opacus and Google's
//! dp-accounting do (Balle et al., 2020). The integer orders 2–256 are used: every
//! order gives a valid bound, and the fractional ones Opacus adds tighten it slightly,
//! so this ε is at most a little above theirs (the test compares it with dp-accounting's).

/// ε spent by `steps` steps that each sample examples with probability `rate` and add
/// Gaussian noise of `noise` times the clipping norm, for the given `delta`; with the
/// Rényi order that gave it.
pub fn epsilon(rate: f64, noise: f64, steps: u64, delta: f64) -> (f64, u32) {
    if steps == 0 {
        return (0.0, 0);
    }
    (2u32..=256)
        .map(|order| {
            let alpha = f64::from(order);
            let rdp = steps as f64 * rdp_sampled_gaussian(rate, noise, order);
            let eps = rdp - (delta.ln() + alpha.ln()) / (alpha - 1.0) + ((alpha - 1.0) / alpha).ln();
            (eps.max(0.0), order)
        })
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .expect("the orders are not empty")
}

/// Rényi divergence of order `order` of one step of the sampled Gaussian mechanism.
fn rdp_sampled_gaussian(rate: f64, noise: f64, order: u32) -> f64 {
    if rate <= 0.0 {
        return 0.0;
    }
    let alpha = f64::from(order);
    if rate >= 1.0 {
        return alpha / (2.0 * noise * noise);
    }
    // log A_α = log Σ_k C(α, k) (1−q)^(α−k) q^k exp((k² − k) / 2σ²), summed in log space.
    let mut log_binomial = 0.0f64;
    let mut terms = Vec::with_capacity(order as usize + 1);
    for k in 0..=order {
        if k > 0 {
            log_binomial += (f64::from(order - k + 1) / f64::from(k)).ln();
        }
        let k = f64::from(k);
        terms
            .push(log_binomial + k * rate.ln() + (alpha - k) * (1.0 - rate).ln() + (k * k - k) / (2.0 * noise * noise));
    }
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let log_a = max + terms.iter().map(|t| (t - max).exp()).sum::<f64>().ln();
    log_a / (alpha - 1.0)
}

#[cfg(test)]
mod tests {
    use super::epsilon;

    #[test]
    fn no_sampling_is_the_gaussian_mechanism() {
        // Full batches: RDP α/(2σ²) per step, the textbook bound.
        let (eps, order) = epsilon(1.0, 2.0, 1, 1e-5);
        let alpha = f64::from(order);
        let expected = alpha / 8.0 - (1e-5f64.ln() + alpha.ln()) / (alpha - 1.0) + ((alpha - 1.0) / alpha).ln();
        assert!((eps - expected).abs() < 1e-12);
        assert_eq!(epsilon(0.1, 1.0, 0, 1e-5).0, 0.0);
    }

    /// Google's dp-accounting 0.6 (`RdpAccountant(orders=range(2, 257))`, Poisson-sampled
    /// Gaussian events composed `steps` times, `get_epsilon(delta)`) gave these.
    #[test]
    fn agrees_with_google_dp_accounting() {
        for (rate, noise, steps, expected) in [
            (0.05, 1.0, 100, 4.111651877541296),
            (0.2, 1.0, 40, 10.318526780795086),
            (0.25, 0.8, 48, 20.284103096058544),
            (0.01, 1.1, 1000, 1.7252908180449444),
        ] {
            let (eps, _) = epsilon(rate, noise, steps, 1e-5);
            assert!(
                (eps - expected).abs() < 1e-6 * expected,
                "q {rate} σ {noise} T {steps}: {eps} against dp-accounting's {expected}"
            );
        }
    }

    #[test]
    fn more_steps_or_less_noise_spend_more() {
        let (base, _) = epsilon(0.05, 1.0, 100, 1e-5);
        assert!(epsilon(0.05, 1.0, 400, 1e-5).0 > base);
        assert!(epsilon(0.05, 0.7, 100, 1e-5).0 > base);
        assert!(epsilon(0.01, 1.0, 100, 1e-5).0 < base);
    }
}
