//! 2-D convolution formulated for fast training on CPU backends.
//!
//! burn's own `conv2d` is correct everywhere, but its backward pass is slow for the layers that
//! make up DS-CNN and MobileNet (pointwise, few-tap stems, strided depthwise). [`conv2d`]
//! computes the same function with other burn tensor ops whose backward passes are fast, so
//! autodiff, every backend and every wrapper keep working:
//!
//! | layer | formulation |
//! |---|---|
//! | pointwise 1×1, `groups = 1` | one GEMM `[C_out, C_in] × [C_in, N·H·W]` over a channel-major view |
//! | few input taps (`C_in/groups · kh · kw ≤ 64`, `groups = 1`), e.g. a 1-channel stem | im2col from strided slices, one batched GEMM |
//! | depthwise on `flex` | [`super::depthwise`]: our forward and backward kernels |
//! | depthwise with stride > 1 elsewhere | burn's stride-1 depthwise, then a strided slice |
//! | anything else (dilation, grouped, large kernels) | burn's `conv2d` |
//!
//! `cargo bench --bench train_kernels` times them (`BENCHMARKS.md`). The results equal burn's
//! `conv2d` up to float summation order (the tests check values and gradients against burn's op). Set `COLLAB_BURN_CONV=1`
//! (read once per process) to route every call to burn's `conv2d`, for comparison.

use super::depthwise::depthwise_conv2d;
use super::extension::has_flex_kernels;
use super::layout::channels_last;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::module::conv2d as burn_conv2d;
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{Device, Tensor, s};

/// The largest `C_in/groups · kh · kw` for which im2col + GEMM replaces burn's conv.
const MAX_IM2COL_TAPS: usize = 64;

/// How one convolution is computed; [`plan`] picks it from the shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Formulation {
    /// burn's `conv2d`.
    Burn,
    /// 1×1 kernel, one group, no padding: a single GEMM over the channel-major input.
    Pointwise,
    /// One group and few taps per output: im2col from strided slices and a batched GEMM.
    Im2col,
    /// Depthwise with stride > 1: stride-1 depthwise, then a strided slice.
    StridedDepthwise,
    /// Depthwise on flex: our kernels ([`super::depthwise`]).
    Depthwise,
}

/// Convolution settings in one place: stride, `(begin, end)` padding per spatial axis,
/// dilation and groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvSpec {
    /// `[height, width]` stride.
    pub stride: [usize; 2],
    /// `[(top, bottom), (left, right)]` zero padding.
    pub padding: [(usize, usize); 2],
    /// `[height, width]` dilation.
    pub dilation: [usize; 2],
    /// Groups (`C_in` for depthwise).
    pub groups: usize,
}

impl ConvSpec {
    /// The settings of `layer` for an input of spatial size `[height, width]`, with TF/burn
    /// SAME padding resolved to explicit `(begin, end)` pairs.
    pub fn of(layer: &Conv2d, [height, width]: [usize; 2]) -> Self {
        let padding = match &layer.padding {
            PaddingConfig2d::Valid => [(0, 0), (0, 0)],
            PaddingConfig2d::Same => [
                same_padding(layer.kernel_size[0], layer.stride[0], height),
                same_padding(layer.kernel_size[1], layer.stride[1], width),
            ],
            PaddingConfig2d::Explicit(top, left, bottom, right) => {
                [(*top, *bottom), (*left, *right)]
            }
        };
        Self {
            stride: layer.stride,
            padding,
            dilation: layer.dilation,
            groups: layer.groups,
        }
    }

    fn options(&self) -> ConvOptions<2> {
        ConvOptions::new_with_padding(self.stride, self.padding, self.dilation, self.groups)
    }

    /// The output's spatial size for an input of `[height, width]` and a `[kh, kw]` kernel.
    pub fn output_size(&self, [height, width]: [usize; 2], [kh, kw]: [usize; 2]) -> [usize; 2] {
        let out = |size: usize, k: usize, axis: usize| {
            let (b, e) = self.padding[axis];
            let span = self.dilation[axis] * (k - 1) + 1;
            (size + b + e).saturating_sub(span) / self.stride[axis] + 1
        };
        [out(height, kh, 0), out(width, kw, 1)]
    }
}

/// TF's (and burn's) SAME padding: output `ceil(size / stride)`, the extra row at the end.
fn same_padding(kernel: usize, stride: usize, size: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = if out > 0 {
        ((out - 1) * stride + kernel).saturating_sub(size)
    } else {
        0
    };
    (total / 2, total - total / 2)
}

/// The formulation [`conv2d`] uses for an input `[N, C_in, H, W]`, a weight
/// `[C_out, C_in/groups, kh, kw]` and `spec`.
pub fn plan(
    input: [usize; 4],
    weight: [usize; 4],
    spec: &ConvSpec,
    device: &Device,
) -> Formulation {
    let [_, c_in, _, _] = input;
    let [c_out, per_group, kh, kw] = weight;
    static BURN_CONV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let burn_conv = *BURN_CONV.get_or_init(|| std::env::var_os("COLLAB_BURN_CONV").is_some());
    if spec.dilation != [1, 1] || burn_conv {
        return Formulation::Burn;
    }
    let depthwise = spec.groups == c_in && c_out == c_in && per_group == 1;
    if depthwise && has_flex_kernels(device) {
        return Formulation::Depthwise;
    }
    let no_padding = spec.padding == [(0, 0), (0, 0)];
    if spec.groups == 1 && [kh, kw] == [1, 1] && no_padding {
        return Formulation::Pointwise;
    }
    if spec.groups == 1 && per_group * kh * kw <= MAX_IM2COL_TAPS {
        return Formulation::Im2col;
    }
    if depthwise && spec.stride != [1, 1] {
        return Formulation::StridedDepthwise;
    }
    Formulation::Burn
}

/// 2-D convolution of `input` `[N, C_in, H, W]` with `weight` `[C_out, C_in/groups, kh, kw]`
/// and optional `bias` `[C_out]`, giving `[N, C_out, H_out, W_out]`; the same function as
/// burn's `conv2d` with `spec`, computed by the formulation [`plan`] picks.
pub fn conv2d(
    input: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    spec: &ConvSpec,
) -> Tensor<4> {
    let [n, c_in, h, w] = input.dims();
    let [c_out, per_group, kh, kw] = weight.dims();
    let formulation = plan(
        [n, c_in, h, w],
        [c_out, per_group, kh, kw],
        spec,
        &input.device(),
    );
    let out = match formulation {
        Formulation::Burn => return burn_conv2d(input, weight, bias, spec.options()),
        Formulation::Depthwise => {
            match depthwise_conv2d(input, weight, spec.stride, spec.padding) {
                Some(y) => y,
                None => unreachable!("plan picks Depthwise only where the kernel exists"),
            }
        }
        Formulation::Pointwise => {
            let input = subsample(input, spec.stride, [0, 0]);
            let [_, _, h, w] = input.dims();
            if has_flex_kernels(&input.device()) {
                // Channels last (see `super::layout`): `[N·H·W, C_in] × [C_in, C_out]` over the
                // input's buffer, the output a view of the product's. No copy when the input is
                // stored channels last (as the depthwise and BatchNorm kernels return it); one
                // transpose otherwise.
                let x = channels_last(input)
                    .permute([0, 2, 3, 1])
                    .reshape([n * h * w, c_in]);
                let y = x.matmul(weight.reshape([c_out, c_in]).transpose());
                y.reshape([n, h, w, c_out]).permute([0, 3, 1, 2])
            } else {
                // [C_in, N·H·W]: one transpose in, one GEMM each for output, input and weight
                // gradients, instead of a batched GEMM whose weight gradient is N partial
                // products.
                let x = input
                    .reshape([n, c_in, h * w])
                    .swap_dims(0, 1)
                    .reshape([c_in, n * h * w]);
                let y = weight.reshape([c_out, c_in]).matmul(x);
                y.reshape([c_out, n, h * w])
                    .swap_dims(0, 1)
                    .reshape([n, c_out, h, w])
            }
        }
        Formulation::Im2col => {
            let [ho, wo] = spec.output_size([h, w], [kh, kw]);
            let padded = input.pad(spec.padding, PadMode::Constant(0.0));
            let mut taps = Vec::with_capacity(kh * kw);
            for i in 0..kh {
                for j in 0..kw {
                    taps.push(strided_window(
                        padded.clone(),
                        [i, j],
                        [ho, wo],
                        spec.stride,
                    ));
                }
            }
            // Channel index of the columns: tap · C_in + c; the weight is reordered to match.
            let columns = Tensor::cat(taps, 1).reshape([n, kh * kw * c_in, ho * wo]);
            let weight = weight
                .permute([0, 2, 3, 1])
                .reshape([1, c_out, kh * kw * c_in]);
            weight.matmul(columns).reshape([n, c_out, ho, wo])
        }
        Formulation::StridedDepthwise => {
            let [ho, wo] = spec.output_size([h, w], [kh, kw]);
            // Stride-1 output k starts its window at k − p; the strided output i at
            // i·s − begin. A symmetric p ≥ begin lines them up at k = i·s + p − begin.
            let axis = |size: usize, k: usize, out: usize, a: usize| {
                let (begin, _) = spec.padding[a];
                let s = spec.stride[a];
                let p = begin.max(((out - 1) * s + k).saturating_sub(size + begin));
                (p, p - begin)
            };
            let (ph, oh) = axis(h, kh, ho, 0);
            let (pw, ow) = axis(w, kw, wo, 1);
            let dense = ConvSpec {
                stride: [1, 1],
                padding: [(ph, ph), (pw, pw)],
                dilation: [1, 1],
                groups: spec.groups,
            };
            let full = burn_conv2d(input, weight, None, dense.options());
            strided_window(full, [oh, ow], [ho, wo], spec.stride)
        }
    };
    // On flex one pass in the output's storage order (the depthwise and pointwise outputs are
    // stored channels last), elsewhere burn's broadcast add.
    super::bias::join_bias((out, bias))
}

/// Every `stride`-th row and column of `x`, starting at `offset`, `size` of them.
fn strided_window(
    x: Tensor<4>,
    [i, j]: [usize; 2],
    [ho, wo]: [usize; 2],
    [sh, sw]: [usize; 2],
) -> Tensor<4> {
    x.slice(s![
        ..,
        ..,
        i..i + (ho - 1) * sh + 1;sh as isize,
        j..j + (wo - 1) * sw + 1;sw as isize
    ])
}

/// `x` subsampled by `stride` from `offset` (identity for stride 1).
fn subsample(x: Tensor<4>, stride: [usize; 2], offset: [usize; 2]) -> Tensor<4> {
    if stride == [1, 1] {
        return x;
    }
    let [_, _, h, w] = x.dims();
    let ho = (h - offset[0]).div_ceil(stride[0]);
    let wo = (w - offset[1]).div_ceil(stride[1]);
    strided_window(x, offset, [ho, wo], stride)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, Tolerance};
    use proptest::prelude::*;

    fn device() -> Device {
        Device::flex().autodiff()
    }

    /// Values and the gradients of input, weight and bias against burn's `conv2d`, with the
    /// input stored channels first and channels last.
    fn check(input: [usize; 4], weight: [usize; 4], spec: ConvSpec, expect: Formulation) {
        check_layout(input, weight, spec, expect, false);
        check_layout(input, weight, spec, expect, true);
    }

    fn check_layout(
        input: [usize; 4],
        weight: [usize; 4],
        spec: ConvSpec,
        expect: Formulation,
        stored_channels_last: bool,
    ) {
        let dev = device();
        dev.seed(7);
        let x = Tensor::<4>::random(input, Distribution::Normal(0.0, 1.0), &dev).require_grad();
        let w = Tensor::<4>::random(weight, Distribution::Normal(0.0, 0.5), &dev).require_grad();
        let b =
            Tensor::<1>::random([weight[0]], Distribution::Normal(0.0, 1.0), &dev).require_grad();
        assert_eq!(
            plan(input, weight, &spec, &dev),
            expect,
            "{input:?} {weight:?} {spec:?}"
        );
        let input = if stored_channels_last {
            channels_last(x.clone())
        } else {
            x.clone()
        };
        let ours = conv2d(input, w.clone(), Some(b.clone()), &spec);
        let theirs = burn_conv2d(x.clone(), w.clone(), Some(b.clone()), spec.options());
        assert_eq!(ours.dims(), theirs.dims());
        let g = Tensor::<4>::random(ours.dims(), Distribution::Normal(0.0, 1.0), &dev);
        let tol = Tolerance::<f32>::absolute(1e-4).set_relative(1e-4);
        ours.clone()
            .into_data()
            .assert_approx_eq(&theirs.clone().into_data(), tol);
        let ga = (ours * g.clone()).sum().backward();
        let gb = (theirs * g).sum().backward();
        for (name, a, b) in [
            ("input", x.grad(&ga).unwrap(), x.grad(&gb).unwrap()),
            ("weight", w.grad(&ga).unwrap(), w.grad(&gb).unwrap()),
        ] {
            let (a, b) = (a.into_data(), b.into_data());
            assert_eq!(a.shape(), b.shape(), "{name}");
            a.assert_approx_eq::<f32>(&b, tol);
        }
        b.grad(&ga)
            .unwrap()
            .into_data()
            .assert_approx_eq::<f32>(&b.grad(&gb).unwrap().into_data(), tol);
    }

    fn spec(stride: [usize; 2], padding: [(usize, usize); 2], groups: usize) -> ConvSpec {
        ConvSpec {
            stride,
            padding,
            dilation: [1, 1],
            groups,
        }
    }

    #[test]
    fn the_ds_cnn_l_layers_equal_burn_conv_in_values_and_gradients() {
        // First conv 1→276 10×4 stride [2, 1] SAME on 49×10 (padding as burn resolves it).
        let stem = spec([2, 1], [same_padding(10, 2, 49), same_padding(4, 1, 10)], 1);
        check([3, 1, 49, 10], [16, 1, 10, 4], stem, Formulation::Im2col);
        check(
            [3, 16, 13, 5],
            [12, 16, 1, 1],
            spec([1, 1], [(0, 0); 2], 1),
            Formulation::Pointwise,
        );
        // Stride-2 depthwise with SAME's asymmetric (0, 1) padding on the width.
        let dw2 = spec([2, 2], [same_padding(3, 2, 25), same_padding(3, 2, 10)], 16);
        check([3, 16, 25, 10], [16, 1, 3, 3], dw2, Formulation::Depthwise);
        check(
            [3, 16, 13, 5],
            [16, 1, 3, 3],
            spec([1, 1], [(1, 1); 2], 16),
            Formulation::Depthwise,
        );
    }

    #[test]
    fn mobilenet_stem_and_strided_pointwise() {
        let stem = spec([2, 2], [same_padding(3, 2, 32), same_padding(3, 2, 32)], 1);
        check([2, 3, 32, 32], [8, 3, 3, 3], stem, Formulation::Im2col);
        check(
            [2, 6, 9, 7],
            [5, 6, 1, 1],
            spec([2, 3], [(0, 0); 2], 1),
            Formulation::Pointwise,
        );
    }

    #[test]
    fn same_padding_matches_burn_conv2d_module() {
        use burn::nn::conv::Conv2dConfig;
        let dev = Device::flex();
        for (k, s, size) in [([10, 4], [2, 1], [49, 10]), ([3, 3], [2, 2], [25, 10])] {
            let layer = Conv2dConfig::new([2, 3], k)
                .with_stride(s)
                .with_padding(PaddingConfig2d::Same)
                .init(&dev);
            let x = Tensor::<4>::random([1, 2, size[0], size[1]], Distribution::Default, &dev);
            let spec = ConvSpec::of(&layer, size);
            let ours = conv2d(
                x.clone(),
                layer.weight.val(),
                layer.bias.as_ref().map(|b| b.val()),
                &spec,
            );
            ours.into_data()
                .assert_approx_eq::<f32>(&layer.forward(x).into_data(), Tolerance::default());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Any stride, asymmetric padding, kernel and group layout: same values and gradients
        /// as burn's `conv2d`, whichever formulation is picked.
        #[test]
        fn equals_burn_conv2d(
            n in 1usize..3, c in 1usize..5, h in 1usize..9, w in 1usize..9,
            kh in 1usize..5, kw in 1usize..5, sh in 1usize..4, sw in 1usize..4,
            pads in proptest::array::uniform4(0usize..3), depthwise: bool, co in 1usize..5,
        ) {
            let padding = [(pads[0], pads[1]), (pads[2], pads[3])];
            prop_assume!(h + pads[0] + pads[1] >= kh && w + pads[2] + pads[3] >= kw);
            let (groups, out, per_group) = if depthwise { (c, c, 1) } else { (1, co, c) };
            let spec = spec([sh, sw], padding, groups);
            let expect = plan([n, c, h, w], [out, per_group, kh, kw], &spec, &device());
            check([n, c, h, w], [out, per_group, kh, kw], spec, expect);
        }
    }
}
