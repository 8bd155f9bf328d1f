//! Arrays as a data set: `.npz` archives (stored and deflated, zip64 members as numpy writes
//! them) and `.npy` pairs, in each input layout; files written by NumPy itself where a Python
//! with NumPy is installed.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use collab_data::input::{Features, ImageNorm, InputSpec, Layout};
use collab_data::npy::{NpyArray, encode_f32, encode_i64};
use collab_data::{ArraySet, Cifar10};
use zip::CompressionMethod;
use zip::write::FileOptions;

fn spec(shape: [usize; 3], layout: Layout) -> InputSpec {
    InputSpec {
        shape,
        layout,
        features: Features::Array,
        labels: vec![],
    }
}

fn write_npz(path: &Path, members: &[(&str, Vec<u8>)], method: CompressionMethod) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = FileOptions::default()
        .compression_method(method)
        .large_file(true);
    for (name, bytes) in members {
        zip.start_file(*name, options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

/// Samples `[n, h, w, c]` with value `1000 n + 100 c + 10 y + x`, and the same in NCHW.
fn samples(n: usize, c: usize, h: usize, w: usize) -> (Vec<f32>, Vec<f32>) {
    let v = |s, ch, y, x| (1000 * s + 100 * ch + 10 * y + x) as f32;
    let mut nhwc = Vec::new();
    let mut nchw = Vec::new();
    for s in 0..n {
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    nhwc.push(v(s, ch, y, x));
                }
            }
        }
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    nchw.push(v(s, ch, y, x));
                }
            }
        }
    }
    (nhwc, nchw)
}

#[test]
fn npz_archives_and_npy_pairs_in_every_layout() {
    let dir = tempfile::tempdir().unwrap();
    let (n, c, h, w) = (3, 2, 4, 5);
    let (nhwc, nchw) = samples(n, c, h, w);
    let y = encode_i64(&[n], &[2, 0, 1]).unwrap();
    let device = burn::tensor::Device::flex();
    let cases = [
        (
            "nhwc",
            Layout::Nhwc,
            vec![n, h, w, c],
            nhwc.clone(),
            [c, h, w],
        ),
        (
            "nchw",
            Layout::Nchw,
            vec![n, c, h, w],
            nchw.clone(),
            [c, h, w],
        ),
        (
            "flat",
            Layout::Flat,
            vec![n, c * h * w],
            nchw.clone(),
            [c * h * w, 1, 1],
        ),
    ];
    for (name, layout, file_shape, values, shape) in cases {
        let s = spec(shape, layout);
        let x = encode_f32(&file_shape, &values).unwrap();
        for (method, keys) in [
            (CompressionMethod::Stored, ("x", "y")),
            (CompressionMethod::Deflated, ("inputs", "labels")),
            (CompressionMethod::Deflated, ("x_test", "y_test")),
        ] {
            let path = dir.path().join(format!("{name}-{}.npz", keys.0));
            let members = [
                ("extra.npy", encode_f32(&[1], &[9.0]).unwrap()),
                (&format!("{}.npy", keys.0), x.clone()),
                (&format!("{}.npy", keys.1), y.clone()),
            ];
            write_npz(&path, &members, method);
            let set = ArraySet::open(&path, &s, 3).unwrap();
            assert_eq!(set.labels, vec![2, 0, 1], "{name} {keys:?}");
            assert_eq!(set.shape, shape);
            assert_eq!(set.inputs, nchw, "{name} {keys:?}: burn order");
            assert!(set.source.contains(keys.0), "{}", set.source);
            let (bx, by) = set.batch(&[2, 0], &device);
            let [bc, bh, bw] = shape;
            assert_eq!(bx.dims(), [2, bc, bh, bw]);
            let per = c * h * w;
            let got = bx.into_data().try_to_vec::<f32>().unwrap();
            assert_eq!(got[..per], nchw[2 * per..]);
            let labels = by.into_data().convert::<i64>().try_to_vec::<i64>().unwrap();
            assert_eq!(labels, vec![1, 2]);
        }
        // A pair of files: by folder, by the inputs file, explicitly.
        let pair = dir.path().join(name);
        std::fs::create_dir(&pair).unwrap();
        std::fs::write(pair.join("x.npy"), &x).unwrap();
        std::fs::write(pair.join("y.npy"), &y).unwrap();
        for set in [
            ArraySet::open(&pair, &s, 3).unwrap(),
            ArraySet::open(&pair.join("x.npy"), &s, 3).unwrap(),
            ArraySet::open_npy(&pair.join("x.npy"), &pair.join("y.npy"), &s, 3).unwrap(),
        ] {
            assert_eq!((set.inputs, set.labels), (nchw.clone(), vec![2, 0, 1]));
        }
    }
}

#[test]
fn wrong_files_are_errors_that_say_what_was_found() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec([2, 4, 5], Layout::Nhwc);
    let (nhwc, _) = samples(3, 2, 4, 5);
    let x = encode_f32(&[3, 4, 5, 2], &nhwc).unwrap();
    let y = encode_i64(&[3], &[2, 0, 1]).unwrap();

    let path = dir.path().join("keys.npz");
    write_npz(
        &path,
        &[("features.npy", x.clone()), ("targets.npy", y.clone())],
        CompressionMethod::Deflated,
    );
    let e = ArraySet::open(&path, &s, 3).unwrap_err().to_string();
    assert!(
        e.contains("keys.npz") && e.contains("\"features\"") && e.contains("\"targets\""),
        "{e}"
    );

    let path = dir.path().join("shape.npz");
    write_npz(
        &path,
        &[("x.npy", x.clone()), ("y.npy", y.clone())],
        CompressionMethod::Stored,
    );
    let e = ArraySet::open(&path, &spec([2, 5, 4], Layout::Nhwc), 3)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("[4, 5, 2]") && e.contains("[5, 4, 2]") && e.contains("shape.npz:x.npy"),
        "{e}"
    );
    let e = ArraySet::open(&path, &s, 2).unwrap_err().to_string();
    assert!(
        e.contains("shape.npz:y.npy") && e.contains("label 2"),
        "{e}"
    );

    let path = dir.path().join("broken.npz");
    std::fs::write(&path, b"PK\x03\x04 no archive").unwrap();
    let e = ArraySet::open(&path, &s, 3).unwrap_err().to_string();
    assert!(e.contains("broken.npz") && e.contains("zip"), "{e}");

    std::fs::write(dir.path().join("a.npy"), &x).unwrap();
    let e = ArraySet::open(&dir.path().join("a.npy"), &s, 3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("a.npy") && e.contains("y.npy"), "{e}");
    let e = ArraySet::open(dir.path(), &s, 3).unwrap_err().to_string();
    assert!(e.contains("x.npy and y.npy"), "{e}");
    let e = ArraySet::open(&dir.path().join("data.csv"), &s, 3)
        .unwrap_err()
        .to_string();
    assert!(e.contains(".npz"), "{e}");
}

/// A Python that imports `modules`, or `None` (with a note) where there is none; with
/// `COLLAB_REQUIRE_TOOLS=1` (CI) its absence fails the test instead.
fn python_with(modules: &str) -> Option<String> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("COLLAB_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "COLLAB_REQUIRE_TOOLS=1 but {python} cannot import {modules}"
        );
        eprintln!("skipped: no Python with {modules}");
    }
    ok.then_some(python)
}

#[test]
fn files_written_by_numpy_read_as_numpy_means_them() {
    let Some(python) = python_with("numpy") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
import sys, numpy as np
from numpy.lib import format as f
d = sys.argv[1]
a = (np.arange(2 * 3 * 4).reshape(2, 3, 4) * 1.5 - 7).astype(np.float32)
for t in ['float32', 'float64', 'uint8', 'int8', 'int16', 'int32', 'int64']:
    np.save(f'{d}/{t}.npy', (np.arange(24).reshape(2, 3, 4) * 7 - 60).astype(t))
for v in [(1, 0), (2, 0), (3, 0)]:
    with open(f'{d}/v{v[0]}.npy', 'wb') as fh:
        f.write_array(fh, a, version=v)
np.save(f'{d}/fortran.npy', np.asfortranarray(a))
np.save(f'{d}/big.npy', a.astype('>f4'))
y = np.array([3, 1], dtype=np.int64)
x = a.reshape(2, 1, 3, 4)
np.savez(f'{d}/plain.npz', x=x, y=y)
np.savez_compressed(f'{d}/compressed.npz', x_test=x, y_test=y.reshape(2, 1))
np.savez(f'{d}/positional.npz', x, y)
"#;
    let out = Command::new(&python)
        .args(["-c", script, &dir.path().to_string_lossy()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = dir.path();
    let a: Vec<f32> = (0..24).map(|i| i as f32 * 1.5 - 7.0).collect();
    for t in [
        "float32", "float64", "uint8", "int8", "int16", "int32", "int64",
    ] {
        let arr = NpyArray::read(&d.join(format!("{t}.npy"))).unwrap();
        assert_eq!(arr.shape, vec![2, 3, 4], "{t}");
        let want: Vec<f32> = (0..24i64)
            .map(|i| match t {
                // numpy's astype wraps: -60 as uint8 is 196.
                "uint8" => (i * 7 - 60).rem_euclid(256) as f32,
                _ => (i * 7 - 60) as f32,
            })
            .collect();
        assert_eq!(arr.to_f32(), want, "{t}");
    }
    for v in 1..=3 {
        let arr = NpyArray::read(&d.join(format!("v{v}.npy"))).unwrap();
        assert_eq!(
            (arr.shape.clone(), arr.to_f32()),
            (vec![2, 3, 4], a.clone())
        );
    }
    let e = NpyArray::read(&d.join("fortran.npy"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("Fortran"), "{e}");
    let e = NpyArray::read(&d.join("big.npy")).unwrap_err().to_string();
    assert!(e.contains("big-endian"), "{e}");
    // Samples [1, 3, 4] read as NCHW [c=1, h=3, w=4].
    let s = spec([1, 3, 4], Layout::Nchw);
    for file in ["plain.npz", "compressed.npz", "positional.npz"] {
        let set = ArraySet::open(&d.join(file), &s, 4).unwrap();
        assert_eq!((&set.inputs, &set.labels), (&a, &vec![3, 1]), "{file}");
    }
}

#[test]
fn cifar_batches_with_the_mlperf_resnet_input() {
    // Raw pixels for MLPerf's ResNet-8: the bytes of the file, channel-planar.
    let dir = collab_data::shared::require_shared().join("data/cifar10");
    let set = Cifar10::open(&dir, false).unwrap();
    let device = burn::tensor::Device::flex();
    let (x, y) = set
        .batch_with(&[0, 5], None, &ImageNorm::raw(), &device)
        .unwrap();
    let got = x.into_data().try_to_vec::<f32>().unwrap();
    let want: Vec<f32> = [0usize, 5]
        .iter()
        .flat_map(|i| {
            set.pixels[i * 3072..(i + 1) * 3072]
                .iter()
                .map(|b| *b as f32)
        })
        .collect();
    assert_eq!(got, want);
    let labels = y.into_data().convert::<i64>().try_to_vec::<i64>().unwrap();
    assert_eq!(labels, vec![set.labels[0] as i64, set.labels[5] as i64]);
}
