//! Scheduler cost at the SDXL 1024x1024 latent size with CFG batching (2x4x128x128).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use idpatch::scheduler::{Scheduler, SchedulerKind};

const LATENT_LEN: usize = 2 * 4 * 128 * 128;

fn latent(seed: u32) -> Vec<f32> {
    (0..LATENT_LEN as u32)
        .map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

fn bench_schedulers(c: &mut Criterion) {
    let (model_output, sample) = (latent(1), latent(2));

    let mut euler = Scheduler::sdxl(Some(SchedulerKind::Euler));
    euler.set_timesteps(50).unwrap();
    c.bench_function("euler step 2x4x128x128", |b| {
        b.iter(|| {
            euler
                .step(black_box(&model_output), 10, black_box(&sample), None)
                .unwrap()
        })
    });

    // A second-order step: the solver holds the first step's data prediction.
    let mut dpm = Scheduler::sdxl(Some(SchedulerKind::DpmSolverMultistep));
    dpm.set_timesteps(50).unwrap();
    dpm.step(&model_output, 0, &sample, None).unwrap();
    c.bench_function("dpm++ 2m step 2x4x128x128", |b| {
        b.iter_batched(
            || dpm.clone(),
            |mut dpm| {
                dpm.step(black_box(&model_output), 1, black_box(&sample), None)
                    .unwrap()
            },
            BatchSize::LargeInput,
        )
    });

    let mut scheduler = Scheduler::sdxl(None);
    c.bench_function("euler set_timesteps(50)", |b| {
        b.iter(|| scheduler.set_timesteps(black_box(50)).unwrap())
    });
    let mut karras = Scheduler::new(
        r#"{"use_karras_sigmas": true, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}"#
            .parse()
            .unwrap(),
    );
    c.bench_function("euler karras set_timesteps(50)", |b| {
        b.iter(|| karras.set_timesteps(black_box(50)).unwrap())
    });
}

criterion_group!(benches, bench_schedulers);
criterion_main!(benches);
