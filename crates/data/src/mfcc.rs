//! The MFCC frontend of the published DS-CNN models: TensorFlow's `AudioSpectrogram`
//! (periodic Hann 640, stride 320, 1024-point FFT, |X|²) followed by TensorFlow's `Mfcc`
//! (√, 40 HTK-style mel bands 20–4000 Hz over FFT bins 2..=256, floor 1e-12, ln, DCT-II scaled
//! by √(2/40), first 10 coefficients). Computed in `f64` as TensorFlow's kernels do; the
//! spectrogram is rounded to `f32` between the two ops, as in the graph.
//!
//! [`MfccFrontend`] puts it and MLPerf Tiny's pipeline ([`crate::tf_signal`]) behind one
//! interface; [`KwsFrontend`] picks one by a model's [`MfccKind`].

use std::sync::Arc;

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

use crate::input::MfccKind;
use crate::tf_signal::TfSignalFrontend;
use crate::wav::CLIP_SAMPLES;

/// Frames per 1 s clip: `1 + (16000 − 640) / 320`.
pub const MFCC_FRAMES: usize = 49;
/// Coefficients per frame.
pub const MFCC_COEFFICIENTS: usize = 10;
/// Window length in samples (40 ms).
pub const WINDOW: usize = 640;
/// Hop in samples (20 ms).
pub const STRIDE: usize = 320;
/// FFT length (next power of two of the window).
pub const FFT_LENGTH: usize = 1024;
/// Spectrogram bins.
pub const BINS: usize = FFT_LENGTH / 2 + 1;
const CHANNELS: usize = 40;
const LOWER_HZ: f64 = 20.0;
const UPPER_HZ: f64 = 4000.0;
const SAMPLE_RATE: f64 = 16_000.0;
const FLOOR: f64 = 1e-12;

/// The HTK mel scale both TensorFlow pipelines use: `1127 · ln(1 + f / 700)`.
pub(crate) fn freq_to_mel(freq: f64) -> f64 {
    1127.0 * (freq / 700.0).ln_1p()
}

/// DCT-II rows `[coefficients · channels]`: `√(2/N) · cos(i · π/N · (j + 0.5))`. TensorFlow's
/// `MfccDct` (ML-KWS) and `mfccs_from_log_mel_spectrograms` (`dct(type=2)` = `2 Σ …`, times
/// `rsqrt(2N)`) are both this matrix.
pub(crate) fn dct_table(coefficients: usize, channels: usize) -> Vec<f64> {
    let norm = (2.0 / channels as f64).sqrt();
    let arg = std::f64::consts::PI / channels as f64;
    let mut dct = Vec::with_capacity(coefficients * channels);
    for i in 0..coefficients {
        for j in 0..channels {
            dct.push(norm * (i as f64 * arg * (j as f64 + 0.5)).cos());
        }
    }
    dct
}

/// Precomputed window, FFT plan, mel filterbank and DCT table. Cheap to clone (shared plan).
#[derive(Clone)]
pub struct Frontend {
    window: Vec<f64>,
    fft: Arc<dyn Fft<f64>>,
    start: usize,
    end: usize,
    band: Vec<i32>,
    weight: Vec<f64>,
    dct: Vec<f64>,
}

impl std::fmt::Debug for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Frontend(TF AudioSpectrogram 640/320 + Mfcc 40 bands -> 10)"
        )
    }
}

impl Default for Frontend {
    fn default() -> Self {
        Self::new()
    }
}

impl Frontend {
    /// The DS-CNN frontend.
    pub fn new() -> Self {
        let window = (0..WINDOW)
            .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / WINDOW as f64).cos())
            .collect();
        let fft = FftPlanner::new().plan_fft_forward(FFT_LENGTH);

        // Mel filterbank exactly as TensorFlow's MfccMelFilterbank::Initialize.
        let mel_low = freq_to_mel(LOWER_HZ);
        let mel_span = freq_to_mel(UPPER_HZ) - mel_low;
        let spacing = mel_span / (CHANNELS + 1) as f64;
        let centers: Vec<f64> = (0..=CHANNELS)
            .map(|i| mel_low + spacing * (i + 1) as f64)
            .collect();
        let hz_per_bin = 0.5 * SAMPLE_RATE / (BINS - 1) as f64;
        let start = (1.5 + LOWER_HZ / hz_per_bin) as usize;
        let end = (UPPER_HZ / hz_per_bin) as usize;
        let mut band = vec![-2i32; BINS];
        let mut weight = vec![0f64; BINS];
        let mut channel = 0usize;
        for i in 0..BINS {
            let mel = freq_to_mel(i as f64 * hz_per_bin);
            if i < start || i > end {
                continue;
            }
            while channel < CHANNELS && centers[channel] < mel {
                channel += 1;
            }
            let c = channel as i32 - 1;
            band[i] = c;
            weight[i] = if c >= 0 {
                let c = c as usize;
                (centers[c + 1] - mel) / (centers[c + 1] - centers[c])
            } else {
                (centers[0] - mel) / (centers[0] - mel_low)
            };
        }

        let dct = dct_table(MFCC_COEFFICIENTS, CHANNELS);
        Self {
            window,
            fft,
            start,
            end,
            band,
            weight,
            dct,
        }
    }

    /// |X|² per frame, `[49 · 513]` row-major (frame, bin), as `f32` (TensorFlow's output type).
    /// `audio` must hold 16,000 samples.
    pub fn spectrogram(&self, audio: &[f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(MFCC_FRAMES * BINS);
        let mut buffer = vec![Complex::new(0.0f64, 0.0); FFT_LENGTH];
        let mut scratch = vec![Complex::new(0.0f64, 0.0); self.fft.get_inplace_scratch_len()];
        for frame in 0..MFCC_FRAMES {
            let offset = frame * STRIDE;
            for (i, b) in buffer.iter_mut().enumerate() {
                *b = if i < WINDOW {
                    let s = audio.get(offset + i).copied().unwrap_or(0.0) as f64;
                    Complex::new(s * self.window[i], 0.0)
                } else {
                    Complex::new(0.0, 0.0)
                };
            }
            self.fft.process_with_scratch(&mut buffer, &mut scratch);
            out.extend(buffer[..BINS].iter().map(|c| c.norm_sqr() as f32));
        }
        out
    }

    /// MFCCs of a spectrogram from [`spectrogram`](Self::spectrogram), `[49 · 10]`.
    pub fn mfcc_from_spectrogram(&self, spectrogram: &[f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(MFCC_FRAMES * MFCC_COEFFICIENTS);
        let mut mel = [0f64; CHANNELS];
        for frame in spectrogram.chunks(BINS) {
            mel.fill(0.0);
            // Index loop on purpose: three tables are read at the same bin.
            #[allow(clippy::needless_range_loop)]
            for i in self.start..=self.end {
                let magnitude = (frame[i] as f64).sqrt();
                let weighted = magnitude * self.weight[i];
                let channel = self.band[i];
                if channel >= 0 {
                    mel[channel as usize] += weighted;
                }
                let next = channel + 1;
                if (next as usize) < CHANNELS {
                    mel[next as usize] += magnitude - weighted;
                }
            }
            for m in mel.iter_mut() {
                *m = m.max(FLOOR).ln();
            }
            for i in 0..MFCC_COEFFICIENTS {
                let row = &self.dct[i * CHANNELS..(i + 1) * CHANNELS];
                out.push(row.iter().zip(&mel).map(|(c, m)| c * m).sum::<f64>() as f32);
            }
        }
        out
    }

    /// MFCCs of a 1 s clip (16,000 samples), `[49 · 10]` row-major (frame, coefficient).
    pub fn mfcc(&self, audio: &[f32]) -> Vec<f32> {
        debug_assert!(audio.len() >= CLIP_SAMPLES);
        self.mfcc_from_spectrogram(&self.spectrogram(audio))
    }
}

impl MfccFrontend for Frontend {
    fn kind(&self) -> MfccKind {
        MfccKind::MlKws
    }

    fn mfcc(&self, audio: &[f32]) -> Vec<f32> {
        // The spectrogram reads past a short clip as zeros.
        self.mfcc_from_spectrogram(&self.spectrogram(audio))
    }
}

/// A keyword-spotting feature pipeline: a 1 s, 16 kHz clip in, `[49 · 10]` MFCCs out
/// (row-major (frame, coefficient); the model input `[1, 49, 10]` in burn).
pub trait MfccFrontend: Send + Sync {
    /// Which pipeline this is.
    fn kind(&self) -> MfccKind;
    /// MFCCs of a clip of 16,000 samples (a shorter one is zero-padded): `[49 · 10]`.
    fn mfcc(&self, audio: &[f32]) -> Vec<f32>;
}

/// Either pipeline, chosen by a model's [`MfccKind`] (what a loader holds when an imported
/// model's [`crate::InputSpec`] decides the features).
#[derive(Clone, Debug)]
pub enum KwsFrontend {
    /// ML-KWS-for-MCU's `audio_ops.mfcc` (the published DS-CNN weights, the built-in models).
    MlKws(Frontend),
    /// MLPerf Tiny's `tf.signal` pipeline (its KWS reference model).
    TfSignal(TfSignalFrontend),
}

impl KwsFrontend {
    /// The pipeline of `kind`.
    pub fn new(kind: MfccKind) -> Self {
        match kind {
            MfccKind::MlKws => Self::MlKws(Frontend::new()),
            MfccKind::TfSignal => Self::TfSignal(TfSignalFrontend::new()),
        }
    }
}

impl Default for KwsFrontend {
    fn default() -> Self {
        Self::new(MfccKind::MlKws)
    }
}

impl MfccFrontend for KwsFrontend {
    fn kind(&self) -> MfccKind {
        match self {
            Self::MlKws(f) => f.kind(),
            Self::TfSignal(f) => f.kind(),
        }
    }

    fn mfcc(&self, audio: &[f32]) -> Vec<f32> {
        match self {
            Self::MlKws(f) => f.mfcc(audio),
            Self::TfSignal(f) => f.mfcc(audio),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filterbank_uses_bins_2_to_256() {
        let f = Frontend::new();
        assert_eq!((f.start, f.end), (2, 256));
        assert!(
            f.weight[f.start..=f.end]
                .iter()
                .all(|w| (0.0..=1.0).contains(w))
        );
    }

    #[test]
    fn silence_hits_the_floor() {
        let f = Frontend::new();
        let mfcc = f.mfcc(&vec![0.0; CLIP_SAMPLES]);
        assert_eq!(mfcc.len(), MFCC_FRAMES * MFCC_COEFFICIENTS);
        // c0 = sqrt(2/40) · 40 · ln(1e-12) = -247.139...
        let want = ((2.0f64 / 40.0).sqrt() * 40.0 * (1e-12f64).ln()) as f32;
        assert!((mfcc[0] - want).abs() < 1e-3, "{} vs {want}", mfcc[0]);
    }
}
