//! Face detection (MTCNN: pyramid, three networks, NMS, landmarks) on a 1024x1024 photo: the
//! test photo tests/data/mtcnn/group.png (eight faces) with every pixel doubled, on tract (one
//! instance of each graph per core, up to 4) and on ONNX Runtime's CPU provider (its default
//! thread pool). `benches/detect_facenet.py` runs this and facenet-pytorch on the
//! same photo and prints both.
//!
//! The ONNX Runtime case needs libonnxruntime (ORT_DYLIB_PATH, or scripts/fetch-onnxruntime.sh):
//! without it the bench stops, saying so.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use idpatch::backend::Backend;
use idpatch::detect::{Detector, DetectorOptions};
use idpatch::image_io::{self, Rgb8};
use idpatch::manifest::{Checksums, ModelSet};

/// group.png (512x512) with each pixel repeated 2x2, as detect_facenet.py builds it.
pub fn photo_1024() -> Rgb8 {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let small = image_io::load_rgb8(&root.join("tests/data/mtcnn/group.png")).unwrap();
    let (w, h) = (small.width() * 2, small.height() * 2);
    let mut data = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            data.extend_from_slice(&small.pixel(x / 2, y / 2).unwrap());
        }
    }
    Rgb8::new(w, h, data).unwrap()
}

fn bench_backend(c: &mut Criterion, name: &str, backend: &dyn Backend) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let set = ModelSet::open(&root.join("models/tiny"), Checksums::Skip).unwrap();
    let mut detector = Detector::load(backend, &set, DetectorOptions::default()).unwrap();
    let img = photo_1024();
    // The first run prepares the backend for each input shape; the timed runs reuse that.
    let faces = detector.detect(&img).unwrap();
    assert_eq!(faces.len(), 8, "the bench photo should show eight faces");
    let mut group = c.benchmark_group("detect_1024");
    group.sample_size(20);
    group.bench_function(name, |b| {
        b.iter(|| detector.detect(black_box(&img)).unwrap())
    });
    group.finish();
}

fn bench_detect(c: &mut Criterion) {
    bench_backend(c, "tract", &idpatch::TractBackend::new());
    let lib = idpatch::backend::ort::find_library(None).unwrap_or_else(|e| {
        panic!("the ONNX Runtime case needs the library: {e} (run scripts/fetch-onnxruntime.sh)")
    });
    let ort = idpatch::OrtBackend::new(idpatch::backend::ort::OrtOptions {
        library: Some(lib),
        ..Default::default()
    })
    .unwrap();
    bench_backend(c, "ort-cpu", &ort);
}

criterion_group!(benches, bench_detect);
criterion_main!(benches);
