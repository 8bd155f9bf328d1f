//! What a model expects at its input: layout, pixel scaling, audio features, label order.
//!
//! A built-in model knows this from its family; an imported model (ONNX, float TFLite) does not,
//! so the record is given at import, stored with the model, and every loader asks it how to
//! turn raw data into the model's input. The int8 file's input quantization follows from it
//! (MLPerf's ResNet-8 takes raw RGB pixels 0..255, so its int8 input is `q = pixel − 128`).

use serde::{Deserialize, Serialize};

use crate::DataError;

/// The memory layout of the model's input in the original file. burn tensors are always
/// `[n, c, h, w]` inside burn-collab; the layout says how a file (or an `.npy` array) lays the
/// same values out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `[n, h, w, c]` (TensorFlow, TFLite, tf2onnx exports).
    #[default]
    Nhwc,
    /// `[n, c, h, w]` (PyTorch exports).
    Nchw,
    /// `[n, features]`: a vector per sample (held as `[n, features, 1, 1]` in burn).
    Flat,
}

/// How images become the model's input: `((pixel · scale) − mean[c]) / std[c]` with `pixel` in
/// 0..=255, channels in RGB order unless `bgr`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageNorm {
    /// Multiplies the raw 0..=255 pixel first (1/255 for 0..1 inputs, 1 for raw pixels).
    pub scale: f32,
    /// Per-channel mean subtracted after scaling.
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by last.
    pub std: [f32; 3],
    /// Channels in BGR order (Caffe-style models) instead of RGB.
    #[serde(default)]
    pub bgr: bool,
}

impl ImageNorm {
    /// Raw pixels 0..=255, RGB (MLPerf Tiny's ResNet-8 and VWW reference models).
    pub fn raw() -> Self {
        Self {
            scale: 1.0,
            mean: [0.0; 3],
            std: [1.0; 3],
            bgr: false,
        }
    }

    /// Pixels scaled to 0..=1.
    pub fn unit() -> Self {
        Self {
            scale: 1.0 / 255.0,
            ..Self::raw()
        }
    }

    /// The normalised value of raw `pixel` (0..=255) in RGB channel `c`.
    pub fn apply(&self, pixel: f32, c: usize) -> f32 {
        (pixel * self.scale - self.mean[c]) / self.std[c]
    }

    /// The input range `[lo, hi]` this normalisation produces from 0..=255 over all channels
    /// (what an int8 input quantization must cover).
    pub fn range(&self) -> (f32, f32) {
        (0..3).fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), c| {
            let (a, b) = (self.apply(0.0, c), self.apply(255.0, c));
            (lo.min(a.min(b)), hi.max(a.max(b)))
        })
    }

    /// Refuse scales and deviations that are zero or not finite.
    pub fn check(&self) -> Result<(), DataError> {
        let ok = self.scale.is_finite()
            && self.scale != 0.0
            && self.mean.iter().all(|m| m.is_finite())
            && self.std.iter().all(|s| s.is_finite() && *s != 0.0);
        if ok {
            Ok(())
        } else {
            Err(DataError::InvalidSetting {
                field: "input.image",
                reason: format!(
                    "scale {} mean {:?} std {:?}: scale and every std must be finite and non-zero, every mean finite",
                    self.scale, self.mean, self.std
                ),
            })
        }
    }
}

/// Which MFCC pipeline produced the features a keyword-spotting model was trained on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MfccKind {
    /// ML-KWS-for-MCU's `audio_ops.mfcc` (the published DS-CNN weights; [`crate::Frontend`]).
    MlKws,
    /// MLPerf Tiny's `tf.signal` pipeline: STFT with a Hann window, 40 log-mel bins 20..4000 Hz,
    /// `mfccs_from_log_mel_spectrograms`, 10 coefficients, 49 frames.
    TfSignal,
}

/// What the values at the model's input are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Features {
    /// Images from 0..=255 pixels.
    Image(ImageNorm),
    /// MFCCs of 1 s, 16 kHz audio clips.
    Mfcc {
        /// The pipeline.
        mfcc: MfccKind,
    },
    /// Values given as arrays (`.npy` / `.npz`) already in the model's input form.
    Array,
}

/// What a model expects at its input: the record an imported model carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// One sample as burn holds it: `[channels, height, width]` (`[features, 1, 1]` for
    /// [`Layout::Flat`]).
    pub shape: [usize; 3],
    /// How the original file lays out one sample.
    pub layout: Layout,
    /// What the values are.
    pub features: Features,
    /// Class names in output order, when known (MLPerf KWS: Down, Go, …, Silence, Unknown).
    #[serde(default)]
    pub labels: Vec<String>,
}

impl InputSpec {
    /// One sample's shape as the original file writes it, without the batch dimension
    /// (`[h, w, c]`, `[c, h, w]` or `[features]`).
    pub fn file_shape(&self) -> Vec<usize> {
        let [c, h, w] = self.shape;
        match self.layout {
            Layout::Nhwc => vec![h, w, c],
            Layout::Nchw => vec![c, h, w],
            Layout::Flat => vec![c * h * w],
        }
    }

    /// Check that a sample of shape `shape` (file layout, no batch dimension) fits, with a
    /// message that names both shapes and the layout.
    pub fn check_file_shape(&self, shape: &[usize], what: &str) -> Result<(), DataError> {
        let want = self.file_shape();
        if shape == want.as_slice() {
            return Ok(());
        }
        Err(DataError::InvalidSetting {
            field: "input shape",
            reason: format!(
                "{what} has samples of shape {shape:?}; the model takes {want:?} ({:?} layout). \
                 Convert the data to that shape, or import the model with the input it was trained on",
                self.layout
            ),
        })
    }

    /// Index into a file-layout sample of the value at burn position `(c, y, x)`.
    pub fn file_index(&self, c: usize, y: usize, x: usize) -> usize {
        let [cs, hs, ws] = self.shape;
        match self.layout {
            Layout::Nhwc => (y * ws + x) * cs + c,
            Layout::Nchw | Layout::Flat => (c * hs + y) * ws + x,
        }
    }

    /// One file-layout sample reordered to burn's `[c, h, w]` order.
    pub fn to_burn_order(&self, sample: &[f32]) -> Vec<f32> {
        let [cs, hs, ws] = self.shape;
        let mut out = Vec::with_capacity(cs * hs * ws);
        for c in 0..cs {
            for y in 0..hs {
                for x in 0..ws {
                    out.push(sample[self.file_index(c, y, x)]);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nhwc_samples_reorder_to_channels_first() {
        let spec = InputSpec {
            shape: [3, 2, 2],
            layout: Layout::Nhwc,
            features: Features::Array,
            labels: vec![],
        };
        // file [h][w][c]: value = 100 c + 10 y + x
        let mut file = vec![0.0; 12];
        for y in 0..2 {
            for x in 0..2 {
                for c in 0..3 {
                    file[(y * 2 + x) * 3 + c] = (100 * c + 10 * y + x) as f32;
                }
            }
        }
        let burn = spec.to_burn_order(&file);
        assert_eq!(burn[0..4], [0.0, 1.0, 10.0, 11.0]);
        assert_eq!(burn[8..12], [200.0, 201.0, 210.0, 211.0]);
        assert_eq!(spec.file_shape(), vec![2, 2, 3]);
        assert!(spec.check_file_shape(&[3, 2, 2], "x.npy").is_err());
    }

    #[test]
    fn raw_pixels_span_0_to_255_and_zero_std_is_refused() {
        assert_eq!(ImageNorm::raw().range(), (0.0, 255.0));
        let mut n = ImageNorm::unit();
        assert!(n.check().is_ok());
        n.std[1] = 0.0;
        assert!(n.check().is_err());
    }
}
