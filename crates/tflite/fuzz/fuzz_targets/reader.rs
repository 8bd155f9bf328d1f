//! Arbitrary bytes into the `.tflite` reader, the report and the int8 interpreter: errors are
//! fine, panics are bugs.

#![no_main]

use collab_tflite::{Data, Graph, Interpreter, Report, TensorType};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = Report::new(data) {
        let _ = report.text();
    }
    let Ok(graph) = Graph::from_bytes(data) else {
        return;
    };
    let Ok(interp) = Interpreter::new(&graph) else {
        return;
    };
    // Run prepared graphs on zeros when they are small enough to run quickly.
    if interp.activation_bytes() > 1 << 22 || interp.macs() > 10_000_000 {
        return;
    }
    let ports = interp.inputs();
    let sizes: Vec<usize> = ports.iter().map(|p| p.shape.iter().product()).collect();
    if sizes.iter().sum::<usize>() > 1 << 16 {
        return;
    }
    let inputs: Vec<Data> = ports
        .iter()
        .zip(&sizes)
        .map(|(p, n)| match p.dtype {
            TensorType::Float32 => Data::F32(vec![0.0; *n]),
            _ => Data::I8(vec![0; *n]),
        })
        .collect();
    let _ = interp.run(&inputs);
});
