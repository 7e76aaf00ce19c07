//! The array arithmetic diffusers builds its schedules with (torch float32 tensors and numpy
//! float64 arrays), reproduced operation by operation. Square roots and logs here are correctly
//! rounded; torch's and numpy's float32 ones are not always, hence one-ulp differences.

use super::config::{BetaSchedule, SchedulerConfig};

/// `torch.linspace(start, end, n, dtype=float32)` on CPU: the bounds and the step are float32 and
/// each value is one fused multiply-add from the nearer end (the kernel is compiled with FMA).
fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let halfway = n / 2;
    (0..n)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((n - i - 1) as f32, end)
            }
        })
        .collect()
}

/// Cumulative products of `1 - beta` as torch computes them on CPU: float32 betas, a float64
/// running product, each partial product stored as float32.
pub fn alphas_cumprod(config: &SchedulerConfig) -> Vec<f32> {
    let n = config.num_train_timesteps;
    let betas: Vec<f32> = match config.beta_schedule {
        BetaSchedule::Linear => torch_linspace_f32(config.beta_start, config.beta_end, n),
        BetaSchedule::ScaledLinear => {
            torch_linspace_f32(config.beta_start.sqrt(), config.beta_end.sqrt(), n)
                .into_iter()
                .map(|b| b * b)
                .collect()
        }
    };
    let mut product = 1.0f64;
    betas
        .iter()
        .map(|&beta| {
            product *= f64::from(1.0f32 - beta);
            product as f32
        })
        .collect()
}

/// `((1 - a) / a) ** 0.5` in float32, indexed by training timestep.
pub fn train_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod
        .iter()
        .map(|&a| ((1.0 - a) / a).sqrt())
        .collect()
}

/// `np.linspace(start, stop, n)` in float64 (numpy: `i * step + start`, last value exactly `stop`).
pub fn numpy_linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    let mut values: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
    values[n - 1] = stop;
    values
}

/// `np.arange(start, 0, -step)` for float64: numpy sizes it with `ceil`, computes the second
/// value as `start - step` and fills the rest from the difference of the first two.
pub fn numpy_arange_down(start: f64, step: f64) -> Vec<f64> {
    let len = ((0.0 - start) / -step).ceil().max(0.0) as usize;
    let second = start + -step;
    let delta = second - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => second,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// `np.interp(x, arange(len(table)), table)`, the table being float32 values.
pub fn interp_table(x: f64, table: &[f32]) -> f64 {
    let last = table.len() - 1;
    if x <= 0.0 {
        return f64::from(table[0]);
    }
    if x >= last as f64 {
        return f64::from(table[last]);
    }
    let j = x.floor() as usize;
    let (low, high) = (f64::from(table[j]), f64::from(table[j + 1]));
    let slope = (high - low) / 1.0;
    slope * (x - j as f64) + low
}

/// The Karras et al. (2022) noise levels between `sigma_max` and `sigma_min` (rho 7), float64.
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0f64;
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    numpy_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|ramp| (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(rho))
        .collect()
}

/// The (fractional) training timestep whose sigma is `sigma`, interpolating linearly in
/// log-sigma between neighbouring training steps; `log_sigmas` are float32 like numpy's.
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // Index of the last training log-sigma not above log_sigma (0 when there is none), kept one
    // short of the end so that a right neighbour exists.
    let low_idx = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - f64::from(l) >= 0.0)
        .unwrap_or(0)
        .min(log_sigmas.len() - 2);
    let (low, high) = (log_sigmas[low_idx], log_sigmas[low_idx + 1]);
    // numpy subtracts the two float32 table values in float32.
    let w = ((f64::from(low) - log_sigma) / f64::from(low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * (low_idx + 1) as f64
}

/// Round half to even, like `np.round`.
pub fn round_even(x: f64) -> f64 {
    x.round_ties_even()
}
