//! CIFAR-10 in the official binary format (`data_batch_*.bin`, `test_batch.bin`).

use std::path::Path;

use crate::SeededRng;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::DataError;
use crate::input::ImageNorm;

const RECORD: usize = 1 + 3 * 32 * 32;
/// Per-channel mean of CIFAR-10 training images (RGB, 0..1).
pub const MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// Per-channel standard deviation.
pub const STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

/// CIFAR-10 images in memory: `pixels` `[len, 3, 32, 32]` bytes, `labels` 0..9.
#[derive(Clone, Debug)]
pub struct Cifar10 {
    /// Raw bytes, channel-planar as in the files.
    pub pixels: Vec<u8>,
    /// Labels.
    pub labels: Vec<usize>,
}

/// Training augmentation: random crop with zero padding and horizontal flip.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CifarAugment {
    /// Padding before the random 32×32 crop (4).
    pub pad: usize,
    /// Flip horizontally with probability 0.5.
    pub flip: bool,
}

impl Default for CifarAugment {
    fn default() -> Self {
        Self { pad: 4, flip: true }
    }
}

impl Cifar10 {
    /// Read the training batches (`data_batch_*.bin`) or the test batch of `dir`.
    pub fn open(dir: &Path, train: bool) -> Result<Self, DataError> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| DataError::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let n = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if train {
                    n.starts_with("data_batch_") && n.ends_with(".bin")
                } else {
                    n == "test_batch.bin"
                }
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(DataError::Empty {
                path: dir.to_path_buf(),
                reason: format!(
                    "no {} found; expected the official cifar-10-batches-bin files",
                    if train {
                        "data_batch_*.bin"
                    } else {
                        "test_batch.bin"
                    }
                ),
            });
        }
        let mut set = Self {
            pixels: Vec::new(),
            labels: Vec::new(),
        };
        for f in files {
            let bytes = std::fs::read(&f).map_err(|e| DataError::io(&f, e))?;
            if bytes.is_empty() {
                return Err(DataError::Empty {
                    path: f,
                    reason: format!(
                        "empty file: the {} split would have no images; restore the official \
                         cifar-10-batches-bin file",
                        if train {
                            "training"
                        } else {
                            "test (validation)"
                        }
                    ),
                });
            }
            set.push_records(&f, &bytes)?;
        }
        Ok(set)
    }

    /// Parse records from `bytes` (file `path` for errors).
    pub fn push_records(&mut self, path: &Path, bytes: &[u8]) -> Result<(), DataError> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
            return Err(DataError::format(
                path,
                format!(
                    "{} bytes is not a whole number of 3,073-byte records (truncated or not a CIFAR-10 binary)",
                    bytes.len()
                ),
            ));
        }
        for (i, record) in bytes.chunks(RECORD).enumerate() {
            let label = record[0] as usize;
            if label > 9 {
                return Err(DataError::format(
                    path,
                    format!("record {i} has label {label}; CIFAR-10 labels are 0..9"),
                ));
            }
            self.labels.push(label);
            self.pixels.extend_from_slice(&record[1..]);
        }
        Ok(())
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The normalisation [`batch`](Self::batch) applies, as an [`ImageNorm`]: pixels / 255,
    /// then [`MEAN`] and [`STD`] (the built-in MobileNet's training input).
    pub fn default_norm() -> ImageNorm {
        ImageNorm {
            scale: 1.0 / 255.0,
            mean: MEAN,
            std: STD,
            bgr: false,
        }
    }

    /// Normalised images `[batch, 3, 32, 32]` and labels `[batch]`; `augment` with a seeded
    /// `rng` for training. Normalised by [`default_norm`](Self::default_norm), computed as
    /// `(pixel / 255 − MEAN[c]) / STD[c]` (the built-in models' input, unchanged).
    pub fn batch(
        &self,
        indices: &[usize],
        augment: Option<(&CifarAugment, &mut SeededRng)>,
        device: &Device,
    ) -> (Tensor<4>, Tensor<1, Int>) {
        self.batch_by(indices, augment, device, |pixel, c| {
            (pixel / 255.0 - MEAN[c]) / STD[c]
        })
    }

    /// As [`batch`](Self::batch), normalised by `norm` (an imported model's
    /// [`ImageNorm`]: [`ImageNorm::raw`] for MLPerf's ResNet-8), channels swapped when
    /// `norm.bgr`. Padding from the augmentation's crop is a black pixel (0) before
    /// normalisation, as in [`batch`](Self::batch). `[batch, 3, 32, 32]` and `[batch]`.
    pub fn batch_with(
        &self,
        indices: &[usize],
        augment: Option<(&CifarAugment, &mut SeededRng)>,
        norm: &ImageNorm,
        device: &Device,
    ) -> Result<(Tensor<4>, Tensor<1, Int>), DataError> {
        norm.check()?;
        let bgr = norm.bgr;
        let (x, y) = self.batch_by(indices, augment, device, |pixel, c| norm.apply(pixel, c));
        // Channel c of a BGR model's input is RGB channel 2 - c; the mean and std are indexed
        // by RGB channel, as `ImageNorm::apply` documents.
        let x = if bgr { x.flip([1]) } else { x };
        Ok((x, y))
    }

    /// Images at `indices` with `normalise(pixel 0..=255, rgb channel)` per value.
    fn batch_by(
        &self,
        indices: &[usize],
        augment: Option<(&CifarAugment, &mut SeededRng)>,
        device: &Device,
        normalise: impl Fn(f32, usize) -> f32,
    ) -> (Tensor<4>, Tensor<1, Int>) {
        let per = 3 * 32 * 32;
        let mut x = Vec::with_capacity(indices.len() * per);
        let mut y = Vec::with_capacity(indices.len());
        let mut augment = augment;
        for &i in indices {
            let img = &self.pixels[i * per..(i + 1) * per];
            let (dy, dx, flip) = match augment.as_mut() {
                Some((a, rng)) => {
                    let p = a.pad as i64;
                    (rng.i64_in(-p, p), rng.i64_in(-p, p), a.flip && rng.coin())
                }
                None => (0, 0, false),
            };
            for c in 0..3 {
                for r in 0..32i64 {
                    for col in 0..32i64 {
                        let sr = r + dy;
                        let sc = if flip { 31 - col } else { col } + dx;
                        let pixel = if (0..32).contains(&sr) && (0..32).contains(&sc) {
                            img[c * 1024 + (sr * 32 + sc) as usize] as f32
                        } else {
                            0.0
                        };
                        x.push(normalise(pixel, c));
                    }
                }
            }
            y.push(self.labels[i] as i64);
        }
        let n = indices.len();
        (
            Tensor::from_data(TensorData::new(x, [n, 3, 32, 32]), device),
            Tensor::from_data(TensorData::new(y, [n]), device),
        )
    }

    /// A seeded rng for augmentation.
    pub fn rng(seed: u64) -> SeededRng {
        SeededRng::new(seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records_and_rejects_bad_files() {
        let mut bytes = vec![3u8];
        bytes.extend((0..3072).map(|i| (i % 256) as u8));
        let mut set = Cifar10 {
            pixels: vec![],
            labels: vec![],
        };
        set.push_records(Path::new("x.bin"), &bytes).unwrap();
        assert_eq!(set.labels, vec![3]);
        let (x, y) = set.batch(&[0], None, &Device::flex());
        assert_eq!(x.dims(), [1, 3, 32, 32]);
        assert_eq!(
            y.into_data().convert::<i64>().try_to_vec::<i64>().unwrap(),
            vec![3]
        );
        let err = set
            .push_records(Path::new("short.bin"), &bytes[..100])
            .unwrap_err();
        assert!(err.to_string().contains("short.bin") && err.to_string().contains("3,073"));
        let mut bad = bytes.clone();
        bad[0] = 12;
        assert!(
            set.push_records(Path::new("bad.bin"), &bad)
                .unwrap_err()
                .to_string()
                .contains("label 12")
        );
        assert!(Cifar10::open(Path::new("/nonexistent"), true).is_err());
    }

    fn values(x: Tensor<4>) -> Vec<f32> {
        x.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn default_batches_are_unchanged_and_any_norm_can_be_given() {
        let mut set = Cifar10 {
            pixels: vec![],
            labels: vec![],
        };
        let mut bytes = Vec::new();
        for (label, seed) in [(7u8, 3usize), (2, 11)] {
            bytes.push(label);
            bytes.extend((0..3072).map(|i| ((i * seed + i / 7) % 256) as u8));
        }
        set.push_records(Path::new("t.bin"), &bytes).unwrap();
        let device = Device::flex();
        // The built-in normalisation, written out as it always was: bit for bit.
        let old = |pixel: f32, c: usize| (pixel / 255.0 - MEAN[c]) / STD[c];
        let want: Vec<u32> = [1usize, 0]
            .iter()
            .flat_map(|&i| (0..3072).map(move |k| (i, k)))
            .map(|(i, k)| old(set.pixels[i * 3072 + k] as f32, k / 1024).to_bits())
            .collect();
        let (x, _) = set.batch(&[1, 0], None, &device);
        let got: Vec<u32> = values(x).iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, want);

        // Augmented: the same draws from the same seed, padding a black pixel.
        let a = CifarAugment::default();
        let (x, _) = set.batch(&[0], Some((&a, &mut Cifar10::rng(5))), &device);
        let mut rng = Cifar10::rng(5);
        let p = a.pad as i64;
        let (dy, dx) = (rng.i64_in(-p, p), rng.i64_in(-p, p));
        let flip = rng.coin();
        let mut want = Vec::new();
        for c in 0..3 {
            for r in 0..32i64 {
                for col in 0..32i64 {
                    let (sr, sc) = (r + dy, if flip { 31 - col } else { col } + dx);
                    let inside = (0..32).contains(&sr) && (0..32).contains(&sc);
                    let pixel = if inside {
                        set.pixels[c * 1024 + (sr * 32 + sc) as usize] as f32
                    } else {
                        0.0
                    };
                    want.push(old(pixel, c).to_bits());
                }
            }
        }
        let got: Vec<u32> = values(x).iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, want);

        // The default as an ImageNorm agrees to rounding; raw pixels are the bytes.
        let (x, y) = set
            .batch_with(&[1, 0], None, &Cifar10::default_norm(), &device)
            .unwrap();
        let (d, _) = set.batch(&[1, 0], None, &device);
        let worst = values(x)
            .iter()
            .zip(values(d))
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst < 1e-5, "{worst}");
        assert_eq!(crate::host_labels(y), vec![2, 7]);
        let (x, _) = set
            .batch_with(&[0], None, &ImageNorm::raw(), &device)
            .unwrap();
        let raw: Vec<f32> = set.pixels[..3072].iter().map(|b| *b as f32).collect();
        assert_eq!(values(x), raw);
        let bgr = ImageNorm {
            bgr: true,
            ..ImageNorm::raw()
        };
        let (x, _) = set.batch_with(&[0], None, &bgr, &device).unwrap();
        let v = values(x);
        assert_eq!(v[..1024], raw[2048..]);
        assert_eq!(v[2048..], raw[..1024]);
        let broken = ImageNorm {
            std: [1.0, 0.0, 1.0],
            ..ImageNorm::raw()
        };
        assert!(set.batch_with(&[0], None, &broken, &device).is_err());
    }
}
