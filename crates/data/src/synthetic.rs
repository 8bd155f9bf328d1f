//! Deterministic synthetic image classification sets.
//!
//! Class `k` is an oriented sinusoidal grating: orientation `k·π/classes`, spatial frequency
//! alternating between two values, random phase, a random bright blob as a distractor and
//! Gaussian pixel noise. A small CNN learns it well above chance within a few hundred steps,
//! yet the noise keeps it from being trivially separable, so pruning damage is visible.

use crate::SeededRng;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::DataError;

/// Settings of a synthetic image set.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticImages {
    /// Number of classes (orientations).
    pub num_classes: usize,
    /// Image height and width in pixels.
    pub size: usize,
    /// Standard deviation of the additive Gaussian pixel noise.
    pub noise: f32,
    /// Colour channels (1, or 3 for a CIFAR-shaped set; each channel a phase-shifted copy).
    pub channels: usize,
}

impl Default for SyntheticImages {
    fn default() -> Self {
        Self {
            num_classes: 8,
            size: 16,
            noise: 0.9,
            channels: 1,
        }
    }
}

impl SyntheticImages {
    /// A CIFAR-shaped stand-in: 10 classes, 3×32×32.
    pub fn cifar_like() -> Self {
        Self {
            num_classes: 10,
            size: 32,
            noise: 1.5,
            channels: 3,
        }
    }
}

/// An in-memory image set: `images` is `[len, channels, size, size]` row-major, `labels` in
/// `0..num_classes`.
#[derive(Clone, Debug)]
pub struct ImageSet {
    /// Pixels, `len · channels · size · size` values.
    pub images: Vec<f32>,
    /// Colour channels.
    pub channels: usize,
    /// One label per image.
    pub labels: Vec<usize>,
    /// Image height and width.
    pub size: usize,
    /// Number of classes.
    pub num_classes: usize,
}

impl SyntheticImages {
    /// Generate `len` images with labels cycling through the classes, deterministically from
    /// `seed` (same seed, same pixels).
    pub fn generate(&self, len: usize, seed: u64) -> Result<ImageSet, DataError> {
        if self.num_classes < 2 {
            return Err(DataError::InvalidSetting {
                field: "num_classes",
                reason: format!("{} given, at least 2 needed", self.num_classes),
            });
        }
        if self.size < 4 {
            return Err(DataError::InvalidSetting {
                field: "size",
                reason: format!("{} given, at least 4 pixels needed", self.size),
            });
        }
        if !(1..=4).contains(&self.channels) {
            return Err(DataError::InvalidSetting {
                field: "channels",
                reason: format!("{} given, 1 to 4 supported", self.channels),
            });
        }
        if !(self.noise.is_finite() && self.noise >= 0.0) {
            return Err(DataError::InvalidSetting {
                field: "noise",
                reason: format!("{} given, a finite value >= 0 is needed", self.noise),
            });
        }
        let mut rng = SeededRng::new(seed);
        let s = self.size;
        let mut images = Vec::with_capacity(len * s * s);
        let mut labels = Vec::with_capacity(len);
        for i in 0..len {
            let label = i % self.num_classes;
            let theta = label as f32 * std::f32::consts::PI / self.num_classes as f32;
            let freq = if label.is_multiple_of(2) { 0.18 } else { 0.28 };
            let phase = rng.f32_in(0.0, std::f32::consts::TAU);
            let (bx, by): (f32, f32) = (rng.f32_in(0.0, s as f32), rng.f32_in(0.0, s as f32));
            let (c, sn) = (theta.cos(), theta.sin());
            for channel in 0..self.channels {
                let shift = channel as f32 * 0.7;
                for y in 0..s {
                    for x in 0..s {
                        let (xf, yf) = (x as f32, y as f32);
                        let grating =
                            (std::f32::consts::TAU * freq * (xf * c + yf * sn) + phase + shift)
                                .sin();
                        let d2 = (xf - bx).powi(2) + (yf - by).powi(2);
                        let blob = 1.5 * (-d2 / 6.0).exp();
                        images.push(grating + blob + self.noise * rng.gaussian());
                    }
                }
            }
            labels.push(label);
        }
        Ok(ImageSet {
            images,
            channels: self.channels,
            labels,
            size: s,
            num_classes: self.num_classes,
        })
    }
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The images at `indices` as a `[batch, channels, size, size]` tensor and their labels
    /// `[batch]`.
    pub fn batch(&self, indices: &[usize], device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
        let px = self.channels * self.size * self.size;
        let mut pixels = Vec::with_capacity(indices.len() * px);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            pixels.extend_from_slice(&self.images[i * px..(i + 1) * px]);
            labels.push(self.labels[i] as i64);
        }
        let n = indices.len();
        let x = Tensor::from_data(
            TensorData::new(pixels, [n, self.channels, self.size, self.size]),
            device,
        );
        let y = Tensor::from_data(TensorData::new(labels, [n]), device);
        (x, y)
    }

    /// Batches of indices covering the set once, shuffled deterministically by `seed`.
    /// The last batch may be smaller.
    pub fn shuffled_batches(&self, batch_size: usize, seed: u64) -> Vec<Vec<usize>> {
        crate::shuffled_batches(self.len(), batch_size, seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_images_other_seed_other_images() {
        let g = SyntheticImages::default();
        let a = g.generate(20, 7).unwrap();
        let b = g.generate(20, 7).unwrap();
        let c = g.generate(20, 8).unwrap();
        assert_eq!(a.images, b.images);
        assert_eq!(a.labels, b.labels);
        assert_ne!(a.images, c.images);
        assert_eq!(a.images.len(), 20 * 16 * 16);
    }

    #[test]
    fn class_means_differ_but_single_images_are_noisy() {
        // The class signal is a grating: its per-pixel correlation with the class template is
        // strong on average and the noise is of the same order as the signal.
        let g = SyntheticImages::default();
        let set = g.generate(64, 1).unwrap();
        let px = 16 * 16;
        let var: f32 = set.images.iter().map(|v| v * v).sum::<f32>() / set.images.len() as f32;
        assert!(var > 0.5 + 0.8 * 0.8 * 0.9, "signal + noise variance {var}");
        assert!(set.labels.iter().take(8).copied().eq(0..8));
        assert_eq!(set.batch(&[0, 3], &Device::flex()).0.dims(), [2, 1, 16, 16]);
        assert_eq!(set.images[..px].len(), px);
    }

    #[test]
    fn bad_settings_are_errors() {
        let g = SyntheticImages {
            num_classes: 1,
            ..Default::default()
        };
        assert!(matches!(
            g.generate(4, 0),
            Err(DataError::InvalidSetting {
                field: "num_classes",
                ..
            })
        ));
        let g = SyntheticImages {
            noise: f32::NAN,
            ..Default::default()
        };
        assert!(g.generate(4, 0).is_err());
    }

    #[test]
    fn shuffled_batches_cover_every_index_once() {
        let set = SyntheticImages::default().generate(37, 0).unwrap();
        let batches = set.shuffled_batches(10, 3);
        assert_eq!(batches.len(), 4);
        let mut all: Vec<usize> = batches.concat();
        all.sort_unstable();
        assert_eq!(all, (0..37).collect::<Vec<_>>());
        assert_eq!(set.shuffled_batches(10, 3), batches);
    }
}

/// Deterministic synthetic keyword clips: class 0 is noise only ("silence"), class `k > 0` a
/// class-specific chirp followed by a tone, at a random onset, level and noise. The built-in
/// stand-in for Speech Commands, in the same 16 kHz, 1 s format (so the same MFCC frontend and
/// DS-CNN input), learnable by DS-CNN in a few epochs but not trivially.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticKws {
    /// Classes (12, as Speech Commands).
    pub num_classes: usize,
    /// Standard deviation of the white noise.
    pub noise: f32,
}

impl Default for SyntheticKws {
    fn default() -> Self {
        Self {
            num_classes: 12,
            noise: 0.05,
        }
    }
}

impl SyntheticKws {
    /// `len` clips (labels cycling through the classes) as 16,000-sample audio.
    pub fn generate_audio(
        &self,
        len: usize,
        seed: u64,
    ) -> Result<(Vec<Vec<f32>>, Vec<usize>), DataError> {
        if self.num_classes < 2 {
            return Err(DataError::InvalidSetting {
                field: "num_classes",
                reason: format!("{} given, at least 2 needed", self.num_classes),
            });
        }
        let mut rng = SeededRng::new(seed);
        let rate = 16_000.0f32;
        let mut clips = Vec::with_capacity(len);
        let mut labels = Vec::with_capacity(len);
        for i in 0..len {
            let label = i % self.num_classes;
            let mut clip = vec![0f32; crate::wav::CLIP_SAMPLES];
            if label > 0 {
                let k = label as f32;
                let (f1, f2) = (250.0 + 140.0 * k, 600.0 + 230.0 * ((label * 7) % 11) as f32);
                let onset = 1600 + rng.index(3200);
                let level = rng.f32_in(0.2, 0.6);
                let (chirp, tone) = (6400usize, 4000usize);
                let mut phase = 0f32;
                for t in 0..chirp + tone {
                    let n = onset + t;
                    if n >= clip.len() {
                        break;
                    }
                    let f = if t < chirp {
                        f1 * (1.0 + 0.4 * t as f32 / chirp as f32)
                    } else {
                        f2
                    };
                    phase += std::f32::consts::TAU * f / rate;
                    let envelope = (std::f32::consts::PI * t as f32 / (chirp + tone) as f32).sin();
                    clip[n] = level * envelope * phase.sin();
                }
            }
            for v in clip.iter_mut() {
                *v = (*v + self.noise * rng.gaussian()).clamp(-1.0, 1.0);
            }
            clips.push(clip);
            labels.push(label);
        }
        Ok((clips, labels))
    }
}
