//! Reading real and malformed `.tflite` files.

use collab_data::shared::require_shared;
use collab_tflite::tflite::{BufferT, ModelT, OperatorCodeT, SubGraphT, TensorT};
use collab_tflite::{Graph, Report, TfliteError};
use proptest::prelude::*;

fn kws_model() -> Vec<u8> {
    std::fs::read(require_shared().join("tools/testdata/kws_ref_model.tflite")).unwrap()
}

#[test]
fn mlperf_tiny_kws_model_reads_as_the_tools_describe_it() {
    // Facts from ../shared/tools/README.md (read there with LiteRT's own bindings).
    let bytes = kws_model();
    let report = Report::new(&bytes).unwrap();
    assert_eq!(report.bytes, 53_936);
    assert_eq!(report.operator_count, 13);
    assert_eq!(report.tensor_count, 35);
    let ops: Vec<(String, usize)> = report
        .operators
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    for want in [
        ("CONV_2D v3", 5),
        ("DEPTHWISE_CONV_2D v3", 4),
        ("AVERAGE_POOL_2D v2", 1),
        ("RESHAPE v1", 1),
        ("FULLY_CONNECTED v4", 1),
        ("SOFTMAX v2", 1),
    ] {
        assert!(
            ops.contains(&(want.0.to_string(), want.1)),
            "{want:?} not in {ops:?}"
        );
    }
    assert_eq!(report.weights.len(), 21);
    assert_eq!(report.total_values, 22_606);
    assert_eq!(report.total_zeros, 168);
    // Per-channel unique counts: 7..9 per 3×3 depthwise channel, 46..60 per 64-wide 1×1 conv.
    let dw: Vec<_> = report
        .weights
        .iter()
        .filter(|w| w.used_by.as_deref() == Some("DEPTHWISE_CONV_2D") && w.shape.len() == 4)
        .collect();
    assert_eq!(dw.len(), 4);
    assert!(
        dw.iter()
            .all(|w| w.unique_per_channel_min.unwrap() >= 7
                && w.unique_per_channel_max.unwrap() <= 9)
    );
    let pw: Vec<_> = report
        .weights
        .iter()
        .filter(|w| w.used_by.as_deref() == Some("CONV_2D") && w.shape == vec![64, 1, 1, 64])
        .collect();
    assert!(!pw.is_empty());
    assert!(pw.iter().all(
        |w| w.unique_per_channel_min.unwrap() >= 46 && w.unique_per_channel_max.unwrap() <= 60
    ));
    // int8 input/output quantization as the README states.
    let g = &report.graph;
    let input = &g.tensors[g.inputs[0] as usize];
    assert_eq!(input.shape, vec![1, 49, 10, 1]);
    let q = input.quantization.as_ref().unwrap();
    assert!((q.scale[0] - 0.5847).abs() < 1e-4 && q.zero_point[0] == 83);
    let output = &g.tensors[g.outputs[0] as usize]
        .quantization
        .as_ref()
        .unwrap()
        .clone();
    assert_eq!((output.scale[0], output.zero_point[0]), (1.0 / 256.0, -128));
    assert!(report.compression > 0.0 && report.gzip_bytes < report.bytes);
    assert!(report.text().contains("DEPTHWISE_CONV_2D v3 ×4"));
}

fn pack(model: &ModelT) -> Vec<u8> {
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let root = model.pack(&mut fbb);
    fbb.finish(root, Some("TFL3"));
    fbb.finished_data().to_vec()
}

fn one_tensor_model(tensor: TensorT, buffers: usize, data: Option<Vec<u8>>) -> ModelT {
    let mut model = ModelT::default();
    model.version = 3;
    model.operator_codes = Some(vec![OperatorCodeT::default()]);
    let mut sub = SubGraphT::default();
    sub.tensors = Some(vec![tensor]);
    model.subgraphs = Some(vec![sub]);
    let mut bufs: Vec<BufferT> = (0..buffers).map(|_| BufferT::default()).collect();
    if let (Some(d), Some(last)) = (data, bufs.last_mut()) {
        last.data = Some(d);
    }
    model.buffers = Some(bufs);
    model
}

#[test]
fn malformed_files_are_typed_errors() {
    let bytes = kws_model();
    // Truncated anywhere.
    for cut in [0, 4, 7, 100, 20_000, bytes.len() - 1] {
        assert!(Graph::from_bytes(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    // Wrong identifier.
    let mut wrong = bytes.clone();
    wrong[4..8].copy_from_slice(b"ONNX");
    let err = Graph::from_bytes(&wrong).unwrap_err();
    assert!(
        matches!(err, TfliteError::Malformed(_)) && err.to_string().contains("TFL3"),
        "{err}"
    );
    // Out-of-range buffer index.
    let mut t = TensorT::default();
    t.buffer = 99;
    t.shape = Some(vec![2]);
    let err = Graph::from_bytes(&pack(&one_tensor_model(t, 1, None))).unwrap_err();
    assert!(
        matches!(err, TfliteError::BadReference(_)) && err.to_string().contains("buffer 99"),
        "{err}"
    );
    // Huge declared shape with a tiny buffer.
    let mut t = TensorT::default();
    t.buffer = 1;
    t.shape = Some(vec![1 << 30, 1 << 30, 1 << 30]);
    t.type_ = collab_tflite::tflite::TensorType::INT8;
    let err = Graph::from_bytes(&pack(&one_tensor_model(t, 2, Some(vec![1, 2, 3])))).unwrap_err();
    assert!(err.to_string().contains("holds 3 bytes"), "{err}");
    // A well-formed one-tensor model reads.
    let mut t = TensorT::default();
    t.buffer = 1;
    t.shape = Some(vec![3]);
    t.type_ = collab_tflite::tflite::TensorType::INT8;
    let g = Graph::from_bytes(&pack(&one_tensor_model(t, 2, Some(vec![1, 0, 255])))).unwrap();
    assert_eq!(g.tensors[0].data.as_deref(), Some(&[1u8, 0, 255][..]));
    assert!(Graph::open(std::path::Path::new("/nonexistent.tflite")).is_err());
}

/// Found by `cargo fuzz` (crates/tflite/fuzz): a `buffers` vector that is present but empty, with
/// a tensor on buffer 0, panicked in flatbuffers' `Vector::get` (index out of bounds). Buffer 0
/// of a file without buffers means "no data", as when `buffers` is absent.
#[test]
fn empty_buffers_vector_does_not_panic() {
    let bytes = pack(&one_tensor_model(TensorT::default(), 0, None));
    let g = Graph::from_bytes(&bytes).unwrap();
    assert_eq!(g.tensors.len(), 1);
    assert_eq!(
        (g.tensors[0].buffer, g.tensors[0].data.as_deref()),
        (0, None)
    );
    let report = Report::new(&bytes).unwrap();
    assert!(report.weights.is_empty());
    // The same model with `buffers` absent reads the same.
    let mut absent = one_tensor_model(TensorT::default(), 0, None);
    absent.buffers = None;
    assert_eq!(Graph::from_bytes(&pack(&absent)).unwrap(), g);
    // A non-zero buffer index is still a typed error.
    let mut t = TensorT::default();
    t.buffer = 1;
    let err = Graph::from_bytes(&pack(&one_tensor_model(t, 0, None))).unwrap_err();
    assert!(matches!(err, TfliteError::BadReference(_)), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    /// Random corruption of a real file never panics: it reads or it is an error.
    #[test]
    fn corrupted_files_never_panic(flips in prop::collection::vec((0usize..53_936, any::<u8>()), 1..20)) {
        let mut bytes = kws_model();
        for (i, v) in flips {
            bytes[i] = v;
        }
        let _ = Report::new(&bytes);
    }
}

#[test]
fn weights_read_back_as_floats() {
    // The per-channel depthwise weights of the KWS model: scale per channel on axis 3.
    let graph = Graph::from_bytes(&kws_model()).unwrap();
    let (_, t) = graph
        .constants()
        .find(|(_, t)| {
            t.shape.len() == 4 && t.shape[0] == 1 && t.dtype == collab_tflite::TensorType::Int8
        })
        .unwrap();
    let q = t.quantization.as_ref().unwrap();
    assert_eq!(q.axis, 3);
    let floats = t.to_f32().unwrap();
    let raw = t.data.as_ref().unwrap();
    let channels = t.shape[3];
    for (i, f) in floats.iter().enumerate() {
        let c = i % channels;
        assert_eq!(
            *f,
            q.scale[c] * (raw[i] as i8 as f32 - q.zero_point[c] as f32)
        );
    }
    assert!(graph.tensor(&t.name).is_some());
    assert!(graph.tensor("no such tensor").is_none());
}

#[test]
fn concatenation_and_leaky_relu_options_and_integer_constants_read() {
    use collab_tflite::tflite::{
        BuiltinOperator, BuiltinOptionsT, ConcatenationOptionsT, LeakyReluOptionsT, OperatorT,
        TensorType,
    };
    use collab_tflite::{Activation, Options};
    let mut model = one_tensor_model(TensorT::default(), 3, None);
    let code = |c: BuiltinOperator| {
        let mut code = OperatorCodeT::default();
        (
            code.builtin_code,
            code.deprecated_builtin_code,
            code.version,
        ) = (c, c.0 as i8, 1);
        code
    };
    model.operator_codes = Some(vec![
        code(BuiltinOperator::CONCATENATION),
        code(BuiltinOperator::LEAKY_RELU),
    ]);
    let mut concat = ConcatenationOptionsT::default();
    concat.axis = -1;
    concat.fused_activation_function = collab_tflite::tflite::ActivationFunctionType::RELU6;
    let mut leaky = LeakyReluOptionsT::default();
    leaky.alpha = 0.25;
    let op = |index: u32, options: BuiltinOptionsT| {
        let mut op = OperatorT::default();
        (op.opcode_index, op.inputs, op.outputs) = (index, Some(vec![0]), Some(vec![0]));
        op.builtin_options = options;
        op
    };
    let sub = &mut model.subgraphs.as_mut().unwrap()[0];
    sub.operators = Some(vec![
        op(0, BuiltinOptionsT::ConcatenationOptions(Box::new(concat))),
        op(1, BuiltinOptionsT::LeakyReluOptions(Box::new(leaky))),
    ]);
    // Tensor 1: int32 axes [1, -2]; tensor 2: int64 [3].
    let mut axes = TensorT::default();
    (axes.type_, axes.shape, axes.buffer) = (TensorType::INT32, Some(vec![2]), 1);
    let mut long = TensorT::default();
    (long.type_, long.shape, long.buffer) = (TensorType::INT64, Some(vec![1]), 2);
    sub.tensors.as_mut().unwrap().extend([axes, long]);
    let mut data: Vec<u8> = 1i32.to_le_bytes().to_vec();
    data.extend((-2i32).to_le_bytes());
    let buffers = model.buffers.as_mut().unwrap();
    buffers[1].data = Some(data);
    buffers[2].data = Some(3i64.to_le_bytes().to_vec());
    let g = Graph::from_bytes(&pack(&model)).unwrap();
    assert_eq!(
        g.operators[0].options,
        Options::Concatenation {
            axis: -1,
            activation: Activation::Relu6
        }
    );
    assert_eq!(g.operators[1].options, Options::LeakyRelu { alpha: 0.25 });
    assert_eq!(g.tensors[1].to_i64(), Some(vec![1, -2]));
    assert_eq!(g.tensors[2].to_i64(), Some(vec![3]));
    // Float and data-less tensors are not integers.
    assert_eq!(g.tensors[0].to_i64(), None);
}
