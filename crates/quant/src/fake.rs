//! Fake quantization as tensor operations: the value is exactly `dequantize(quantize(x))` with
//! TFLite's rounding; the gradient is the identity inside the representable range and 0
//! outside it (straight-through estimator with clipping).

use burn::tensor::{Tensor, TensorData};

use crate::QuantParams;
use crate::params::HALF_DOWN;

/// Elementwise rounding with ties away from zero (`TfLiteRound`, `f32::round`).
///
/// burn's `round` ties to even, so this is `sign(x) · floor(|x| + HALF_DOWN)`.
pub fn round_half_away<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.clone().abs().add_scalar(HALF_DOWN).floor() * x.sign()
}

/// Fake-quantize `x` with `scale` and `zero_point` (same rank, broadcastable to `x`), integers
/// in `[qmin, qmax]`.
///
/// Value: `(clamp(round(x / scale) + zero_point, qmin, qmax) − zero_point) · scale`.
/// Gradient: 1 where `x` lies in `[(qmin − zp)·scale, (qmax − zp)·scale]`, else 0; none to
/// `scale` and `zero_point`.
pub fn fake_quant<const D: usize>(
    x: Tensor<D>,
    scale: Tensor<D>,
    zero_point: Tensor<D>,
    qmin: i32,
    qmax: i32,
) -> Tensor<D> {
    let shape = x.shape();
    let scale = scale.detach().expand(shape.clone());
    let zero_point = zero_point.detach().expand(shape);
    let q = (round_half_away(x.clone().detach() / scale.clone()) + zero_point.clone())
        .clamp(qmin as f32, qmax as f32);
    let value = (q - zero_point.clone()) * scale.clone();
    let low = (zero_point.clone().neg() + qmin as f32) * scale.clone();
    let high = (zero_point.neg() + qmax as f32) * scale;
    let clipped = x.max_pair(low).min_pair(high);
    // The parentheses keep the value exact: (clipped - clipped) is exactly 0.
    value + (clipped.clone() - clipped.detach())
}

/// Fake-quantize `x` with per-tensor parameters (activations, per-tensor weights). Same value
/// and gradient as [`fake_quant`]. On `flex` this is the fused op
/// ([`crate::ops::fused::fake_quant_fused`]: one pass forward, one backward); elsewhere the value is
/// computed in one pass on the host ([`QuantParams::fake_quant_slice`]) and only the
/// straight-through gradient (clipped to the range) goes through the autodiff graph.
pub fn fake_quant_per_tensor<const D: usize>(x: Tensor<D>, params: &QuantParams) -> Tensor<D> {
    if let Some(y) = crate::ops::fused::fake_quant_fused(x.clone(), params) {
        return y;
    }
    let values = host_values(&x);
    quantize_host_values(x, values, params)
}

/// `x` flattened to the host (row-major `f32`).
pub(crate) fn host_values<const D: usize>(x: &Tensor<D>) -> Vec<f32> {
    let n = x.shape().num_elements();
    collab_core::host::to_vec_f32(x.clone().without_autodiff().reshape([n]))
}

/// The composed per-tensor fake quantization of `x`, given its host copy `values`: the value
/// computed on the host ([`QuantParams::fake_quant_slice`]), the clipped straight-through
/// gradient through the autodiff graph.
pub(crate) fn quantize_host_values<const D: usize>(
    x: Tensor<D>,
    mut values: Vec<f32>,
    params: &QuantParams,
) -> Tensor<D> {
    params.fake_quant_slice(&mut values, 0);
    let shape = x.shape();
    let n = values.len();
    let device = x.clone().without_autodiff().device();
    let value = Tensor::<1>::from_data(TensorData::new(values, [n]), &device).reshape(shape);
    with_straight_through(x, value, params)
}

/// `value` with the gradient of `x` passed straight through inside the range of `params`.
pub(crate) fn with_straight_through<const D: usize>(
    x: Tensor<D>,
    value: Tensor<D>,
    params: &QuantParams,
) -> Tensor<D> {
    if !x.device().is_autodiff() {
        return value;
    }
    let (scale, zero_point) = (params.scale[0], params.zero_point[0]);
    let low = (params.qmin - zero_point) as f32 * scale;
    let high = (params.qmax - zero_point) as f32 * scale;
    let clipped = x.clamp(low, high);
    value.autodiff() + (clipped.clone() - clipped.detach())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn t(values: &[f32]) -> Tensor<1> {
        Tensor::from_data(
            TensorData::new(values.to_vec(), [values.len()]),
            &Device::flex(),
        )
    }

    fn vec(x: Tensor<1>) -> Vec<f32> {
        collab_core::host::to_vec_f32(x)
    }

    #[test]
    fn tensor_rounding_matches_f32_round() {
        let xs = [
            2.5,
            -2.5,
            3.5,
            -3.5,
            0.5,
            -0.5,
            0.49999997,
            1.2,
            -1.7,
            0.0,
            1e6 + 0.5,
        ];
        let want: Vec<f32> = xs.iter().map(|x: &f32| x.round()).collect();
        assert_eq!(vec(round_half_away(t(&xs))), want);
    }

    #[test]
    fn fake_quant_equals_host_quantize_dequantize() {
        let params = crate::QuantParams::asymmetric(-1.0, 3.0).unwrap();
        let (scale, zp) = (params.scale[0], params.zero_point[0] as f32);
        // Ties (x/scale = k + 0.5), saturation both sides, zero, negative zero point.
        let xs: Vec<f32> = vec![
            0.0,
            10.0,
            -10.0,
            2.5 * scale,
            -2.5 * scale,
            1.0,
            -0.3,
            2.999,
            0.5 * scale,
        ];
        let got = vec(fake_quant(t(&xs), t(&[scale]), t(&[zp]), -128, 127));
        let want: Vec<f32> = xs.iter().map(|x| params.fake_quant(*x, 0)).collect();
        assert_eq!(got, want);
        // Symmetric weights with a negative value at the tie.
        let params = crate::QuantParams::symmetric(&[1.27], false);
        let xs = [0.015, -0.015, 1.27, -1.3, 0.0];
        let got = vec(fake_quant(
            t(&xs),
            t(&[params.scale[0]]),
            t(&[0.0]),
            -127,
            127,
        ));
        let want: Vec<f32> = xs.iter().map(|x| params.fake_quant(*x, 0)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn per_tensor_variant_matches_host_and_tensor_variant() {
        let p = crate::QuantParams::asymmetric(-0.7, 5.3).unwrap();
        let (scale, zp) = (p.scale[0], p.zero_point[0]);
        let mut xs: Vec<f32> = (0..400).map(|i| (i as f32 - 100.0) * 0.0173).collect();
        xs.extend([2.5 * scale, (0.5 + zp as f32) * scale, 1e4, -1e4, 0.0]);
        let want: Vec<f32> = xs.iter().map(|x| p.fake_quant(*x, 0)).collect();
        assert_eq!(vec(fake_quant_per_tensor(t(&xs), &p)), want);
        assert_eq!(
            vec(fake_quant(t(&xs), t(&[scale]), t(&[zp as f32]), -128, 127)),
            want
        );
    }

    #[test]
    fn rounding_is_exact_near_every_tie() {
        // Values one ulp around n + 0.5 for many n, both signs.
        let mut xs = Vec::new();
        for n in [
            0.0f32, 1.0, 2.0, 3.0, 7.0, 100.0, 4095.0, 65535.0, 1048575.0,
        ] {
            let tie = n + 0.5;
            for v in [
                f32::from_bits(tie.to_bits() - 1),
                tie,
                f32::from_bits(tie.to_bits() + 1),
            ] {
                xs.push(v);
                xs.push(-v);
            }
        }
        let want: Vec<f32> = xs.iter().map(|x| x.round()).collect();
        assert_eq!(vec(round_half_away(t(&xs))), want);
    }

    #[test]
    fn gradient_passes_inside_the_range_and_stops_outside() {
        let device = Device::flex().autodiff();
        let x = Tensor::<1>::from_data(
            TensorData::new(vec![-5.0f32, -0.5, 0.0, 0.7, 5.0], [5]),
            &device,
        )
        .require_grad();
        // Range [-1, 1]: scale 2/255, zero point 0 (round(-128 + 127.5) = round(-0.5) = -1).
        let p = crate::QuantParams::asymmetric(-1.0, 1.0).unwrap();
        let scale = Tensor::<1>::from_data(TensorData::new(vec![p.scale[0]], [1]), &device);
        let zp =
            Tensor::<1>::from_data(TensorData::new(vec![p.zero_point[0] as f32], [1]), &device);
        let y = fake_quant(x.clone(), scale, zp, -128, 127);
        let grads = y.sum().backward();
        let g = collab_core::host::to_vec_f32(x.grad(&grads).unwrap());
        assert_eq!(g, vec![0.0, 1.0, 1.0, 1.0, 0.0]);
        let y = fake_quant_per_tensor(x.clone(), &p);
        let grads = y.sum().backward();
        let g = collab_core::host::to_vec_f32(x.grad(&grads).unwrap());
        assert_eq!(g, vec![0.0, 1.0, 1.0, 1.0, 0.0]);
    }
}
