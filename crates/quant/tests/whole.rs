//! Whole-model weight QAT (`WholeQat`): every weight of an unmodified model trains with int8
//! fake-quantized values, per output channel wherever its layer puts the channels.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use collab_core::host::to_vec_f32;
use collab_core::whole::{self, Selection};
use collab_quant::{FusedActivation, QatConfig, WholeQat};

#[derive(Module, Debug)]
struct Net {
    conv: Conv2d,
    up: ConvTranspose2d,
    bias: Embedding,
    fc: Linear,
}

impl Net {
    fn new(device: &Device) -> Self {
        Self {
            conv: Conv2dConfig::new([3, 6], [3, 3]).init(device),
            up: ConvTranspose2dConfig::new([6, 5], [2, 2])
                .with_stride([2, 2])
                .init(device),
            bias: EmbeddingConfig::new(2, 5).init(device),
            fc: LinearConfig::new(5, 4).init(device),
        }
    }

    /// `[batch, 3, 6, 6]` → `[batch, 4]`.
    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let [b, _, _, _] = x.dims();
        let y = relu(self.up.forward(relu(self.conv.forward(x)))); // [b, 5, 8, 8]
        let y: Tensor<2> = y.mean_dim(3).mean_dim(2).reshape([b, 5]);
        let ids = Tensor::<2, Int>::zeros([b, 1], &y.device());
        let e: Tensor<2> = self.bias.forward(ids).reshape([b, 5]);
        self.fc.forward(y + e)
    }
}

fn device() -> Device {
    Device::flex().autodiff()
}

fn input(seed: u64, device: &Device) -> Tensor<4> {
    device.seed(seed);
    Tensor::random([4, 3, 6, 6], Distribution::Normal(0.0, 1.0), device)
}

/// `values` of a weight with `shape` grouped by `axis` (the output channels).
fn channels(values: &[f32], shape: &[usize], axis: usize) -> Vec<Vec<f32>> {
    let inner: usize = shape[axis + 1..].iter().product();
    let mut rows = vec![Vec::new(); shape[axis]];
    for (i, v) in values.iter().enumerate() {
        rows[(i / inner) % shape[axis]].push(*v);
    }
    rows
}

/// Every value is `q · max|c| / 127` for an integer `|q| <= 127`.
fn assert_int8(rows: &[Vec<f32>], what: &str) {
    for (c, row) in rows.iter().enumerate() {
        let scale = row.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
        for v in row {
            let q = v / scale;
            assert!(
                (q - q.round()).abs() < 1e-3 && q.abs() <= 127.001,
                "{what} channel {c}: {v} is {q} steps of {scale}"
            );
        }
    }
}

#[test]
fn weights_train_int8_representable_per_channel() {
    let device = device();
    device.seed(2);
    let net = Net::new(&device);
    let qat = WholeQat::new(QatConfig::new().with_weight_per_channel(true)).unwrap();
    let (mut net, wrapped) = qat.wrap(net).unwrap();
    assert_eq!(wrapped.wrapped.len(), 4);

    let mut optim = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let before = to_vec_f32(net.fc.weight.base());
    for step in 0..3 {
        let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 3], [4]), &device);
        let loss = loss_fn.forward(net.forward(input(step, &device)), y);
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = optim.step(1e-2, net, grads);
    }
    assert_ne!(
        to_vec_f32(net.fc.weight.base()),
        before,
        "straight-through gradients"
    );

    let plain = whole::strip(net.valid());
    // Output channels: axis 0 of a convolution, axis 1 of a transposed convolution, of
    // `Linear` and of `Embedding` ([d_input, d_output]).
    let weights: [(Tensor<4>, usize, &str); 2] = [
        (plain.conv.weight.val(), 0, "conv"),
        (plain.up.weight.val(), 1, "up"),
    ];
    for (w, axis, what) in weights {
        let shape = w.dims().to_vec();
        assert_int8(&channels(&to_vec_f32(w), &shape, axis), what);
    }
    for (w, what) in [
        (plain.fc.weight.val(), "fc"),
        (plain.bias.weight.val(), "bias"),
    ] {
        let shape = w.dims().to_vec();
        assert_int8(&channels(&to_vec_f32(w), &shape, 1), what);
    }
    for stats in whole::report(&net) {
        assert_eq!(stats.wrapper, "qat");
        assert!(stats.max_unique_per_channel.unwrap() <= 255, "{stats:?}");
    }

    // The report's scales are the ones the stripped weights were quantized with: each
    // channel's largest magnitude is 127 steps.
    let report = qat.report(&net).unwrap();
    assert_eq!(report.len(), 4);
    let stripped: [(Vec<f32>, Vec<usize>, usize); 4] = [
        (
            to_vec_f32(plain.conv.weight.val()),
            plain.conv.weight.dims().to_vec(),
            0,
        ),
        (
            to_vec_f32(plain.up.weight.val()),
            plain.up.weight.dims().to_vec(),
            1,
        ),
        (
            to_vec_f32(plain.bias.weight.val()),
            plain.bias.weight.dims().to_vec(),
            1,
        ),
        (
            to_vec_f32(plain.fc.weight.val()),
            plain.fc.weight.dims().to_vec(),
            1,
        ),
    ];
    for (r, (values, shape, axis)) in report.iter().zip(&stripped) {
        assert_eq!((r.weight_bits, r.per_channel), (8, true), "{r:?}");
        assert_eq!(r.weights, values.len(), "{r:?}");
        let rows = channels(values, shape, *axis);
        assert_eq!(r.weight_scales.len(), rows.len(), "{r:?}");
        for (row, scale) in rows.iter().zip(&r.weight_scales) {
            let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(
                (max / scale - 127.0).abs() < 1e-3,
                "{}: {max} / {scale}",
                r.name
            );
        }
    }

    // The stripped model computes what the wrapped one does.
    let x = input(9, &Device::flex());
    let wrapped_out = to_vec_f32(net.valid().forward(x.clone()));
    let plain_out = to_vec_f32(plain.forward(x.clone()));
    assert_eq!(wrapped_out, plain_out);

    // The record holds the float weights (no QAT state): a fresh model wrapped the same way
    // computes the same; the stripped model's record holds the quantized weights.
    let dir = tempfile::tempdir().unwrap();
    net.clone().save_file(dir.path().join("qat.bpk")).unwrap();
    device.seed(77);
    let (fresh, _) = qat.wrap(Net::new(&device)).unwrap();
    let loaded = fresh.load_file(dir.path().join("qat.bpk"));
    assert_eq!(to_vec_f32(loaded.valid().forward(x)), wrapped_out);
}

#[derive(Module, Debug)]
struct Custom {
    table: Param<Tensor<2>>,
    fc: Linear,
}

#[test]
fn activations_and_unknown_axes_are_refused_with_the_way_out() {
    let err = WholeQat::new(QatConfig::new().with_activation(FusedActivation::Relu))
        .unwrap_err()
        .to_string();
    assert!(err.contains("GraphBuilder"), "{err}");
    let err = WholeQat::new(QatConfig::new().with_input(true))
        .unwrap_err()
        .to_string();
    assert!(err.contains("GraphBuilder"), "{err}");

    let device = device();
    let custom = || Custom {
        table: Param::from_tensor(Tensor::random(
            [4, 6],
            Distribution::Normal(0.0, 1.0),
            &device,
        )),
        fc: LinearConfig::new(6, 4).init(&device),
    };
    let per_channel = WholeQat::new(QatConfig::new().with_weight_per_channel(true)).unwrap();
    let err = per_channel.wrap(custom()).unwrap_err().to_string();
    assert!(
        err.contains("`table`") && err.contains("with_channel_axis"),
        "{err}"
    );
    // Declared, or per tensor: accepted.
    assert!(
        per_channel
            .clone()
            .with_selection(Selection::all().with_channel_axis("table", 0))
            .wrap(custom())
            .is_ok()
    );
    let (model, _) = WholeQat::new(QatConfig::new().with_weight_per_channel(false))
        .unwrap()
        .wrap(custom())
        .unwrap();
    let table = to_vec_f32(whole::strip(model).table.val());
    assert_int8(&[table], "table per tensor");
}
