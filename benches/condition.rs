//! Condition image for a 1024x1024 layout with 5 posed people: skeleton drawing, patch
//! compositing, and both together.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use idpatch::condition::{self, ConditionOptions};
use idpatch::layout::Layout;
use idpatch::Tensor;

/// A standing COCO-17 pose with its nose at (cx, top), `s` pixels per body unit.
fn standing(cx: f32, top: f32, s: f32) -> String {
    const BODY: [(f32, f32); 17] = [
        (0.0, 0.0),
        (-0.3, -0.3),
        (0.3, -0.3),
        (-0.7, -0.1),
        (0.7, -0.1),
        (-1.3, 1.5),
        (1.2, 1.6),
        (-1.8, 3.4),
        (1.9, 3.2),
        (-2.1, 5.0),
        (2.4, 4.6),
        (-0.8, 5.2),
        (0.8, 5.3),
        (-0.9, 7.9),
        (1.1, 8.0),
        (-1.0, 10.5),
        (1.3, 10.7),
    ];
    let points: Vec<String> = BODY
        .iter()
        .map(|(dx, dy)| format!("[{}, {}, 0.9]", cx + dx * s, top + dy * s))
        .collect();
    format!(r#"{{"keypoints": [{}]}}"#, points.join(", "))
}

fn bench(c: &mut Criterion) {
    let people: Vec<String> = (0..5)
        .map(|i| standing(110.0 + 200.0 * i as f32, 200.0 + 13.0 * i as f32, 40.0))
        .collect();
    let text = format!(
        r#"{{"width": 1024, "height": 1024, "people": [{}]}}"#,
        people.join(", ")
    );
    let layout = Layout::parse(&text, Path::new("."), false).unwrap();
    // Deterministic pseudo-random patch values.
    let mut state = 0x9e37_79b9_u32;
    let values: Vec<f32> = (0..5 * 3 * 64 * 64)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect();
    let patches = Tensor::from_f32(vec![5, 3, 64, 64], values).unwrap();
    let options = ConditionOptions::default();

    c.bench_function("condition_1024x1024_5_people", |b| {
        b.iter(|| {
            condition::condition_tensor(black_box(&layout), black_box(&patches), &options).unwrap()
        })
    });
    c.bench_function("skeleton_1024x1024_5_people", |b| {
        b.iter(|| condition::skeleton(black_box(&layout)))
    });
    let skeleton = condition::skeleton(&layout);
    let centres: Vec<[f32; 2]> = layout.people.iter().map(|p| p.centre()).collect();
    c.bench_function("composite_1024x1024_5_patches", |b| {
        b.iter(|| {
            condition::composite(
                black_box(&skeleton),
                &centres,
                patches.as_f32().unwrap(),
                &options,
            )
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
