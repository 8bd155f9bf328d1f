//! WAV decoding as TensorFlow's `DecodeWav(desired_channels=1, desired_samples=16000)`.

use std::path::Path;

use crate::DataError;

/// Sample rate of the keyword-spotting models.
pub const SAMPLE_RATE: u32 = 16_000;
/// Samples per clip (1 s).
pub const CLIP_SAMPLES: usize = 16_000;

/// Decode a WAV file to `f32` samples in [−1, 1): 16-bit PCM as `v / 32768` (exactly
/// TensorFlow's `DecodeWav`), other integer widths scaled the same way, float as is. Stereo or
/// multichannel is averaged to mono. Clips are zero-padded or truncated to 16,000 samples.
/// A sample rate other than 16 kHz is an error naming the file.
pub fn read_clip(path: &Path) -> Result<Vec<f32>, DataError> {
    let mut mono = read_any(path)?;
    mono.resize(CLIP_SAMPLES, 0.0);
    Ok(mono)
}

/// Decode a whole 16 kHz WAV file to mono `f32` samples (any length), as [`read_clip`].
pub fn read_any(path: &Path) -> Result<Vec<f32>, DataError> {
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
    Ok(if channels == 1 {
        interleaved
    } else {
        interleaved
            .chunks(channels)
            .map(|frame| frame.iter().sum::<f32>() / channels as f32)
            .collect()
    })
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
