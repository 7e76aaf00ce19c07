//! idpatch: ID-Patch group-photo personalization on precompiled ONNX graphs.
//!
//! The graphs (UNet, ControlNet, text encoders, VAE decoder, ArcFace, the two ID mappers) run
//! through a [`backend::Backend`]; everything between them is computed here.

pub mod backend;
pub mod condition;
pub mod error;
pub mod fsutil;
pub mod layout;
pub mod manifest;
pub mod npy;
pub mod splice;
pub mod tensor;
pub mod validate;

pub use error::{Error, Result};
pub use tensor::{DType, Tensor};
