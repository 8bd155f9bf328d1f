//! Labelled data given as NumPy arrays: an `.npz` archive (what `numpy.savez` and
//! `numpy.savez_compressed` write) with the inputs under `x` and the labels under `y`, or a
//! pair of `.npy` files. The way to evaluate or fine-tune an imported model on data no
//! built-in loader reads.
//!
//! The inputs are in the model's input layout as its [`InputSpec`] says (`[n, h, w, c]` for
//! NHWC, `[n, c, h, w]` for NCHW, `[n, features]` for a flat input) and already in the
//! model's input form: no scaling is applied, except that `uint8` arrays for a model whose
//! [`Features`] are images are taken as RGB pixels 0..=255 and normalised by its
//! [`crate::ImageNorm`] (a BGR model gets the channels reversed). Labels are whole numbers,
//! `[n]` or `[n, 1]`, each below the model's class count.

use std::io::Read;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::DataError;
use crate::input::{Features, InputSpec};
use crate::npy::{Dtype, NpyArray};

/// The names accepted for the inputs and the labels, in the order they are tried: `x` / `y`
/// first, then common aliases (`numpy.savez(f, a, b)` names them `arr_0`, `arr_1`).
pub const KEY_PAIRS: [(&str, &str); 7] = [
    ("x", "y"),
    ("inputs", "labels"),
    ("x_test", "y_test"),
    ("x_val", "y_val"),
    ("images", "labels"),
    ("input", "label"),
    ("arr_0", "arr_1"),
];

/// Labelled samples from arrays, in memory, in burn's order.
#[derive(Clone, Debug)]
pub struct ArraySet {
    /// `len · c · h · w` values: each sample in burn's `[c, h, w]` order.
    pub inputs: Vec<f32>,
    /// One class index per sample, below `names.len()`.
    pub labels: Vec<usize>,
    /// One sample's shape `[c, h, w]` (`[features, 1, 1]` for a flat input).
    pub shape: [usize; 3],
    /// Class names in label order: the model's labels, else `"0"`, `"1"`, ….
    pub names: Vec<String>,
    /// Where the arrays came from (file and keys), for reports.
    pub source: String,
}

fn stem_key(name: &str) -> &str {
    name.strip_suffix(".npy").unwrap_or(name)
}

impl ArraySet {
    /// Read `path`: an `.npz` archive, a folder holding an input / label `.npy` pair, or the
    /// inputs `.npy` of a pair whose labels file lies beside it (`x.npy` → `y.npy`,
    /// `x_test.npy` → `y_test.npy`, … as in [`KEY_PAIRS`]). `classes` is the model's class
    /// count; `spec` its input.
    pub fn open(path: &Path, spec: &InputSpec, classes: usize) -> Result<Self, DataError> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if path.is_dir() {
            let found = KEY_PAIRS.iter().find(|(x, y)| {
                path.join(format!("{x}.npy")).is_file() && path.join(format!("{y}.npy")).is_file()
            });
            return match found {
                Some((x, y)) => Self::open_npy(
                    &path.join(format!("{x}.npy")),
                    &path.join(format!("{y}.npy")),
                    spec,
                    classes,
                ),
                None => Err(DataError::Empty {
                    path: path.to_path_buf(),
                    reason: format!(
                        "no input / label pair of .npy files here; expected x.npy and y.npy \
                         (or one of the pairs {KEY_PAIRS:?})"
                    ),
                }),
            };
        }
        match ext.as_str() {
            "npz" => Self::open_npz(path, spec, classes),
            "npy" => {
                let name = path
                    .file_stem()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let y = KEY_PAIRS
                    .iter()
                    .find(|(x, _)| *x == name)
                    .map(|(_, y)| path.with_file_name(format!("{y}.npy")))
                    .filter(|y| y.is_file())
                    .ok_or_else(|| DataError::InvalidSetting {
                        field: "arrays",
                        reason: format!(
                            "{}: no labels file beside it; name the pair x.npy and y.npy (or \
                             one of {KEY_PAIRS:?}), or pack them into an .npz with keys x and y",
                            path.display()
                        ),
                    })?;
                Self::open_npy(path, &y, spec, classes)
            }
            _ => Err(DataError::InvalidSetting {
                field: "arrays",
                reason: format!(
                    "{}: expected an .npz archive, an .npy file or a folder with x.npy and y.npy",
                    path.display()
                ),
            }),
        }
    }

    /// Read the inputs `x` and labels `y` (`.npy` files).
    pub fn open_npy(
        x: &Path,
        y: &Path,
        spec: &InputSpec,
        classes: usize,
    ) -> Result<Self, DataError> {
        let inputs = NpyArray::read(x)?;
        let labels = NpyArray::read(y)?;
        let source = format!("{} + {}", x.display(), y.display());
        Self::from_arrays(&inputs, &labels, spec, classes, x, y, source)
    }

    /// Read an `.npz` archive (stored or deflated members): inputs and labels under the first
    /// pair of [`KEY_PAIRS`] it holds.
    pub fn open_npz(path: &Path, spec: &InputSpec, classes: usize) -> Result<Self, DataError> {
        let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
        let mut zip = zip::ZipArchive::new(file).map_err(|e| {
            DataError::format(path, format!("not a readable .npz (zip) archive: {e}"))
        })?;
        let names: Vec<String> = zip.file_names().map(str::to_string).collect();
        let keys: Vec<&str> = names.iter().map(|n| stem_key(n)).collect();
        let (x, y) = KEY_PAIRS
            .iter()
            .find(|(x, y)| keys.contains(x) && keys.contains(y))
            .ok_or_else(|| {
                DataError::format(
                    path,
                    format!(
                        "holds the arrays {keys:?}; expected inputs `x` and labels `y` (or one \
                         of the pairs {KEY_PAIRS:?}): numpy.savez(path, x=inputs, y=labels)"
                    ),
                )
            })?;
        let mut member = |key: &str| -> Result<(NpyArray, PathBuf), DataError> {
            let name = &names[keys.iter().position(|k| *k == key).unwrap_or_default()];
            let shown = PathBuf::from(format!("{}:{name}", path.display()));
            let mut entry = zip
                .by_name(name)
                .map_err(|e| DataError::format(&shown, format!("cannot open: {e}")))?;
            let mut bytes = Vec::with_capacity(entry.size().min(1 << 30) as usize);
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| DataError::format(&shown, format!("cannot decompress: {e}")))?;
            Ok((NpyArray::parse(&bytes, &shown)?, shown))
        };
        let (inputs, x_path) = member(x)?;
        let (labels, y_path) = member(y)?;
        let source = format!("{} (keys {x}, {y})", path.display());
        Self::from_arrays(&inputs, &labels, spec, classes, &x_path, &y_path, source)
    }

    /// Check and convert arrays already read (`x_path` / `y_path` name them in errors).
    pub fn from_arrays(
        x: &NpyArray,
        y: &NpyArray,
        spec: &InputSpec,
        classes: usize,
        x_path: &Path,
        y_path: &Path,
        source: String,
    ) -> Result<Self, DataError> {
        if classes == 0 {
            return Err(DataError::InvalidSetting {
                field: "classes",
                reason: "the model has no classes to score labels against".into(),
            });
        }
        let names = match spec.labels.len() {
            0 => (0..classes).map(|c| c.to_string()).collect(),
            n if n == classes => spec.labels.clone(),
            n => {
                return Err(DataError::InvalidSetting {
                    field: "labels",
                    reason: format!(
                        "the input record names {n} classes but the model has {classes} outputs"
                    ),
                });
            }
        };
        let Some((&n, sample)) = x.shape.split_first() else {
            return Err(DataError::format(
                x_path,
                "is a single number; the inputs need a sample dimension first ([n, ...])",
            ));
        };
        spec.check_file_shape(sample, &x_path.display().to_string())?;
        if n == 0 {
            return Err(DataError::Empty {
                path: x_path.to_path_buf(),
                reason: "holds no samples (first dimension 0)".into(),
            });
        }
        let labels = Self::labels(y, n, classes, y_path)?;

        let per = sample.iter().product::<usize>();
        let values = x.to_f32();
        let pixels = match (&spec.features, x.dtype) {
            (Features::Image(norm), Dtype::U8) => {
                norm.check()?;
                tracing::info!(
                    file = %x_path.display(),
                    "uint8 inputs taken as RGB pixels 0..=255 and normalised for the model"
                );
                Some(norm)
            }
            _ => None,
        };
        let [c, _, _] = spec.shape;
        let mut inputs = Vec::with_capacity(values.len());
        for s in values.chunks_exact(per) {
            let burn = spec.to_burn_order(s);
            match pixels {
                Some(norm) if c == 3 => {
                    // Model channel k is RGB channel k, or 2 - k for a BGR model.
                    let plane = burn.len() / 3;
                    for k in 0..3 {
                        let rgb = if norm.bgr { 2 - k } else { k };
                        inputs.extend(
                            burn[rgb * plane..(rgb + 1) * plane]
                                .iter()
                                .map(|p| norm.apply(*p, rgb)),
                        );
                    }
                }
                // Grey images: one channel, normalised as the first.
                Some(norm) => inputs.extend(burn.iter().map(|p| norm.apply(*p, 0))),
                None => inputs.extend(burn),
            }
        }
        Ok(Self {
            inputs,
            labels,
            shape: spec.shape,
            names,
            source,
        })
    }

    /// Labels `[n]` or `[n, 1]`, whole numbers in `0..classes`.
    fn labels(
        y: &NpyArray,
        n: usize,
        classes: usize,
        path: &Path,
    ) -> Result<Vec<usize>, DataError> {
        let bad = |why: String| DataError::format(path, why);
        match y.shape.as_slice() {
            [m] | [m, 1] if *m == n => {}
            [m, k] if *m == n && *k == classes => {
                return Err(bad(format!(
                    "labels of shape {:?} look one-hot; save the class indices instead: \
                     y.argmax(axis=1)",
                    y.shape
                )));
            }
            other => {
                return Err(bad(format!(
                    "labels of shape {other:?} do not match the {n} input samples; expected [{n}]"
                )));
            }
        }
        let values = y.to_i64().ok_or_else(|| {
            bad(format!(
                "labels are {} (floating point); save them as integers: y.astype('int64')",
                y.dtype.descr()
            ))
        })?;
        values
            .iter()
            .enumerate()
            .map(|(i, v)| match usize::try_from(*v) {
                Ok(l) if l < classes => Ok(l),
                _ => Err(bad(format!(
                    "label {v} of sample {i} is outside 0..{classes} (the model has {classes} \
                     classes)"
                ))),
            })
            .collect()
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The samples at `indices` as the model input `[batch, c, h, w]` and labels `[batch]`.
    pub fn batch(&self, indices: &[usize], device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
        let [c, h, w] = self.shape;
        let per = c * h * w;
        let mut x = Vec::with_capacity(indices.len() * per);
        let mut y = Vec::with_capacity(indices.len());
        for &i in indices {
            x.extend_from_slice(&self.inputs[i * per..(i + 1) * per]);
            y.push(self.labels[i] as i64);
        }
        let n = indices.len();
        (
            Tensor::from_data(TensorData::new(x, [n, c, h, w]), device),
            Tensor::from_data(TensorData::new(y, [n]), device),
        )
    }

    /// Batches of indices covering the set once, shuffled by `seed` (the last may be smaller).
    pub fn shuffled_batches(&self, batch_size: usize, seed: u64) -> Vec<Vec<usize>> {
        crate::shuffled_batches(self.len(), batch_size, seed)
    }

    /// Per-class counts, `names.len()` long.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.names.len()];
        for l in &self.labels {
            counts[*l] += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::{ImageNorm, Layout};
    use crate::npy::{encode_f32, encode_i64, header};

    fn spec(shape: [usize; 3], layout: Layout) -> InputSpec {
        InputSpec {
            shape,
            layout,
            features: Features::Array,
            labels: vec![],
        }
    }

    fn parse(bytes: &[u8], name: &str) -> NpyArray {
        NpyArray::parse(bytes, Path::new(name)).unwrap()
    }

    #[test]
    fn nhwc_inputs_become_channels_first_samples() {
        // Two samples [h=2, w=2, c=3]: value = 1000 n + 100 c + 10 y + x.
        let mut x = Vec::new();
        for n in 0..2 {
            for y in 0..2 {
                for xx in 0..2 {
                    for c in 0..3 {
                        x.push((1000 * n + 100 * c + 10 * y + xx) as f32);
                    }
                }
            }
        }
        let x = parse(&encode_f32(&[2, 2, 2, 3], &x).unwrap(), "x.npy");
        let y = parse(&encode_i64(&[2], &[1, 0]).unwrap(), "y.npy");
        let s = spec([3, 2, 2], Layout::Nhwc);
        let p = Path::new("x.npy");
        let set = ArraySet::from_arrays(&x, &y, &s, 2, p, p, "t".into()).unwrap();
        assert_eq!(set.labels, vec![1, 0]);
        assert_eq!(set.names, vec!["0", "1"]);
        assert_eq!(set.inputs[12..16], [1000.0, 1001.0, 1010.0, 1011.0]);
        assert_eq!(set.inputs[20..24], [1200.0, 1201.0, 1210.0, 1211.0]);
        let (bx, by) = set.batch(&[1], &Device::flex());
        assert_eq!(bx.dims(), [1, 3, 2, 2]);
        let v = bx.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(v[..4], [1000.0, 1001.0, 1010.0, 1011.0]);
        assert_eq!(crate::host_labels(by), vec![0]);

        // The same arrays under an NCHW model: the shape check names both shapes.
        let err =
            ArraySet::from_arrays(&x, &y, &spec([3, 2, 2], Layout::Nchw), 2, p, p, "t".into())
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("[2, 2, 3]") && err.contains("[3, 2, 2]") && err.contains("x.npy"),
            "{err}"
        );
    }

    #[test]
    fn labels_are_checked() {
        let x = parse(&encode_f32(&[3, 4], &[0.0; 12]).unwrap(), "x.npy");
        let s = spec([4, 1, 1], Layout::Flat);
        let p = Path::new("y.npy");
        let with = |y: NpyArray, classes: usize| {
            ArraySet::from_arrays(&x, &y, &s, classes, p, p, "t".into()).map(|s| s.labels)
        };
        let ok = parse(&encode_i64(&[3, 1], &[2, 0, 1]).unwrap(), "y.npy");
        assert_eq!(with(ok.clone(), 3).unwrap(), vec![2, 0, 1]);
        let e = with(ok, 2).unwrap_err().to_string();
        assert!(
            e.contains("label 2 of sample 0") && e.contains("0..2"),
            "{e}"
        );
        let neg = parse(&encode_i64(&[3], &[0, -1, 1]).unwrap(), "y.npy");
        assert!(
            with(neg, 3)
                .unwrap_err()
                .to_string()
                .contains("label -1 of sample 1")
        );
        let short = parse(&encode_i64(&[2], &[0, 1]).unwrap(), "y.npy");
        assert!(
            with(short, 3)
                .unwrap_err()
                .to_string()
                .contains("3 input samples")
        );
        let onehot = parse(
            &encode_i64(&[3, 3], &[1, 0, 0, 0, 1, 0, 0, 0, 1]).unwrap(),
            "y.npy",
        );
        assert!(with(onehot, 3).unwrap_err().to_string().contains("argmax"));
        let float = parse(&encode_f32(&[3], &[0.0, 1.0, 2.0]).unwrap(), "y.npy");
        assert!(
            with(float, 3)
                .unwrap_err()
                .to_string()
                .contains("astype('int64')")
        );
        let mut named = s.clone();
        named.labels = vec!["a".into(), "b".into()];
        let y = parse(&encode_i64(&[3], &[0, 1, 1]).unwrap(), "y.npy");
        assert!(ArraySet::from_arrays(&x, &y, &named, 3, p, p, "t".into()).is_err());
        let set = ArraySet::from_arrays(&x, &y, &named, 2, p, p, "t".into()).unwrap();
        assert_eq!(
            (set.names.clone(), set.class_counts()),
            (named.labels.clone(), vec![1, 2])
        );
        let empty = parse(&header(Dtype::F32, &[0, 4]), "x.npy");
        assert!(ArraySet::from_arrays(&empty, &y, &s, 2, p, p, "t".into()).is_err());
    }

    #[test]
    fn uint8_pixels_of_an_image_model_are_normalised() {
        // One 1x2 NHWC RGB image: pixels (10, 20, 30) and (40, 50, 60).
        let mut bytes = header(Dtype::U8, &[1, 1, 2, 3]);
        bytes.extend_from_slice(&[10, 20, 30, 40, 50, 60]);
        let x = parse(&bytes, "x.npy");
        let y = parse(&encode_i64(&[1], &[0]).unwrap(), "y.npy");
        let norm = ImageNorm {
            scale: 1.0,
            mean: [10.0, 20.0, 30.0],
            std: [1.0, 2.0, 4.0],
            bgr: false,
        };
        let mut s = spec([3, 1, 2], Layout::Nhwc);
        s.features = Features::Image(norm.clone());
        let p = Path::new("x.npy");
        let set = ArraySet::from_arrays(&x, &y, &s, 1, p, p, "t".into()).unwrap();
        assert_eq!(set.inputs, vec![0.0, 30.0, 0.0, 15.0, 0.0, 7.5]);
        s.features = Features::Image(ImageNorm { bgr: true, ..norm });
        let set = ArraySet::from_arrays(&x, &y, &s, 1, p, p, "t".into()).unwrap();
        assert_eq!(set.inputs, vec![0.0, 7.5, 0.0, 15.0, 0.0, 30.0]);
        // Float arrays are the model's input already.
        s.features = Features::Image(ImageNorm::unit());
        let xf = parse(
            &encode_f32(&[1, 1, 2, 3], &[10.0, 20.0, 30.0, 40.0, 50.0, 60.0]).unwrap(),
            "x.npy",
        );
        let set = ArraySet::from_arrays(&xf, &y, &s, 1, p, p, "t".into()).unwrap();
        assert_eq!(set.inputs, vec![10.0, 40.0, 20.0, 50.0, 30.0, 60.0]);
    }
}
