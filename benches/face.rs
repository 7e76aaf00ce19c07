//! Aligning one face (similarity fit, 112x112 bilinear warp, ArcFace tensor) in a 1024x1024 photo.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use idpatch::face;
use idpatch::image_io::Rgb8;

fn photo_1024() -> Rgb8 {
    // Any content will do: the warp's cost does not depend on the pixel values.
    let (w, h) = (1024usize, 1024usize);
    let data = (0..w * h * 3)
        .map(|i| ((i * 2654435761usize) >> 13) as u8)
        .collect();
    Rgb8::new(w, h, data).unwrap()
}

fn bench_align(c: &mut Criterion) {
    let img = photo_1024();
    // A face about 200 px between the eyes, tilted a little.
    let kps = [
        [420.0, 400.0],
        [620.0, 420.0],
        [515.0, 520.0],
        [430.0, 610.0],
        [600.0, 625.0],
    ];
    c.bench_function("face/arcface_input_1024", |b| {
        b.iter(|| face::arcface_input(black_box(&img), Some(black_box(&kps)), "bench").unwrap())
    });
    let m = face::similarity_transform(&kps, &face::ARCFACE_TEMPLATE).unwrap();
    c.bench_function("face/warp_112_from_1024", |b| {
        b.iter(|| face::warp_affine_bilinear(black_box(&img), black_box(m), 112, 112).unwrap())
    });
}

criterion_group!(benches, bench_align);
criterion_main!(benches);
