//! The host tensor: an `ndarray` array of one of the four element types the graphs exchange
//! (float32, float16 via `half`, int64, int32), always in standard (row-major, contiguous)
//! layout, so that its buffer can be handed to a backend or a file as one slice.
//!
//! The arrays are `ndarray`'s own: slicing, concatenation and broadcasting are done with its
//! operations ([`Tensor::concatenate`], [`Tensor::broadcast_to`], [`Tensor::index_axis`]), and the
//! backends take and give them through their ndarray interop (ONNX Runtime takes an owned
//! standard-layout array without a copy).

use half::f16;
use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn};

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
    /// NumPy's name of the dtype (`float32`, `float16`, `int64`, `int32`).
    pub fn name(self) -> &'static str {
        match self {
            DType::Float32 => "float32",
            DType::Float16 => "float16",
            DType::Int64 => "int64",
            DType::Int32 => "int32",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::Float32 | DType::Int32 => 4,
            DType::Float16 => 2,
            DType::Int64 => 8,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A tensor's array, by element type. Every array a [`Tensor`] holds is in standard layout.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(ArrayD<f32>),
    F16(ArrayD<f16>),
    I64(ArrayD<i64>),
    I32(ArrayD<i32>),
}

/// The element types a [`Tensor`] can hold: `f32`, `half::f16`, `i64`, `i32`.
pub trait Element: Copy + Default + PartialEq + std::fmt::Debug + Send + Sync + 'static {
    const DTYPE: DType;
    /// Wraps an array (any layout) into [`TensorData`].
    fn wrap(array: ArrayD<Self>) -> TensorData;
    /// The array, when `data` holds this element type.
    fn array(data: &TensorData) -> Option<&ArrayD<Self>>;
    /// The owned array, when `data` holds this element type.
    fn unwrap(data: TensorData) -> Option<ArrayD<Self>>;
}

macro_rules! element {
    ($t:ty, $variant:ident, $dtype:ident) => {
        impl Element for $t {
            const DTYPE: DType = DType::$dtype;
            fn wrap(array: ArrayD<Self>) -> TensorData {
                TensorData::$variant(array)
            }
            fn array(data: &TensorData) -> Option<&ArrayD<Self>> {
                match data {
                    TensorData::$variant(a) => Some(a),
                    _ => None,
                }
            }
            fn unwrap(data: TensorData) -> Option<ArrayD<Self>> {
                match data {
                    TensorData::$variant(a) => Some(a),
                    _ => None,
                }
            }
        }
    };
}

element!(f32, F32, Float32);
element!(f16, F16, Float16);
element!(i64, I64, Int64);
element!(i32, I32, Int32);

/// Applies `$body` to the array of `$data` whatever its element type, binding it as `$a`.
macro_rules! each {
    ($data:expr, $a:ident => $body:expr) => {
        match $data {
            TensorData::F32($a) => $body,
            TensorData::F16($a) => $body,
            TensorData::I64($a) => $body,
            TensorData::I32($a) => $body,
        }
    };
}

/// A host tensor: an array of one element type in standard layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    data: TensorData,
}

impl Tensor {
    /// A tensor over `array`; an array not in standard layout is copied into it (the arrays of
    /// ndarray's constructors, `mapv` of a standard array and slices along the first axis
    /// already are, and are moved in without a copy).
    pub fn from_array<T: Element>(array: ArrayD<T>) -> Self {
        let array = if array.is_standard_layout() {
            array
        } else {
            array.as_standard_layout().into_owned()
        };
        Tensor {
            data: T::wrap(array),
        }
    }

    /// A tensor of `shape` over a row-major buffer. Errors when the sizes disagree.
    pub fn from_shape_vec<T: Element>(shape: Vec<usize>, values: Vec<T>) -> Result<Self> {
        let len = values.len();
        let array = ArrayD::from_shape_vec(IxDyn(&shape), values).map_err(|e| {
            let expected: usize = shape.iter().product();
            Error::invalid_input(
                "tensor",
                format!("shape {shape:?} needs {expected} elements, buffer has {len} ({e})"),
            )
        })?;
        Ok(Self::from_array(array))
    }

    /// A float32 tensor of `shape` over a row-major buffer. Errors: [`Error::InvalidInput`] when
    /// the buffer's length is not the shape's product.
    pub fn from_f32(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        Self::from_shape_vec(shape, data)
    }

    /// An int64 tensor of `shape` over a row-major buffer; errors as [`Tensor::from_f32`].
    pub fn from_i64(shape: Vec<usize>, data: Vec<i64>) -> Result<Self> {
        Self::from_shape_vec(shape, data)
    }

    /// A tensor of `shape` and `dtype` filled with zeros.
    pub fn zeros(shape: Vec<usize>, dtype: DType) -> Self {
        let shape = IxDyn(&shape);
        let data = match dtype {
            DType::Float32 => TensorData::F32(ArrayD::from_elem(shape, 0.0)),
            DType::Float16 => TensorData::F16(ArrayD::from_elem(shape, f16::ZERO)),
            DType::Int64 => TensorData::I64(ArrayD::from_elem(shape, 0)),
            DType::Int32 => TensorData::I32(ArrayD::from_elem(shape, 0)),
        };
        Tensor { data }
    }

    /// The dimensions, outermost first (empty for a scalar).
    pub fn shape(&self) -> &[usize] {
        each!(&self.data, a => a.shape())
    }

    /// Number of elements (the shape's product; 1 for a scalar).
    pub fn len(&self) -> usize {
        each!(&self.data, a => a.len())
    }

    /// Whether the tensor has no element (some dimension is 0).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match self.data {
            TensorData::F32(_) => DType::Float32,
            TensorData::F16(_) => DType::Float16,
            TensorData::I64(_) => DType::Int64,
            TensorData::I32(_) => DType::Int32,
        }
    }

    /// Bytes of the elements (`len * dtype.size()`).
    pub fn bytes(&self) -> usize {
        self.len() * self.dtype().size()
    }

    /// The array, by element type.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// The owned array, by element type.
    pub fn into_data(self) -> TensorData {
        self.data
    }

    /// The array, if the elements are `T`.
    pub fn array<T: Element>(&self) -> Option<&ArrayD<T>> {
        T::array(&self.data)
    }

    /// The owned array, if the elements are `T`.
    pub fn into_array<T: Element>(self) -> Option<ArrayD<T>> {
        T::unwrap(self.data)
    }

    /// The row-major buffer, if the elements are `T`.
    pub fn as_slice<T: Element>(&self) -> Option<&[T]> {
        self.array::<T>().and_then(|a| a.as_slice())
    }

    /// The f32 buffer, if this is an f32 tensor.
    pub fn as_f32(&self) -> Option<&[f32]> {
        self.as_slice::<f32>()
    }

    /// The f32 array, or an error naming `what` for another dtype.
    pub fn f32_array(&self, what: &str) -> Result<&ArrayD<f32>> {
        self.array::<f32>()
            .ok_or_else(|| Error::graph(what, format!("expected float32, got {}", self.dtype())))
    }

    /// Values widened (or narrowed, for int64) to f32, whatever the dtype.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            TensorData::F32(a) => a.iter().copied().collect(),
            TensorData::F16(a) => a.iter().map(|x| x.to_f32()).collect(),
            TensorData::I64(a) => a.iter().map(|&x| x as f32).collect(),
            TensorData::I32(a) => a.iter().map(|&x| x as f32).collect(),
        }
    }

    /// Converts floating tensors to `dtype` (f32 <-> f16) and int32 to int64; another pair is
    /// an error. Free when the dtype already is `dtype`.
    pub fn cast(self, dtype: DType) -> Result<Tensor> {
        if self.dtype() == dtype {
            return Ok(self);
        }
        self.to_dtype(dtype)
    }

    /// [`Tensor::cast`] of a borrowed tensor: one new array (a clone when the dtype already is
    /// `dtype`).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        let data = match (&self.data, dtype) {
            (data, to) if self.dtype() == to => data.clone(),
            (TensorData::F32(a), DType::Float16) => TensorData::F16(a.mapv(f16::from_f32)),
            (TensorData::F16(a), DType::Float32) => TensorData::F32(a.mapv(f16::to_f32)),
            (TensorData::I32(a), DType::Int64) => TensorData::I64(a.mapv(i64::from)),
            (_, to) => {
                return Err(Error::invalid_input(
                    "tensor",
                    format!("cannot cast {} to {to}", self.dtype()),
                ))
            }
        };
        Ok(Tensor { data })
    }

    /// Index of the first NaN or infinite value in row-major order, if any.
    pub fn first_non_finite(&self) -> Option<usize> {
        match &self.data {
            TensorData::F32(a) => a.iter().position(|x| !x.is_finite()),
            TensorData::F16(a) => a.iter().position(|x| !x.is_finite()),
            _ => None,
        }
    }

    /// The same elements under another shape of the same size (no copy).
    pub fn into_shape(self, shape: &[usize]) -> Result<Tensor> {
        let from = self.shape().to_vec();
        let fail = |e: ndarray::ShapeError| {
            Error::invalid_input("tensor", format!("cannot view {from:?} as {shape:?}: {e}"))
        };
        let data = each!(self.data, a => {
            let reshaped = a.into_shape_with_order(IxDyn(shape)).map_err(fail)?;
            Element::wrap(reshaped)
        });
        Ok(Tensor { data })
    }

    /// Sub-tensor `index` along `axis` (one fewer axis), copied out.
    pub fn index_axis(&self, axis: usize, index: usize) -> Result<Tensor> {
        let shape = self.shape();
        if axis >= shape.len() || index >= shape[axis] {
            return Err(Error::invalid_input(
                "tensor",
                format!("no index {index} on axis {axis} of {shape:?}"),
            ));
        }
        Ok(each!(&self.data, a => Tensor::from_array(a.index_axis(Axis(axis), index).to_owned())))
    }

    /// The tensor repeated to `shape` by ndarray's broadcasting rules (axes of length 1, or
    /// missing leading axes, are repeated), written into a new standard-layout array.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        let fail = || {
            Error::invalid_input(
                "tensor",
                format!("cannot broadcast {:?} to {shape:?}", self.shape()),
            )
        };
        Ok(each!(&self.data, a => Tensor::from_array(broadcast(a, shape).ok_or_else(fail)?)))
    }

    /// `parts` (one dtype, equal shapes but for `axis`) joined along `axis` into a new
    /// standard-layout tensor (`numpy.concatenate(parts, axis)`).
    pub fn concatenate(axis: usize, parts: &[&Tensor]) -> Result<Tensor> {
        let first = parts
            .first()
            .ok_or_else(|| Error::invalid_input("tensor", "nothing to concatenate"))?;
        let shapes: Vec<&[usize]> = parts.iter().map(|p| p.shape()).collect();
        let fail = || {
            Error::invalid_input(
                "tensor",
                format!(
                    "cannot concatenate {} tensors of shapes {shapes:?} on axis {axis}",
                    first.dtype()
                ),
            )
        };
        Ok(each!(&first.data, a => {
            let views = parts
                .iter()
                .map(|p| p.typed_view(a).ok_or_else(fail))
                .collect::<Result<Vec<_>>>()?;
            Tensor::from_array(concatenate(axis, &views).ok_or_else(fail)?)
        }))
    }

    /// A view of this tensor's array if it has the element type of `like`.
    fn typed_view<T: Element>(&self, _like: &ArrayD<T>) -> Option<ArrayViewD<'_, T>> {
        self.array::<T>().map(|a| a.view())
    }
}

/// `array` repeated to `shape` by ndarray's broadcasting rules, in a new standard-layout array
/// (each element written once), or `None` when it does not broadcast.
pub(crate) fn broadcast<T: Element>(array: &ArrayD<T>, shape: &[usize]) -> Option<ArrayD<T>> {
    let view = array.broadcast(IxDyn(shape))?;
    ArrayD::from_shape_vec(view.raw_dim(), view.iter().copied().collect()).ok()
}

/// `parts` joined along `axis` in standard layout, or `None` when their shapes do not fit.
/// (ndarray's `concatenate` grows its result along `axis`, which leaves it in another layout for
/// any axis but the first; writing slices of a standard-layout array avoids a second copy.)
pub(crate) fn concatenate<T: Element>(axis: usize, parts: &[ArrayViewD<T>]) -> Option<ArrayD<T>> {
    let first = parts.first()?;
    let ndim = first.ndim();
    if axis >= ndim {
        return None;
    }
    let mut shape = first.shape().to_vec();
    let fits = |p: &ArrayViewD<T>| {
        p.ndim() == ndim && (0..ndim).all(|i| i == axis || p.shape()[i] == first.shape()[i])
    };
    if !parts.iter().all(fits) {
        return None;
    }
    shape[axis] = parts.iter().map(|p| p.shape()[axis]).sum();
    let mut out = ArrayD::from_elem(IxDyn(&shape), T::default());
    let mut at = 0;
    for p in parts {
        let len = p.shape()[axis];
        out.slice_axis_mut(Axis(axis), (at..at + len).into())
            .assign(p);
        at += len;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arange(shape: &[usize], base: f32) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::from_f32(shape.to_vec(), (0..n).map(|i| base + i as f32).collect()).unwrap()
    }

    // Expected: numpy.concatenate([a, b], axis=k) for a = arange(8).reshape(2, 2, 2),
    // b = 100 + arange(4).reshape(2, 1, 2) (axis 1) / (2, 2, 1) (axis 2) / (1, 2, 2) (axis 0),
    // numpy 2.4.6:
    //   axis 0 -> [0..8, 100, 101, 102, 103]
    //   axis 1 -> [0, 1, 2, 3, 100, 101, 4, 5, 6, 7, 102, 103]
    //   axis 2 -> [0, 1, 100, 2, 3, 101, 4, 5, 102, 6, 7, 103]
    #[test]
    fn concatenation_matches_numpy_on_every_axis() {
        let a = arange(&[2, 2, 2], 0.0);
        let cases: [(usize, &[usize], &[f32]); 3] = [
            (
                0,
                &[1, 2, 2],
                &[0., 1., 2., 3., 4., 5., 6., 7., 100., 101., 102., 103.],
            ),
            (
                1,
                &[2, 1, 2],
                &[0., 1., 2., 3., 100., 101., 4., 5., 6., 7., 102., 103.],
            ),
            (
                2,
                &[2, 2, 1],
                &[0., 1., 100., 2., 3., 101., 4., 5., 102., 6., 7., 103.],
            ),
        ];
        for (axis, b_shape, expected) in cases {
            let b = arange(b_shape, 100.0);
            let joined = Tensor::concatenate(axis, &[&a, &b]).unwrap();
            let mut shape = vec![2, 2, 2];
            shape[axis] += b_shape[axis];
            assert_eq!(joined.shape(), shape.as_slice(), "axis {axis}");
            assert_eq!(joined.as_f32().unwrap(), expected, "axis {axis}");
        }
        let wrong = arange(&[2, 3, 1], 0.0);
        assert!(Tensor::concatenate(2, &[&a, &wrong]).is_err());
        let half = a.to_dtype(DType::Float16).unwrap();
        assert!(Tensor::concatenate(0, &[&a, &half]).is_err());
        assert!(Tensor::concatenate(3, &[&a, &a]).is_err());
    }

    // Expected: numpy.broadcast_to(numpy.arange(3).reshape(3, 1), (2, 3, 2)).ravel()
    //   -> [0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2] (numpy 2.4.6).
    #[test]
    fn broadcasting_repeats_missing_and_unit_axes() {
        let t = arange(&[3, 1], 0.0);
        let b = t.broadcast_to(&[2, 3, 2]).unwrap();
        assert_eq!(b.shape(), [2, 3, 2]);
        assert_eq!(
            b.as_f32().unwrap(),
            [0., 0., 1., 1., 2., 2., 0., 0., 1., 1., 2., 2.]
        );
        assert!(t.broadcast_to(&[2, 4, 2]).is_err());
    }

    // Expected: numpy.arange(12).reshape(2, 3, 2)[1] -> [6..12] and [:, 2] -> [4, 5, 10, 11].
    #[test]
    fn index_axis_takes_one_slice() {
        let t = arange(&[2, 3, 2], 0.0);
        let row = t.index_axis(0, 1).unwrap();
        assert_eq!(row.shape(), [3, 2]);
        assert_eq!(row.as_f32().unwrap(), [6., 7., 8., 9., 10., 11.]);
        let col = t.index_axis(1, 2).unwrap();
        assert_eq!(col.as_f32().unwrap(), [4., 5., 10., 11.]);
        assert!(t.index_axis(0, 2).is_err());
        assert!(t.index_axis(3, 0).is_err());
    }

    #[test]
    fn shapes_and_casts_are_checked() {
        assert!(Tensor::from_f32(vec![2, 3], vec![0.0; 5]).is_err());
        let t = arange(&[2, 3], 0.0).into_shape(&[3, 2]).unwrap();
        assert_eq!(t.shape(), [3, 2]);
        assert!(t.clone().into_shape(&[4, 2]).is_err());
        // f16 holds these integers exactly: the round trip is the identity.
        let back = t
            .to_dtype(DType::Float16)
            .unwrap()
            .cast(DType::Float32)
            .unwrap();
        assert_eq!(back, t);
        assert!(Tensor::from_i64(vec![1], vec![1])
            .unwrap()
            .cast(DType::Float32)
            .is_err());
        // A non-standard array (a transpose) is stored in standard layout.
        let transposed = ArrayD::from_shape_vec(IxDyn(&[2, 3]), (0..6).map(|i| i as f32).collect())
            .unwrap()
            .reversed_axes();
        let t = Tensor::from_array(transposed);
        assert_eq!(t.as_f32().unwrap(), [0., 3., 1., 4., 2., 5.]);
    }
}
