//! Post-training quantization of a trained model: calibrate, compare with float accuracy.

mod common;

use burn::tensor::Device;
use collab_quant::{ActQuantConfig, Calibration, FusedActivation, QatConfig, calibrate};
use common::{accuracy, data, plain, train};

#[test]
fn ptq_loses_less_than_one_point_and_qat_keeps_the_ranges_training() {
    let device = Device::flex().autodiff();
    device.seed(21);
    let train_set = data(512, 1);
    let test_set = data(512, 2);
    let float = train(plain(8, &device), &train_set, 400, 3e-3, 0);
    let float_acc = accuracy(&float, &test_set);
    assert!(
        float_acc > 0.6,
        "the float model should learn the task, got {float_acc}"
    );

    for calibration in [
        Calibration::MinMax,
        Calibration::Percentile { percentile: 99.99 },
    ] {
        let act = ActQuantConfig {
            calibration,
            ..Default::default()
        };
        let relu = QatConfig::new()
            .with_activation(FusedActivation::Relu)
            .with_act(act.clone());
        let quant = float
            .clone()
            .try_map(
                |name, c| relu.clone().with_input(name == "conv").wrap(c),
                |l| QatConfig::new().with_act(act.clone()).wrap(l),
            )
            .unwrap();
        let calib = data(100, 3);
        let batches: Vec<Vec<usize>> = (0..100)
            .collect::<Vec<_>>()
            .chunks(20)
            .map(|c| c.to_vec())
            .collect();
        let calibrated = calibrate(quant, batches, |m, idx| {
            let (x, _) = calib.batch(&idx, &Device::flex());
            let _ = m.forward(x);
        });
        for (name, q) in [
            ("conv", &calibrated.conv),
            ("dw", &calibrated.dw),
            ("pw", &calibrated.pw),
        ] {
            let quant = q.layer_quant(name).unwrap();
            assert_eq!(
                quant.output.zero_point[0], -128,
                "{name}: ReLU output range starts at 0"
            );
            assert_eq!(
                q.output.observed.get(),
                5,
                "{name}: one range update per batch"
            );
        }
        let quant_acc = accuracy(&calibrated, &test_set);
        assert!(
            (float_acc - quant_acc).abs() < 0.01,
            "{calibration:?}: float {float_acc:.4}, int8 fake-quant {quant_acc:.4}"
        );

        // QAT continues from the calibrated ranges.
        let qat = collab_quant::end_calibration(burn::module::Module::train(calibrated));
        let before = qat.fc.output.range().unwrap();
        let qat = train(qat, &train_set, 20, 1e-4, 5);
        assert_ne!(
            qat.fc.output.range().unwrap(),
            before,
            "ranges follow the batches in QAT"
        );
        let qat_acc = accuracy(&qat, &test_set);
        assert!(
            qat_acc > float_acc - 0.03,
            "QAT fine-tune kept accuracy: {qat_acc} vs {float_acc}"
        );
    }
}
