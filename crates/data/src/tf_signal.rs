//! MLPerf Tiny's keyword-spotting features ([`MfccKind::TfSignal`]): the `tf.signal` pipeline of
//! MLPerf's `get_dataset.py` (`feature_type = mfcc`), which its DS-CNN reference model
//! (`kws_ref_model.tflite`) was trained on. It differs from ML-KWS's `audio_ops.mfcc`
//! ([`crate::Frontend`]) in every step but the DCT, so the two are not interchangeable:
//!
//! 1. the clip is divided by its largest sample (`x / reduce_max(x)`, signed: MLPerf's
//!    `get_dataset.py` does this before anything else), then zero-padded or cut to 16,000;
//! 2. `tf.signal.stft`: 49 frames of 480 samples (30 ms) every 320 (20 ms), periodic Hann
//!    window (`tf.signal.hann_window`), 512-point FFT (next power of two), magnitude `|X|`
//!    (not `|X|²`), 257 bins;
//! 3. `tf.signal.linear_to_mel_weight_matrix(40, 257, 16000, 20, 4000)`: 40 triangles, HTK mel
//!    scale, edges evenly spaced in mel; bin `k` sits at `k · 8000 / 256` Hz and the DC bin
//!    gets no weight;
//! 4. `log(mel + 1e-6)`;
//! 5. `tf.signal.mfccs_from_log_mel_spectrograms`: `dct(type=2) · rsqrt(2 · 40)`, i.e.
//!    `√(2/40) · Σ_j log_mel[j] · cos(π i (j + ½) / 40)`, the first 10 coefficients.
//!
//! The output is `[49, 10]` per clip (frame, coefficient), the model's `[1, 49, 10, 1]` NHWC
//! input, burn `[1, 49, 10]`. Computed in `f64` (TensorFlow computes in `f32`); the two agree
//! to float rounding.

use std::sync::Arc;

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

use crate::input::MfccKind;
use crate::mfcc::{MFCC_COEFFICIENTS, MFCC_FRAMES, MfccFrontend, dct_table, freq_to_mel};
use crate::wav::CLIP_SAMPLES;

/// Window length in samples (30 ms at 16 kHz).
pub const WINDOW: usize = 480;
/// Hop in samples (20 ms).
pub const STRIDE: usize = 320;
/// FFT length: the next power of two of [`WINDOW`].
pub const FFT_LENGTH: usize = 512;
/// Spectrogram bins: `FFT_LENGTH / 2 + 1`.
pub const BINS: usize = FFT_LENGTH / 2 + 1;
/// Mel bands.
pub const MEL_BANDS: usize = 40;
/// Lower edge of the first mel band, Hz.
pub const LOWER_HZ: f64 = 20.0;
/// Upper edge of the last mel band, Hz.
pub const UPPER_HZ: f64 = 4000.0;
/// Added to the mel energies before the logarithm.
pub const LOG_OFFSET: f64 = 1e-6;
const SAMPLE_RATE: f64 = 16_000.0;

/// The periodic Hann window of `tf.signal.hann_window(len)`: `0.5 − 0.5 · cos(2π n / len)`.
pub fn hann_window(len: usize) -> Vec<f64> {
    (0..len)
        .map(|n| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / len as f64).cos())
        .collect()
}

/// `tf.signal.linear_to_mel_weight_matrix(bands, bins, sample_rate, lower_hz, upper_hz)` as a
/// dense `[bins · bands]` row-major matrix (spectrogram bin, mel band): bin `k` at
/// `k · (sample_rate / 2) / (bins − 1)` Hz, band edges `bands + 2` points evenly spaced in
/// HTK mel between the two edges, weight `max(0, min(rising, falling))` of the triangle, row 0
/// (DC) all zero.
pub fn mel_weight_matrix(
    bands: usize,
    bins: usize,
    sample_rate: f64,
    lower_hz: f64,
    upper_hz: f64,
) -> Vec<f64> {
    let nyquist = sample_rate / 2.0;
    let (lo, hi) = (freq_to_mel(lower_hz), freq_to_mel(upper_hz));
    // linspace(lo, hi, bands + 2)
    let edges: Vec<f64> = (0..bands + 2)
        .map(|i| lo + (hi - lo) * i as f64 / (bands + 1) as f64)
        .collect();
    let mut weights = vec![0.0; bins * bands];
    for k in 1..bins {
        let mel = freq_to_mel(nyquist * k as f64 / (bins - 1) as f64);
        for b in 0..bands {
            let (left, center, right) = (edges[b], edges[b + 1], edges[b + 2]);
            let rising = (mel - left) / (center - left);
            let falling = (right - mel) / (right - center);
            weights[k * bands + b] = rising.min(falling).max(0.0);
        }
    }
    weights
}

/// The frontend of MLPerf Tiny's KWS reference model: window, FFT plan, mel triangles and DCT
/// table, precomputed. Cheap to clone (shared plan).
#[derive(Clone)]
pub struct TfSignalFrontend {
    window: Vec<f64>,
    fft: Arc<dyn Fft<f64>>,
    /// Per mel band: first spectrogram bin with a non-zero weight, and the weights from there.
    bands: Vec<(usize, Vec<f64>)>,
    dct: Vec<f64>,
}

impl std::fmt::Debug for TfSignalFrontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TfSignalFrontend(peak-normalised, tf.signal.stft 480/320/512 Hann, |X|, \
             40 mel 20-4000 Hz, log(+1e-6), DCT -> 10)"
        )
    }
}

impl Default for TfSignalFrontend {
    fn default() -> Self {
        Self::new()
    }
}

impl TfSignalFrontend {
    /// MLPerf Tiny's KWS frontend.
    pub fn new() -> Self {
        let dense = mel_weight_matrix(MEL_BANDS, BINS, SAMPLE_RATE, LOWER_HZ, UPPER_HZ);
        let bands = (0..MEL_BANDS)
            .map(|b| {
                let column: Vec<f64> = (0..BINS).map(|k| dense[k * MEL_BANDS + b]).collect();
                let first = column.iter().position(|w| *w > 0.0).unwrap_or(0);
                let last = column.iter().rposition(|w| *w > 0.0).unwrap_or(0);
                (first, column[first..=last.max(first)].to_vec())
            })
            .collect();
        Self {
            window: hann_window(WINDOW),
            fft: FftPlanner::new().plan_fft_forward(FFT_LENGTH),
            bands,
            dct: dct_table(MFCC_COEFFICIENTS, MEL_BANDS),
        }
    }

    /// The clip as MLPerf feeds it to the STFT: divided by its largest sample (when that is
    /// positive; TensorFlow would turn an all-zero or all-negative clip into NaN or flip its
    /// sign, so such a clip is left as it is), zero-padded or cut to 16,000 samples.
    pub fn normalise(audio: &[f32]) -> Vec<f32> {
        let peak = audio.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut out: Vec<f32> = if peak > 0.0 && peak.is_finite() {
            audio.iter().map(|s| s / peak).collect()
        } else {
            audio.to_vec()
        };
        out.resize(CLIP_SAMPLES, 0.0);
        out
    }

    /// `|stft|` of an already normalised clip: `[49 · 257]` row-major (frame, bin).
    pub fn magnitude(&self, audio: &[f32]) -> Vec<f64> {
        let mut out = Vec::with_capacity(MFCC_FRAMES * BINS);
        let mut buffer = vec![Complex::new(0.0f64, 0.0); FFT_LENGTH];
        let mut scratch = vec![Complex::new(0.0f64, 0.0); self.fft.get_inplace_scratch_len()];
        for frame in 0..MFCC_FRAMES {
            let offset = frame * STRIDE;
            for (i, b) in buffer.iter_mut().enumerate() {
                *b = match self.window.get(i) {
                    Some(w) => {
                        let s = audio.get(offset + i).copied().unwrap_or(0.0) as f64;
                        Complex::new(s * w, 0.0)
                    }
                    None => Complex::new(0.0, 0.0),
                };
            }
            self.fft.process_with_scratch(&mut buffer, &mut scratch);
            out.extend(buffer[..BINS].iter().map(|c| c.norm()));
        }
        out
    }

    /// `log(mel + 1e-6)` of a magnitude spectrogram from [`magnitude`](Self::magnitude):
    /// `[49 · 40]` row-major (frame, band).
    pub fn log_mel(&self, magnitude: &[f64]) -> Vec<f64> {
        let mut out = Vec::with_capacity(MFCC_FRAMES * MEL_BANDS);
        for frame in magnitude.chunks(BINS) {
            for (first, weights) in &self.bands {
                let mel: f64 = weights
                    .iter()
                    .zip(&frame[*first..])
                    .map(|(w, m)| w * m)
                    .sum();
                out.push((mel + LOG_OFFSET).ln());
            }
        }
        out
    }

    /// The first 10 MFCCs of log-mel frames from [`log_mel`](Self::log_mel): `[49 · 10]`.
    pub fn mfcc_from_log_mel(&self, log_mel: &[f64]) -> Vec<f32> {
        let mut out = Vec::with_capacity(MFCC_FRAMES * MFCC_COEFFICIENTS);
        for frame in log_mel.chunks(MEL_BANDS) {
            for row in self.dct.chunks(MEL_BANDS) {
                out.push(row.iter().zip(frame).map(|(c, m)| c * m).sum::<f64>() as f32);
            }
        }
        out
    }
}

impl MfccFrontend for TfSignalFrontend {
    fn kind(&self) -> MfccKind {
        MfccKind::TfSignal
    }

    fn mfcc(&self, audio: &[f32]) -> Vec<f32> {
        let clip = Self::normalise(audio);
        self.mfcc_from_log_mel(&self.log_mel(&self.magnitude(&clip)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mel_matrix_drops_dc_and_spans_20_to_4000_hz() {
        let w = mel_weight_matrix(MEL_BANDS, BINS, SAMPLE_RATE, LOWER_HZ, UPPER_HZ);
        assert!(w[..MEL_BANDS].iter().all(|v| *v == 0.0), "DC row");
        let hz = |k: usize| k as f64 * 8000.0 / 256.0;
        for k in 0..BINS {
            let row = &w[k * MEL_BANDS..(k + 1) * MEL_BANDS];
            let used = row.iter().any(|v| *v > 0.0);
            assert_eq!(used, hz(k) > LOWER_HZ && hz(k) < UPPER_HZ, "bin {k}");
            assert!(row.iter().all(|v| (0.0..=1.0).contains(v)));
            // Inside the range, adjacent triangles overlap so the weights of a bin add to 1
            // except below the first and above the last centre.
            let sum: f64 = row.iter().sum();
            assert!(sum <= 1.0 + 1e-12, "bin {k}: {sum}");
        }
        let f = TfSignalFrontend::new();
        assert_eq!(f.bands.len(), MEL_BANDS);
        assert!(
            f.bands
                .iter()
                .all(|(first, w)| *first >= 1 && !w.is_empty())
        );
    }

    #[test]
    fn peak_normalisation_makes_the_scale_irrelevant() {
        let clip: Vec<f32> = (0..12_000)
            .map(|i| (i as f32 * 0.05).sin() * 0.3 + ((i * 7) % 13) as f32 * 0.001)
            .collect();
        // A power of two scales exactly in f32, so the division by the peak undoes it exactly.
        let loud: Vec<f32> = clip.iter().map(|s| s * 4.0).collect();
        let f = TfSignalFrontend::new();
        let (a, b) = (f.mfcc(&clip), f.mfcc(&loud));
        assert_eq!(a.len(), MFCC_FRAMES * MFCC_COEFFICIENTS);
        assert_eq!(a, b);
        let unscaled = f.mfcc_from_log_mel(&f.log_mel(&f.magnitude(&loud)));
        assert!((unscaled[0] - a[0]).abs() > 1.0, "{} {}", unscaled[0], a[0]);
        // Zeros stay zeros (no NaN): log(1e-6) in every band, so c0 = √(2/40) · 40 · ln 1e-6.
        let silent = f.mfcc(&[0.0; CLIP_SAMPLES]);
        let c0 = ((2.0f64 / 40.0).sqrt() * 40.0 * LOG_OFFSET.ln()) as f32;
        assert!((silent[0] - c0).abs() < 1e-4 && silent[1].abs() < 1e-4);
        assert!(silent.iter().all(|v| v.is_finite()));
    }
}
