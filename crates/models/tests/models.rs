//! Model shapes, parameter / MAC counts against the papers, and the published DS-CNN weights
//! against TensorFlow's own logits and accuracy.

use burn::nn::Linear;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use collab_core::host::to_vec_f32;
use collab_data::shared::{read_safetensor_f32, require_shared};
use collab_data::{Frontend, SpeechCommands, Split};
use collab_models::{
    ConvBlock, DsCnnConfig, DsCnnSize, GraphNet, GraphSpec, IntoGraph, MobileNetV1Config,
    MobileNetV2Config, ModelError, Variant, import,
};

#[test]
fn parameter_and_mac_counts_match_the_papers() {
    // ML-KWS-for-MCU (conv/fc weights + biases, BatchNorm excluded).
    let l = DsCnnConfig::new(DsCnnSize::L).info().unwrap();
    assert_eq!(l.params, 410_700);
    assert_eq!(l.batch_norm_params, 4 * 276 * 11);
    assert_eq!(
        DsCnnConfig::new(DsCnnSize::M).info().unwrap().params,
        135_032
    );
    assert_eq!(
        DsCnnConfig::new(DsCnnSize::S).info().unwrap().params,
        22_604
    );
    // MobileNet v1-224: 4.2 M parameters (Keras: 4,253,864 incl. 43,776 BatchNorm), 569 M MACs.
    let v1 = MobileNetV1Config::new(Variant::Imagenet, 1000)
        .info()
        .unwrap();
    assert_eq!(v1.params, 4_210_088);
    assert!(
        (v1.macs as f64 / 569e6 - 1.0).abs() < 0.01,
        "v1 MACs {}",
        v1.macs
    );
    // MobileNet v2-224: 3.47 M parameters, 300 M MACs.
    let v2 = MobileNetV2Config::new(Variant::Imagenet, 1000)
        .info()
        .unwrap();
    assert!(
        (v2.params as f64 / 3.47e6 - 1.0).abs() < 0.01,
        "v2 params {}",
        v2.params
    );
    assert!(
        (v2.macs as f64 / 300e6 - 1.0).abs() < 0.03,
        "v2 MACs {}",
        v2.macs
    );
    assert!(l.table().contains("ds-cnn-l: 410700 parameters"));
}

#[test]
fn forward_shapes_and_counted_params_agree_with_the_modules() {
    let device = Device::flex();
    let x = Tensor::<4>::zeros([2, 1, 49, 10], &device);
    for size in [DsCnnSize::S, DsCnnSize::M, DsCnnSize::L] {
        let config = DsCnnConfig::new(size);
        let model = config.init(&device).unwrap();
        assert_eq!(model.forward(x.clone()).dims(), [2, 12]);
        // Module parameters = counted weights and biases + BatchNorm γ, β (running stats too).
        let info = config.info().unwrap();
        assert_eq!(
            burn::module::Module::num_params(&model),
            info.params + info.batch_norm_params
        );
    }
    let v1 = MobileNetV1Config {
        width: 0.25,
        ..MobileNetV1Config::new(Variant::Cifar, 10)
    };
    let m = v1.init(&device).unwrap();
    assert_eq!(
        m.forward(Tensor::zeros([2, 3, 32, 32], &device)).dims(),
        [2, 10]
    );
    let v2 = MobileNetV2Config {
        width: 0.35,
        ..MobileNetV2Config::new(Variant::Cifar, 10)
    };
    let m = v2.init(&device).unwrap();
    assert_eq!(
        m.forward(Tensor::zeros([2, 3, 32, 32], &device)).dims(),
        [2, 10]
    );
    let info = v2.info().unwrap();
    assert_eq!(
        burn::module::Module::num_params(&m),
        info.params + info.batch_norm_params
    );
    assert!(matches!(
        MobileNetV1Config {
            width: 0.0,
            ..MobileNetV1Config::new(Variant::Cifar, 10)
        }
        .init(&device),
        Err(ModelError::Setting { field: "width", .. })
    ));
}

/// A family and its graph: `try_map` names the layers as the graph does, and `into_graph`
/// hands them over in the order the family's forward pass reads them (both lists are written
/// by hand in each family).
fn same_as_graph<M: IntoGraph<Conv = ConvBlock, Linear = Linear>>(
    spec: GraphSpec,
    model: M,
    names: Vec<String>,
    forward: impl Fn(&M, Tensor<4>) -> Tensor<2>,
) {
    let (convs, linears) = spec.layer_names();
    assert_eq!([convs, linears].concat(), names, "{}", spec.name);
    let device = Device::flex();
    let [c, h, w] = spec.input.shape;
    let x = Tensor::<4>::random([2, c, h, w], Distribution::Normal(0.0, 1.0), &device);
    let want = to_vec_f32(forward(&model, x.clone()).flatten::<1>(0, 1));
    let graph: GraphNet<ConvBlock, Linear> = model.into_graph().unwrap();
    assert_eq!(graph.spec(), &spec);
    let got = to_vec_f32(graph.forward(x).flatten::<1>(0, 1));
    let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    for (a, b) in want.iter().zip(&got) {
        assert!((a - b).abs() <= 1e-4 * scale, "{}: {a} vs {b}", spec.name);
    }
}

/// The layer paths `try_map` visits, convolutions first.
macro_rules! names {
    ($m:expr) => {{
        let mut convs = Vec::new();
        let mut linears = Vec::new();
        $m.clone()
            .try_map(
                |n, c| {
                    convs.push(n.to_string());
                    Ok::<_, ()>(c)
                },
                |n, l| {
                    linears.push(n.to_string());
                    Ok(l)
                },
            )
            .unwrap();
        [convs, linears].concat()
    }};
}

#[test]
fn the_families_are_graphs_with_the_same_layers_and_forward_pass() {
    let device = Device::flex();
    for size in [DsCnnSize::S, DsCnnSize::M] {
        let config = DsCnnConfig::new(size);
        let m = config.init(&device).unwrap();
        let spec = config.graph_spec().unwrap();
        assert_eq!(spec.input.shape, [1, 49, 10]);
        same_as_graph(spec, m.clone(), names!(m), |m, x| m.forward(x));
    }
    for variant in [Variant::Cifar, Variant::Imagenet] {
        let v1 = MobileNetV1Config {
            width: 0.25,
            ..MobileNetV1Config::new(variant, 10)
        };
        let m = v1.init(&device).unwrap();
        let spec = v1.graph_spec().unwrap();
        same_as_graph(spec, m.clone(), names!(m), |m, x| m.forward(x));
        let v2 = MobileNetV2Config {
            width: 0.35,
            ..MobileNetV2Config::new(variant, 10)
        };
        let m = v2.init(&device).unwrap();
        let spec = v2.graph_spec().unwrap();
        assert_eq!(
            spec.requant_nodes().len(),
            m.blocks.iter().filter(|b| b.residual()).count()
        );
        same_as_graph(spec, m.clone(), names!(m), |m, x| m.forward(x));
    }
}

fn published(size: &str) -> Vec<u8> {
    std::fs::read(require_shared().join(format!(
        "pretrained/ml-kws-for-mcu/ds_cnn_{size}.safetensors"
    )))
    .unwrap()
}

#[test]
fn imported_ds_cnn_l_reproduces_tensorflow_logits() {
    let device = Device::flex();
    let model = import::ds_cnn(
        &DsCnnConfig::new(DsCnnSize::L),
        &published("l"),
        "ds_cnn_l.safetensors",
        &device,
    )
    .unwrap();
    let bytes = std::fs::read(
        require_shared().join("pretrained/ml-kws-for-mcu/testvectors_ds_cnn_l.safetensors"),
    )
    .unwrap();
    let (_, mfcc) = read_safetensor_f32(&bytes, "mfcc").unwrap();
    let (_, logits) = read_safetensor_f32(&bytes, "logits").unwrap();
    let x = Tensor::<4>::from_data(TensorData::new(mfcc, [24, 1, 49, 10]), &device);
    let ours = collab_core::host::to_vec_f32(model.forward(x).reshape([24 * 12]));
    let max = ours
        .iter()
        .zip(&logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("DS-CNN-L logits vs TensorFlow: max abs difference {max:.2e}");
    assert!(max <= 1e-4, "max abs logit difference {max}");
}

#[test]
fn imported_models_reach_the_published_accuracy_end_to_end() {
    // WAV files → our MFCC frontend → imported model; README: S 89.05 %, M 90.54 %, L 91.90 %.
    let device = Device::flex();
    let set = SpeechCommands::open(&require_shared().join("data/speech_commands_12")).unwrap();
    let features = SpeechCommands::features(&set.split(Split::All), &Frontend::new()).unwrap();
    for (size, name, want) in [(DsCnnSize::S, "s", 0.8905), (DsCnnSize::L, "l", 0.9190)] {
        let model =
            import::ds_cnn(&DsCnnConfig::new(size), &published(name), name, &device).unwrap();
        let mut correct = 0;
        let indices: Vec<usize> = (0..features.len()).collect();
        for chunk in indices.chunks(200) {
            let (x, y) = features.batch(chunk, &device);
            let pred = model.forward(x).argmax(1).flatten::<1>(0, 1);
            correct += pred.equal(y).int().sum().into_scalar::<i64>();
        }
        let acc = correct as f64 / features.len() as f64;
        eprintln!(
            "DS-CNN-{name}: {correct}/{} = {:.2}%",
            features.len(),
            100.0 * acc
        );
        assert!(
            (acc - want).abs() <= 0.002,
            "DS-CNN-{name}: {acc} vs published {want}"
        );
    }
}

#[test]
fn weight_files_that_do_not_fit_are_errors() {
    let device = Device::flex();
    let err = import::ds_cnn(
        &DsCnnConfig::new(DsCnnSize::L),
        &published("s"),
        "ds_cnn_s.safetensors",
        &device,
    )
    .unwrap_err();
    assert!(err.to_string().contains("shape"), "{err}");
    let err = import::ds_cnn(
        &DsCnnConfig::new(DsCnnSize::S),
        b"not a file",
        "x.safetensors",
        &device,
    )
    .unwrap_err();
    assert!(err.to_string().contains("not a safetensors"), "{err}");
    assert!("ds-cnn-q".parse::<DsCnnSize>().is_err());
    assert_eq!("DS-CNN-L".parse::<DsCnnSize>().unwrap(), DsCnnSize::L);
}
