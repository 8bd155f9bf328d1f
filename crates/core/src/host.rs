//! Moving small tensors between a device and the host.
//!
//! Mask, centroid and range computations that run every few hundred steps are done on the host
//! (exact, deterministic tie-breaking); these helpers keep the conversions in one place.

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use crate::CoreError;

/// Copy a float tensor to the host as `f32`, flattened in row-major order.
///
/// The tensor is detached first, so this never keeps an autodiff graph alive.
pub fn to_vec_f32<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    let data = tensor.detach().into_data().convert::<f32>();
    data.try_into_vec::<f32>()
        .expect("float tensor data converts to f32")
}

/// Copy a float tensor to the host and reject NaN / infinite values with an error naming `what`.
pub fn to_finite_vec_f32<const D: usize>(
    tensor: Tensor<D>,
    what: &str,
) -> Result<Vec<f32>, CoreError> {
    let values = to_vec_f32(tensor);
    let mut count = 0;
    let mut first = usize::MAX;
    for (i, v) in values.iter().enumerate() {
        if !v.is_finite() {
            count += 1;
            first = first.min(i);
        }
    }
    if count > 0 {
        return Err(CoreError::NonFinite {
            what: what.to_string(),
            count,
            first,
        });
    }
    Ok(values)
}

/// Copy a bool tensor to the host, flattened in row-major order.
pub fn to_vec_bool<const D: usize>(tensor: Tensor<D, Bool>) -> Vec<bool> {
    tensor
        .into_data()
        .convert::<bool>()
        .try_into_vec::<bool>()
        .expect("bool tensor data converts to bool")
}

/// Copy an int tensor to the host as `i64` (flex stores I32, other backends I64).
pub fn to_vec_i64<const D: usize>(tensor: Tensor<D, Int>) -> Vec<i64> {
    tensor
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .expect("int tensor data converts to i64")
}

/// A rank-1 bool tensor on `device` from host values.
pub fn bool_tensor(values: Vec<bool>, device: &Device) -> Tensor<1, Bool> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

/// A rank-1 float tensor on `device` from host values.
pub fn float_tensor(values: Vec<f32>, device: &Device) -> Tensor<1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

/// Number of distinct values (by bit pattern, with -0.0 = 0.0).
pub fn distinct_count(values: &[f32]) -> usize {
    let mut bits: Vec<u32> = values
        .iter()
        .map(|v| if *v == 0.0 { 0 } else { v.to_bits() })
        .collect();
    bits.sort_unstable();
    bits.dedup();
    bits.len()
}
