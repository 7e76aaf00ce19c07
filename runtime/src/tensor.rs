//! A small host tensor: a shape and a typed, contiguous, row-major buffer.

use half::f16;

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    Float32,
    Float16,
    Int64,
    Int32,
}

impl DType {
    pub fn name(self) -> &'static str {
        match self {
            DType::Float32 => "float32",
            DType::Float16 => "float16",
            DType::Int64 => "int64",
            DType::Int32 => "int32",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    I64(Vec<i64>),
    I32(Vec<i32>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: TensorData) -> Result<Self> {
        let expected: usize = shape.iter().product();
        let len = match &data {
            TensorData::F32(v) => v.len(),
            TensorData::F16(v) => v.len(),
            TensorData::I64(v) => v.len(),
            TensorData::I32(v) => v.len(),
        };
        if len != expected {
            return Err(Error::invalid_input(
                "tensor",
                format!("shape {shape:?} needs {expected} elements, buffer has {len}"),
            ));
        }
        Ok(Tensor { shape, data })
    }

    pub fn from_f32(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        Self::new(shape, TensorData::F32(data))
    }

    pub fn from_i64(shape: Vec<usize>, data: Vec<i64>) -> Result<Self> {
        Self::new(shape, TensorData::I64(data))
    }

    pub fn zeros(shape: Vec<usize>, dtype: DType) -> Self {
        let n = shape.iter().product();
        let data = match dtype {
            DType::Float32 => TensorData::F32(vec![0.0; n]),
            DType::Float16 => TensorData::F16(vec![f16::ZERO; n]),
            DType::Int64 => TensorData::I64(vec![0; n]),
            DType::Int32 => TensorData::I32(vec![0; n]),
        };
        Tensor { shape, data }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> DType {
        match self.data {
            TensorData::F32(_) => DType::Float32,
            TensorData::F16(_) => DType::Float16,
            TensorData::I64(_) => DType::Int64,
            TensorData::I32(_) => DType::Int32,
        }
    }

    pub fn data(&self) -> &TensorData {
        &self.data
    }

    pub fn into_data(self) -> TensorData {
        self.data
    }

    /// The f32 buffer, if this is an f32 tensor.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            _ => None,
        }
    }

    /// Values widened (or narrowed, for int64) to f32, whatever the dtype.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            TensorData::F32(v) => v.clone(),
            TensorData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            TensorData::I64(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::I32(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// Converts floating tensors to `dtype` (f32 <-> f16); integer tensors only to themselves.
    pub fn cast(self, dtype: DType) -> Result<Tensor> {
        if self.dtype() == dtype {
            return Ok(self);
        }
        let data = match (self.data, dtype) {
            (TensorData::F32(v), DType::Float16) => {
                TensorData::F16(v.into_iter().map(f16::from_f32).collect())
            }
            (TensorData::F16(v), DType::Float32) => {
                TensorData::F32(v.into_iter().map(f16::to_f32).collect())
            }
            (TensorData::I32(v), DType::Int64) => {
                TensorData::I64(v.into_iter().map(i64::from).collect())
            }
            (data, to) => {
                let from = Tensor {
                    shape: vec![],
                    data: data.clone(),
                }
                .dtype();
                return Err(Error::invalid_input(
                    "tensor",
                    format!("cannot cast {from} to {to}"),
                ));
            }
        };
        Ok(Tensor {
            shape: self.shape,
            data,
        })
    }

    /// Index of the first NaN or infinite value, if any.
    pub fn first_non_finite(&self) -> Option<usize> {
        match &self.data {
            TensorData::F32(v) => v.iter().position(|x| !x.is_finite()),
            TensorData::F16(v) => v.iter().position(|x| !x.is_finite()),
            _ => None,
        }
    }
}
