//! A user's own burn model, compressed as a whole without changing its types: pruning 50%, then
//! clustering 8 values per tensor with the zeros preserved, each stage trained with Adam, saved
//! and loaded, and baked into the plain model.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleVisitor, Param, ParamGroup};
use burn::nn::attention::{MhaInput, MultiHeadAttention, MultiHeadAttentionConfig};
use burn::nn::conv::{
    Conv1d, Conv1dConfig, Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig,
};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::pool::{MaxPool1d, MaxPool1dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Embedding, EmbeddingConfig, Linear, LinearConfig, Lstm, LstmConfig,
    PaddingConfig1d, PaddingConfig2d,
};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use collab_cluster::{ClusteringConfig, WholeClustering};
use collab_core::host::{distinct_count, to_vec_f32};
use collab_core::whole::{self, Selection};
use collab_prune::mask::prune_count;
use collab_prune::{PruningConfig, PruningSchedule, WholePruning};
use proptest::prelude::*;

const CLASSES: usize = 4;
const BATCH: usize = 6;

/// A residual conv block: conv-BN-ReLU, conv, + input, ReLU.
#[derive(Module, Debug)]
struct Block {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
}

impl Block {
    fn new(channels: usize, device: &Device) -> Self {
        let conv = || {
            Conv2dConfig::new([channels, channels], [3, 3])
                .with_padding(PaddingConfig2d::Same)
                .init(device)
        };
        Self {
            conv1: conv(),
            bn1: BatchNormConfig::new(channels).init(device),
            conv2: conv(),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = relu(self.bn1.forward(self.conv1.forward(x.clone())));
        relu(self.conv2.forward(y) + x)
    }
}

/// Conv1d stem → max pool → two residual blocks → concat with a 1×1 branch → max pool →
/// tokens + position embedding → self-attention (residual) → LSTM; a transposed-conv branch is
/// pooled and concatenated with the LSTM's last hidden state before the classifier.
#[derive(Module, Debug)]
struct Net {
    stem: Conv1d,
    pool1: MaxPool1d,
    blocks: Vec<Block>,
    branch: Conv2d,
    pool2: MaxPool2d,
    up: ConvTranspose2d,
    pos: Embedding,
    attn: MultiHeadAttention,
    lstm: Lstm,
    head: Linear,
}

impl Net {
    fn new(device: &Device) -> Self {
        Self {
            stem: Conv1dConfig::new(4, 8, 3)
                .with_padding(PaddingConfig1d::Same)
                .init(device),
            pool1: MaxPool1dConfig::new(2).init(),
            blocks: vec![Block::new(8, device), Block::new(8, device)],
            branch: Conv2dConfig::new([8, 8], [1, 1]).init(device),
            pool2: MaxPool2dConfig::new([2, 2]).init(),
            up: ConvTranspose2dConfig::new([16, 8], [2, 2])
                .with_stride([2, 2])
                .init(device),
            pos: EmbeddingConfig::new(4, 16).init(device),
            attn: MultiHeadAttentionConfig::new(16, 2)
                .with_dropout(0.0)
                .init(device),
            lstm: LstmConfig::new(16, 12, true).init(device),
            head: LinearConfig::new(12 + 8, CLASSES).init(device),
        }
    }

    /// `[batch, 4, 32]` → logits `[batch, CLASSES]`.
    fn forward(&self, x: Tensor<3>) -> Tensor<2> {
        let [b, _, _] = x.dims();
        let device = x.device();
        let s = self.pool1.forward(relu(self.stem.forward(x))); // [b, 8, 16]
        let mut m: Tensor<4> = s.reshape([b, 8, 4, 4]);
        for block in &self.blocks {
            m = block.forward(m);
        }
        let c = Tensor::cat(vec![m.clone(), relu(self.branch.forward(m))], 1); // [b, 16, 4, 4]
        let p = self.pool2.forward(c); // [b, 16, 2, 2]
        let u = relu(self.up.forward(p.clone())); // [b, 8, 4, 4]
        let u: Tensor<2> = u.mean_dim(3).mean_dim(2).reshape([b, 8]);
        let tokens: Tensor<3> = p.reshape([b, 16, 4]).swap_dims(1, 2); // [b, 4, 16]
        let ids = Tensor::<1, Int>::arange(0..4, &device)
            .reshape([1, 4])
            .repeat_dim(0, b);
        let tokens = tokens + self.pos.forward(ids);
        let tokens = tokens.clone() + self.attn.forward(MhaInput::self_attn(tokens)).context;
        let (_, state) = self.lstm.forward(tokens, None);
        self.head.forward(Tensor::cat(vec![state.hidden, u], 1))
    }
}

fn device() -> Device {
    Device::flex().autodiff()
}

fn batch(seed: u64, device: &Device) -> (Tensor<3>, Tensor<1, Int>) {
    device.seed(seed);
    let x = Tensor::<3>::random([BATCH, 4, 32], Distribution::Normal(0.0, 1.0), device);
    let labels: Vec<i64> = (0..BATCH as i64)
        .map(|i| (i + seed as i64) % CLASSES as i64)
        .collect();
    (
        x,
        Tensor::from_data(TensorData::new(labels, [BATCH]), device),
    )
}

/// Every float parameter by path (effective values of a plain model).
#[derive(Default)]
struct Floats {
    stack: Vec<String>,
    values: BTreeMap<String, Vec<f32>>,
}

impl ModuleVisitor for Floats {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.stack.push(name.into());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.values
            .insert(self.stack.join("."), to_vec_f32(param.val()));
    }
}

/// The effective weights of the wrapped parameters of `model`, by path.
fn effective<M: Module>(model: &M) -> BTreeMap<String, Vec<f32>> {
    let wrapped: Vec<String> = whole::scan(model, None)
        .into_iter()
        .map(|w| w.site.path)
        .collect();
    let mut floats = Floats::default();
    whole::strip(model.valid()).visit(&mut floats);
    floats
        .values
        .into_iter()
        .filter(|(path, _)| wrapped.contains(path))
        .collect()
}

fn zero_set(values: &[f32]) -> Vec<bool> {
    values.iter().map(|v| *v == 0.0).collect()
}

/// Adam steps on fixed random batches; `before` runs before each forward pass.
fn train<M: Module + Clone>(
    mut model: M,
    steps: u64,
    forward: impl Fn(&M, Tensor<3>) -> Tensor<2>,
    mut before: impl FnMut(M, u64) -> M,
) -> M {
    let device = device();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut optim = AdamConfig::new().init();
    for step in 1..=steps {
        model = before(model, step);
        let (x, y) = batch(100 + step, &device);
        let loss = loss_fn.forward(forward(&model, x), y);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(5e-2, model, grads);
    }
    model
}

fn outputs(model: &Net) -> Vec<f32> {
    let device = Device::flex();
    let (x, _) = batch(7, &device);
    to_vec_f32(model.valid().forward(x))
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(diff <= 1e-5, "{what}: outputs differ by {diff}");
}

fn save_load(model: &Net, fresh: Net, dir: &tempfile::TempDir, name: &str) -> Net {
    let path = dir.path().join(name);
    model.clone().save_file(&path).unwrap();
    fresh.try_load_file(&path).unwrap()
}

const EXPECTED_WEIGHTS: &[&str] = &[
    "stem.weight",
    "blocks.0.conv1.weight",
    "blocks.0.conv2.weight",
    "blocks.1.conv1.weight",
    "blocks.1.conv2.weight",
    "branch.weight",
    "up.weight",
    "pos.weight",
    "attn.query.weight",
    "attn.key.weight",
    "attn.value.weight",
    "attn.output.weight",
    "lstm.input_gate.input_transform.weight",
    "lstm.input_gate.hidden_transform.weight",
    "lstm.forget_gate.input_transform.weight",
    "lstm.forget_gate.hidden_transform.weight",
    "lstm.output_gate.input_transform.weight",
    "lstm.output_gate.hidden_transform.weight",
    "lstm.cell_gate.input_transform.weight",
    "lstm.cell_gate.hidden_transform.weight",
    "head.weight",
];

#[test]
fn prune_then_cluster_a_whole_model() {
    let device = device();
    let dir = tempfile::tempdir().unwrap();
    device.seed(1);
    let net = Net::new(&device);

    // Stage 1: prune 20% → 50% over steps 1..4, a mask update every step.
    let pruning = WholePruning::new(PruningConfig::new(
        PruningSchedule::polynomial(0.2, 0.5, 1, 4).with_frequency(1),
    ));
    let (net, wrapped) = pruning.wrap(net).unwrap();
    let mut paths: Vec<&str> = wrapped.wrapped.iter().map(|s| s.path.as_str()).collect();
    paths.sort();
    let mut expected = EXPECTED_WEIGHTS.to_vec();
    expected.sort();
    assert_eq!(paths, expected, "the weights found");
    for left in &wrapped.left_as_is {
        assert!(left.shape.len() < 2, "{left:?}");
    }
    assert!(
        wrapped
            .left_as_is
            .iter()
            .any(|l| l.path == "blocks.0.bn1.gamma")
    );
    let up = wrapped
        .wrapped
        .iter()
        .find(|s| s.path == "up.weight")
        .unwrap();
    assert_eq!(
        (up.layer.as_str(), up.channel_axis),
        ("ConvTranspose2d", Some(1))
    );

    // Adam keeps updating the stored weights under the masks (momentum from steps before a
    // weight was pruned); the effective zeros must only grow, step after step.
    let bases = |net: &Net| -> BTreeMap<String, Vec<f32>> {
        whole::scan(net, Some("prune"))
            .into_iter()
            .map(|w| (w.site.path, to_vec_f32(w.base)))
            .collect()
    };
    let initial = bases(&net);
    let mut previous: BTreeMap<String, Vec<bool>> = BTreeMap::new();
    let net = train(net, 6, Net::forward, |net, step| {
        let net = pruning.advance(net).unwrap();
        for (path, values) in effective(&net) {
            let zeros = zero_set(&values);
            if let Some(before) = previous.get(&path) {
                for (i, (was, is)) in before.iter().zip(&zeros).enumerate() {
                    assert!(!was || *is, "{path}[{i}] came back at step {step}");
                }
            }
            previous.insert(path, zeros);
        }
        net
    });
    // Some stored weights under a mask did move (so the mask, not a zero gradient, keeps them
    // out).
    let moved_under_mask = bases(&net).iter().any(|(path, base)| {
        base.iter()
            .zip(&initial[path])
            .zip(&previous[path])
            .any(|((now, was), pruned)| *pruned && now != was)
    });
    assert!(moved_under_mask);
    let report = pruning.report(&net).unwrap();
    assert_eq!(report.len(), EXPECTED_WEIGHTS.len());
    for layer in &report {
        assert_eq!(layer.step, 6, "{}", layer.name);
        assert!((layer.target_sparsity - 0.5).abs() < 1e-6, "{}", layer.name);
        assert_eq!(
            layer.pruned,
            prune_count(layer.weights, 0.5),
            "{}",
            layer.name
        );
        assert!(layer.zeros >= layer.pruned, "{}", layer.name);
    }
    for stats in whole::report(&net) {
        assert_eq!(stats.wrapper, "prune");
        assert!(stats.zeros_fraction >= 0.49, "{stats:?}");
    }

    // The state is in the record: a fresh model (other init) wrapped the same way loads it.
    device.seed(99);
    let (fresh, _) = pruning.wrap(Net::new(&device)).unwrap();
    let loaded = save_load(&net, fresh, &dir, "pruned.bpk");
    assert_eq!(pruning.report(&loaded).unwrap(), report);
    assert_close(&outputs(&loaded), &outputs(&net), "pruned, loaded");
    // An unwrapped model does not take the wrapper's state.
    device.seed(99);
    assert!(
        Net::new(&device)
            .try_load_file(dir.path().join("pruned.bpk"))
            .is_err()
    );

    // Moved to another device (autodiff → plain), the masks come along.
    let moved = net.clone().to_device(&Device::flex());
    assert_eq!(moved.devices(), vec![Device::flex()]);
    assert_close(&outputs(&moved), &outputs(&net), "pruned, moved");

    // Baked into the plain model: no wrapper left, same outputs, loadable as a plain `Net`.
    let pruned = whole::strip(net.clone());
    assert!(whole::scan(&pruned, None).is_empty());
    assert_close(&outputs(&pruned), &outputs(&net), "pruned, stripped");
    device.seed(5);
    let reloaded = save_load(&pruned, Net::new(&device), &dir, "pruned-plain.bpk");
    assert_close(&outputs(&reloaded), &outputs(&net), "pruned, plain reload");
    let pruned_zeros: BTreeMap<String, Vec<bool>> = effective(&net)
        .into_iter()
        .map(|(p, v)| (p, zero_set(&v)))
        .collect();

    // Stage 2: 8 clusters per tensor, zeros preserved.
    let clustering = WholeClustering::new(ClusteringConfig::new(8).with_preserve_sparsity(true));
    let (net, _) = clustering.wrap(pruned).unwrap();
    let net = train(net, 4, Net::forward, |net, _| net);
    let check = |net: &Net, what: &str| {
        let values = effective(net);
        assert_eq!(values.len(), EXPECTED_WEIGHTS.len());
        for (path, values) in &values {
            assert_eq!(
                &zero_set(values),
                &pruned_zeros[path],
                "{what}: {path} zeros"
            );
            assert!(distinct_count(values) <= 8, "{what}: {path}");
        }
    };
    check(&net, "clustered");
    for r in clustering.report(&net).unwrap() {
        assert!(r.unique_per_tensor <= 8 && r.num_clusters == 8, "{r:?}");
        assert_eq!(r.centroids.len(), 1);
        assert_eq!(r.centroids[0][0], 0.0, "the pinned zero centroid");
    }

    device.seed(42);
    let (fresh, _) = clustering.wrap(Net::new(&device)).unwrap();
    let loaded = save_load(&net, fresh, &dir, "clustered.bpk");
    check(&loaded, "clustered, loaded");
    assert_eq!(
        clustering.report(&loaded).unwrap(),
        clustering.report(&net).unwrap()
    );
    assert_close(&outputs(&loaded), &outputs(&net), "clustered, loaded");

    let plain = whole::strip(net.clone());
    assert_close(&outputs(&plain), &outputs(&net), "clustered, stripped");
    device.seed(6);
    let reloaded = save_load(&plain, Net::new(&device), &dir, "clustered-plain.bpk");
    assert_close(
        &outputs(&reloaded),
        &outputs(&net),
        "clustered, plain reload",
    );
    let mut floats = Floats::default();
    reloaded.visit(&mut floats);
    for path in EXPECTED_WEIGHTS {
        let values = &floats.values[*path];
        assert_eq!(&zero_set(values), &pruned_zeros[*path], "{path}");
        assert!(distinct_count(values) <= 8, "{path}");
    }
}

/// Three layers of random shapes, for the property test.
#[derive(Module, Debug)]
struct Small {
    conv: Conv2d,
    up: ConvTranspose2d,
    fc: Linear,
}

impl Small {
    fn forward(&self, x: Tensor<3>) -> Tensor<2> {
        let [b, c, l] = x.dims();
        let side = (l as f64).sqrt() as usize;
        let x: Tensor<4> = x.narrow(2, 0, side * side).reshape([b, c, side, side]);
        let y: Tensor<4> = relu(self.up.forward(relu(self.conv.forward(x))));
        let y: Tensor<2> = y.mean_dim(3).mean_dim(2).flatten(1, 3);
        self.fc.forward(y)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Pruned to any sparsity, then clustered to any k (per tensor or per channel) with the
    /// zeros preserved and trained a step: the zeros are exactly the pruned ones and at most k
    /// values remain per tensor (per channel).
    #[test]
    fn zeros_and_k_survive_clustering_and_training(
        out in 2usize..6,
        kernel in 1usize..4,
        hidden in 4usize..12,
        sparsity in 0.1f64..0.8,
        k in 2usize..7,
        per_channel in any::<bool>(),
        seed in 0u64..1000,
    ) {
        let device = device();
        device.seed(seed);
        let small = Small {
            conv: Conv2dConfig::new([4, out], [kernel, kernel]).init(&device),
            up: ConvTranspose2dConfig::new([out, out + 1], [2, 2]).init(&device),
            fc: LinearConfig::new(out + 1, hidden).init(&device),
        };
        let pruning = WholePruning::new(PruningConfig::new(PruningSchedule::constant(sparsity)))
            .with_selection(Selection::only(ParamGroup::all()));
        let (small, _) = pruning.wrap(small).unwrap();
        let small = whole::strip(pruning.prune_to(small, sparsity).unwrap());
        let mut floats = Floats::default();
        small.visit(&mut floats);
        let zeros: BTreeMap<String, Vec<bool>> = floats.values.into_iter()
            .filter(|(p, _)| p.ends_with("weight"))
            .map(|(p, v)| (p, zero_set(&v)))
            .collect();

        let config = ClusteringConfig::new(k)
            .with_per_channel(per_channel)
            .with_preserve_sparsity(true);
        let small = match WholeClustering::new(config).wrap(small) {
            Ok((small, _)) => small,
            Err(err) => {
                // k above the weights per channel is refused, naming the weight.
                let err = err.to_string();
                prop_assert!(err.contains("exceeds") && err.contains("weight"), "{}", err);
                return Ok(());
            }
        };
        let small = train(small, 1, Small::forward, |m, _| m);
        for stats in whole::report(&small) {
            prop_assert!(stats.max_unique_per_channel.unwrap() <= k, "{:?}", stats);
            prop_assert!(per_channel || stats.unique_values <= k, "{:?}", stats);
        }
        let values = effective(&small);
        for (path, values) in &values {
            prop_assert_eq!(&zero_set(values), &zeros[path], "{}", path);
            if !per_channel {
                prop_assert!(distinct_count(values) <= k);
            }
        }
        // A transposed convolution's output channels are on axis 1 of `[in, out, 2, 2]`.
        let up = &values["up.weight"];
        for channel in 0..out + 1 {
            let row: Vec<f32> = (0..out)
                .flat_map(|i| (0..4).map(move |p| (i * (out + 1) + channel) * 4 + p))
                .map(|j| up[j])
                .collect();
            prop_assert!(distinct_count(&row) <= k, "up channel {}", channel);
        }
    }
}

/// The int8 codes of `values` under per-channel symmetric quantization, channel `channel_of(i)`.
fn channel_codes(values: &[f32], channels: usize, channel_of: impl Fn(usize) -> usize) -> Vec<i32> {
    let mut max_abs = vec![0f32; channels];
    for (i, v) in values.iter().enumerate() {
        max_abs[channel_of(i)] = max_abs[channel_of(i)].max(v.abs());
    }
    let mut codes: Vec<i32> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let m = max_abs[channel_of(i)];
            if m > 0.0 {
                (v / (m / 127.0)).round() as i32
            } else {
                0
            }
        })
        .collect();
    codes.sort_unstable();
    codes.dedup();
    codes
}

#[test]
fn channel_scaled_whole_model_clustering_shares_int8_codes_across_channels() {
    let device = device();
    device.seed(5);
    let (out, kernel, hidden, k) = (5, 3, 9, 6);
    let small = Small {
        conv: Conv2dConfig::new([4, out], [kernel, kernel]).init(&device),
        up: ConvTranspose2dConfig::new([out, out + 1], [2, 2]).init(&device),
        fc: LinearConfig::new(out + 1, hidden).init(&device),
    };
    let config = ClusteringConfig::new(k).with_channel_scaled(true);
    let (small, _) = WholeClustering::new(config.clone()).wrap(small).unwrap();
    let small = train(small, 2, Small::forward, |m, _| m);
    let values = effective(&small);
    let conv = &values["conv.weight"];
    let per = 4 * kernel * kernel;
    let codes = channel_codes(conv, out, |i| i / per);
    assert!(codes.len() <= k, "conv: {codes:?}");
    // Transposed convolution `[in, out, 2, 2]`: channels on axis 1.
    let codes = channel_codes(&values["up.weight"], out + 1, |i| (i / 4) % (out + 1));
    assert!(codes.len() <= k, "up: {codes:?}");
    // Linear `[in, out]`: channels on axis 1.
    let codes = channel_codes(&values["fc.weight"], hidden, |i| i % hidden);
    assert!(codes.len() <= k, "fc: {codes:?}");
    // Per-channel clustering of the same model does not share them.
    let (small, _) = WholeClustering::new(ClusteringConfig::new(k).with_per_channel(true))
        .wrap(Small {
            conv: Conv2dConfig::new([4, out], [kernel, kernel]).init(&device),
            up: ConvTranspose2dConfig::new([out, out + 1], [2, 2]).init(&device),
            fc: LinearConfig::new(out + 1, hidden).init(&device),
        })
        .unwrap();
    let values = effective(&small);
    assert!(channel_codes(&values["conv.weight"], out, |i| i / per).len() > k);
    // The report shows the shared codebook on the grid, ending with −1 and +1.
    let (small, _) = WholeClustering::new(config.clone())
        .wrap(Small {
            conv: Conv2dConfig::new([4, out], [kernel, kernel]).init(&device),
            up: ConvTranspose2dConfig::new([out, out + 1], [2, 2]).init(&device),
            fc: LinearConfig::new(out + 1, hidden).init(&device),
        })
        .unwrap();
    for report in WholeClustering::new(config).report(&small).unwrap() {
        assert_eq!(report.centroids.len(), 1, "{report:?}");
        let row = &report.centroids[0];
        assert_eq!(&row[row.len() - 2..], &[-1.0, 1.0], "{report:?}");
        assert!(report.channel_scaled);
    }
}
