//! The seedable Gaussian noise of a generation: the initial latents and Euler ancestral's
//! per-step noise.
//!
//! Definition (stable: the same seed gives the same numbers in every idpatch version):
//! - Each use draws from its own stream: stream 0 is the initial latents, stream `k + 1` the
//!   Euler ancestral noise of step `k`.
//! - A stream is a SplitMix64 sequence (Steele, Lea & Flood 2014) whose state starts at
//!   `mix(seed) ^ mix(stream + 0x9E3779B97F4A7C15)`, `mix` being SplitMix64's output function.
//! - Standard normals come in pairs by Box-Muller in f64: with two consecutive outputs `a`, `b`,
//!   `u1 = ((a >> 11) + 1) / 2^53` (in (0, 1], so the log is finite) and `u2 = (b >> 11) / 2^53`,
//!   `r = sqrt(-2 ln u1)`, the values are `r cos(2 pi u2)` then `r sin(2 pi u2)`, each rounded
//!   to f32. An odd count drops the last sine.
//!
//! The integer part is exact everywhere; `ln`, `cos` and `sin` come from the platform's libm, so
//! two platforms can differ in the last f64 bit, which almost never survives the f32 rounding.
//!
//! `tests/reference/noise.py` implements this definition independently in Python; its values
//! (tests/data/noise/) are what the tests compare with, bit for bit.

/// SplitMix64's increment (the golden ratio in 64-bit fixed point).
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function (a bijective 64-bit mixer).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64 (Steele, Lea & Flood 2014): each output is `mix(state += 0x9E3779B97F4A7C15)`.
/// The one generator of idpatch: the seeded noise below, and the made-up inputs of `bench`.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose first output is `mix(state + 0x9E3779B97F4A7C15)`.
    pub fn new(state: u64) -> Self {
        SplitMix64 { state }
    }

    /// The next 64 uniformly distributed bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix(self.state)
    }
}

/// Which use a stream of noise serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The initial latents (before scaling by the scheduler's initial sigma).
    InitialLatents,
    /// Euler ancestral's noise for step `k` (0-based).
    AncestralStep(usize),
}

impl Stream {
    fn id(self) -> u64 {
        match self {
            Stream::InitialLatents => 0,
            Stream::AncestralStep(k) => k as u64 + 1,
        }
    }
}

/// Standard normal noise from a seed; see the module documentation for the exact definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoiseGenerator {
    seed: u64,
}

impl NoiseGenerator {
    pub fn new(seed: u64) -> Self {
        NoiseGenerator { seed }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// `count` standard normal values of `stream`.
    pub fn normal(&self, stream: Stream, count: usize) -> Vec<f32> {
        let mut rng = SplitMix64::new(mix(self.seed) ^ mix(stream.id().wrapping_add(GOLDEN_GAMMA)));
        let scale = 1.0 / (1u64 << 53) as f64;
        let mut out = Vec::with_capacity(count + 1);
        while out.len() < count {
            let u1 = ((rng.next_u64() >> 11) + 1) as f64 * scale;
            let u2 = (rng.next_u64() >> 11) as f64 * scale;
            let r = (-2.0 * u1.ln()).sqrt();
            let (sin, cos) = (std::f64::consts::TAU * u2).sin_cos();
            out.push((r * cos) as f32);
            out.push((r * sin) as f32);
        }
        out.truncate(count);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::PathBuf;

    fn reference_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/noise")
    }

    /// The stream a reference case names by its number (README: stream 0 is the initial
    /// latents, stream k + 1 Euler ancestral's noise at step k).
    fn stream(id: u64) -> Stream {
        match id {
            0 => Stream::InitialLatents,
            k => Stream::AncestralStep(k as usize - 1),
        }
    }

    // Expected: the first outputs of Vigna's reference splitmix64.c from x = 0, as CPython
    // gives them: m = 2**64 - 1; s = (s + 0x9E3779B97F4A7C15) & m; z = s;
    // z = ((z ^ z >> 30) * 0xBF58476D1CE4E5B9) & m; z = ((z ^ z >> 27) * 0x94D049BB133111EB) & m;
    // z ^ z >> 31.
    #[test]
    fn splitmix64_matches_the_reference_generator() {
        let mut rng = SplitMix64::new(0);
        let got: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        assert_eq!(
            got,
            [0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4, 0x06c45d188009454f]
        );
    }

    fn bits(values: &[f32]) -> Vec<u32> {
        values.iter().map(|x| x.to_bits()).collect()
    }

    // Expected values: tests/reference/noise.py, which implements the README's definition
    // (SplitMix64 streams, Box-Muller in f64, f32 rounding) in Python with CPython's math module
    // and numpy, written to tests/data/noise/. Seeds must keep giving the same images across
    // versions, so the comparison is bit for bit.
    #[test]
    fn matches_the_reference_definition() {
        let path = reference_dir().join("cases.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{}: {e} (made by tests/reference/noise.py)", path.display())
        });
        let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
        let cases = reference["cases"].as_array().unwrap();
        assert!(cases.len() >= 10, "{} cases", cases.len());
        for case in cases {
            let seed = case["seed"].as_u64().unwrap();
            let id = case["stream"].as_u64().unwrap();
            let count = case["count"].as_u64().unwrap() as usize;
            let want: Vec<u32> = case["bits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| u32::try_from(b.as_u64().unwrap()).unwrap())
                .collect();
            assert_eq!(want.len(), count, "seed {seed} stream {id}");
            let got = NoiseGenerator::new(seed).normal(stream(id), count);
            assert_eq!(bits(&got), want, "seed {seed} stream {id} count {count}");
        }

        let long = &reference["long"];
        let (seed, id) = (
            long["seed"].as_u64().unwrap(),
            long["stream"].as_u64().unwrap(),
        );
        let want = crate::npy::read(&reference_dir().join(long["file"].as_str().unwrap())).unwrap();
        let want = want.as_f32().unwrap();
        assert_eq!(want.len() as u64, long["count"].as_u64().unwrap());
        let got = NoiseGenerator::new(seed).normal(stream(id), want.len());
        let differ = got
            .iter()
            .zip(want)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            differ,
            0,
            "{differ} of {} long-stream values differ",
            want.len()
        );
    }

    #[test]
    fn values_are_standard_normal() {
        let v = NoiseGenerator::new(0).normal(Stream::InitialLatents, 200_000);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        // Standard errors: 1/sqrt(n) = 0.0022 for the mean, sqrt(2/n) = 0.0032 for the variance.
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.015, "variance {var}");
        // P(|z| > 2) = 0.0455: Python's math.erfc(2 / math.sqrt(2)) = 0.04550026389635844.
        let beyond_2 = v.iter().filter(|x| x.abs() > 2.0).count() as f64 / n;
        assert!((beyond_2 - 0.0455).abs() < 0.003, "P(|z| > 2) = {beyond_2}");
        assert!(v.iter().all(|x| x.is_finite()));
    }
}
