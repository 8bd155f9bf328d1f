//! WAV decoding as TensorFlow's `DecodeWav(desired_channels=1, desired_samples=16000)`.

use std::path::Path;

use crate::DataError;

/// Sample rate of the keyword-spotting models.
pub const SAMPLE_RATE: u32 = 16_000;
/// Samples per clip (1 s).
pub const CLIP_SAMPLES: usize = 16_000;

/// What decoding changed in the files of a load, counted per kind (a file can count in several):
/// the models expect 16-bit mono clips of at most one second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Conversions {
    /// Files with more than one channel, averaged to mono.
    pub multichannel: usize,
    /// 8-bit files, scaled to the 16-bit range.
    pub bits_8: usize,
    /// 24-bit files.
    pub bits_24: usize,
    /// Files of any other sample format (32-bit integer or float).
    pub other_format: usize,
    /// Clips longer than one second, cut to their first 16,000 samples.
    pub cut: usize,
}

impl Conversions {
    /// Whether nothing was converted.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Log one warning with the counts (nothing when there are none); `what` names the data.
    pub fn warn(&self, what: &str) {
        if !self.is_empty() {
            tracing::warn!(
                data = what,
                "{self}; the models expect 16-bit mono clips of at most 1 s"
            );
        }
    }
}

impl std::ops::AddAssign for Conversions {
    fn add_assign(&mut self, other: Self) {
        self.multichannel += other.multichannel;
        self.bits_8 += other.bits_8;
        self.bits_24 += other.bits_24;
        self.other_format += other.other_format;
        self.cut += other.cut;
    }
}

impl std::fmt::Display for Conversions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = [
            (self.multichannel, "stereo / multichannel, averaged to mono"),
            (self.bits_8, "8-bit, scaled"),
            (self.bits_24, "24-bit, scaled"),
            (self.other_format, "32-bit or float, scaled"),
            (self.cut, "longer than 1 s, cut to the first second"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} WAV file{} {what}", if *n == 1 { "" } else { "s" }))
        .collect();
        if parts.is_empty() {
            f.write_str("no WAV file converted")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// Decode a WAV file to `f32` samples in [−1, 1): 16-bit PCM as `v / 32768` (exactly
/// TensorFlow's `DecodeWav`), other integer widths scaled the same way, float as is. Stereo or
/// multichannel is averaged to mono. Clips are zero-padded or truncated to 16,000 samples.
/// A sample rate other than 16 kHz is an error naming the file.
pub fn read_clip(path: &Path) -> Result<Vec<f32>, DataError> {
    read_clip_noted(path).map(|(clip, _)| clip)
}

/// As [`read_clip`], with what was converted in this file (each count 0 or 1).
pub fn read_clip_noted(path: &Path) -> Result<(Vec<f32>, Conversions), DataError> {
    let (mut mono, mut notes) = decode(path)?;
    if mono.len() > CLIP_SAMPLES {
        notes.cut = 1;
    }
    mono.resize(CLIP_SAMPLES, 0.0);
    Ok((mono, notes))
}

/// Decode a whole 16 kHz WAV file to mono `f32` samples (any length), as [`read_clip`].
pub fn read_any(path: &Path) -> Result<Vec<f32>, DataError> {
    decode(path).map(|(samples, _)| samples)
}

fn decode(path: &Path) -> Result<(Vec<f32>, Conversions), DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = hound::WavReader::new(std::io::BufReader::new(file))
        .map_err(|e| DataError::format(path, format!("not a readable WAV file ({e})")))?;
    let spec = reader.spec();
    if spec.sample_rate != SAMPLE_RATE {
        return Err(DataError::format(
            path,
            format!(
                "sample rate {} Hz; the models need {SAMPLE_RATE} Hz (e.g. `sox in.wav -r 16000 out.wav`)",
                spec.sample_rate
            ),
        ));
    }
    let channels = spec.channels.max(1) as usize;
    let notes = Conversions {
        multichannel: usize::from(channels > 1),
        bits_8: usize::from(
            spec.sample_format == hound::SampleFormat::Int && spec.bits_per_sample == 8,
        ),
        bits_24: usize::from(
            spec.sample_format == hound::SampleFormat::Int && spec.bits_per_sample == 24,
        ),
        other_format: usize::from(
            spec.sample_format == hound::SampleFormat::Float
                || !matches!(spec.bits_per_sample, 8 | 16 | 24),
        ),
        cut: 0,
    };
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32;
            reader
                .into_samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect::<Result<_, _>>()
        }
        hound::SampleFormat::Float => reader.into_samples::<f32>().collect::<Result<_, _>>(),
    }
    .map_err(|e| DataError::format(path, format!("truncated or corrupt sample data ({e})")))?;
    let mono = if channels == 1 {
        interleaved
    } else {
        interleaved
            .chunks(channels)
            .map(|frame| frame.iter().sum::<f32>() / channels as f32)
            .collect()
    };
    Ok((mono, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, rate: u32, channels: u16, samples: &[i16]) {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        for s in samples {
            w.write_sample(*s).unwrap();
        }
        w.finalize().unwrap();
    }

    #[test]
    fn decodes_pads_downmixes_and_rejects() {
        let dir = tempfile::tempdir().unwrap();
        let mono = dir.path().join("mono.wav");
        write(&mono, 16_000, 1, &[16384, -32768, 1]);
        let clip = read_clip(&mono).unwrap();
        assert_eq!(clip.len(), CLIP_SAMPLES);
        assert_eq!(&clip[..4], &[0.5, -1.0, 1.0 / 32768.0, 0.0]);
        let stereo = dir.path().join("stereo.wav");
        write(&stereo, 16_000, 2, &[16384, 0, -16384, -16384]);
        assert_eq!(&read_clip(&stereo).unwrap()[..2], &[0.25, -0.5]);
        let wrong_rate = dir.path().join("44k.wav");
        write(&wrong_rate, 44_100, 1, &[0; 10]);
        let err = read_clip(&wrong_rate).unwrap_err().to_string();
        assert!(err.contains("44k.wav") && err.contains("44100 Hz"), "{err}");
        let garbage = dir.path().join("garbage.wav");
        std::fs::write(&garbage, b"RIFF1234WAVEfmt nonsense").unwrap();
        assert!(matches!(read_clip(&garbage), Err(DataError::Format { .. })));
        let truncated = dir.path().join("truncated.wav");
        let bytes = std::fs::read(&mono).unwrap();
        std::fs::write(&truncated, &bytes[..bytes.len() - 3]).unwrap();
        assert!(read_clip(&truncated).is_err());
        assert!(matches!(
            read_clip(&dir.path().join("missing.wav")),
            Err(DataError::Io { .. })
        ));
    }
}
