//! idpatch: ID-Patch group-photo personalization on precompiled ONNX graphs.
//!
//! The graphs (UNet, ControlNet, text encoders, VAE decoder, ArcFace, the two ID mappers) run
//! through a [`backend::Backend`]; everything between them is computed here.

pub mod backend;
pub mod bench;
pub mod calibrate;
pub mod checksum;
pub mod condition;
pub mod config_dims;
pub mod denoise;
pub mod detect;
pub mod error;
pub mod eval;
pub mod face;
pub mod fidelity;
pub mod fsutil;
pub mod image_io;
pub mod infotext;
pub mod layout;
pub mod limits;
pub mod manifest;
pub mod noise;
pub mod npy;
pub mod pipeline;
pub mod profile;
pub mod scheduler;
#[cfg(feature = "serve")]
pub mod serve;
pub mod splice;
pub mod stages;
pub mod tensor;
pub mod timings;
pub mod tokenizer;
pub mod validate;

#[cfg(feature = "ort")]
pub use backend::ort::OrtBackend;
#[cfg(feature = "tract")]
pub use backend::tract::TractBackend;

pub use error::{Error, Result};
pub use tensor::{DType, Tensor};
