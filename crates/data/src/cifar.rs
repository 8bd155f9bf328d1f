//! CIFAR-10 in the official binary format (`data_batch_*.bin`, `test_batch.bin`).

use std::path::Path;

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::DataError;

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

    /// Normalised images `[batch, 3, 32, 32]` and labels; `augment` with a seeded `rng` for
    /// training.
    pub fn batch(
        &self,
        indices: &[usize],
        augment: Option<(&CifarAugment, &mut StdRng)>,
        device: &Device,
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
                    (
                        rng.random_range(-p..=p),
                        rng.random_range(-p..=p),
                        a.flip && rng.random::<bool>(),
                    )
                }
                None => (0, 0, false),
            };
            for c in 0..3 {
                for r in 0..32i64 {
                    for col in 0..32i64 {
                        let sr = r + dy;
                        let sc = if flip { 31 - col } else { col } + dx;
                        let v = if (0..32).contains(&sr) && (0..32).contains(&sc) {
                            img[c * 1024 + (sr * 32 + sc) as usize] as f32 / 255.0
                        } else {
                            0.0
                        };
                        x.push((v - MEAN[c]) / STD[c]);
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
    pub fn rng(seed: u64) -> StdRng {
        StdRng::seed_from_u64(seed)
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
}
