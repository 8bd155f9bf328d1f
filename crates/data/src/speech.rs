//! Speech Commands: the 12-class keyword-spotting set of the published DS-CNN models.
//!
//! Two layouts are read:
//! - prepared: one folder per class, `_silence_/` and `_unknown_/` included (what
//!   `../shared/data/speech_commands_12` is);
//! - standard (the downloaded archive): one folder per word plus `_background_noise_/`; words
//!   outside the ten keywords become `_unknown_`, and `_silence_` clips are cut from the
//!   background-noise recordings (one per second of noise, deterministic).
//!
//! Splits are by speaker, so no speaker is in two splits: the speaker is the token before
//! `_nohash_` in the file name (the whole file name for clips without one), and a clip is in
//! validation iff `int(sha1(speaker), 16) % 10 == 0`.

use std::path::{Path, PathBuf};

use crate::SeededRng;
use burn::tensor::{Device, Int, Tensor, TensorData};
use sha1::{Digest, Sha1};

use crate::DataError;
use crate::mfcc::{MFCC_COEFFICIENTS, MFCC_FRAMES, MfccFrontend};
use crate::wav::{CLIP_SAMPLES, Conversions, read_clip_noted};

/// Class names in the models' output order.
pub const KWS_LABELS: [&str; 12] = [
    "_silence_",
    "_unknown_",
    "yes",
    "no",
    "up",
    "down",
    "left",
    "right",
    "on",
    "off",
    "stop",
    "go",
];

/// The class names of MLPerf Tiny's KWS reference model, in its output order (MLPerf's
/// `get_dataset.py` `word_labels`, the order of TensorFlow Datasets' `speech_commands`).
///
/// Silence differs between the two recipes: MLPerf's `Silence` clips are 1 s of background
/// noise (cut from `_background_noise_` for training, the test archive's `_silence_`
/// recordings for testing), divided by their peak like every clip, so the model sees
/// full-scale noise; ML-KWS trains on zeros plus noise at volume ≤ 0.1 and validates on plain
/// zeros. `../shared/data/speech_commands_12/_silence_` holds the test archive's noise clips:
/// what MLPerf scores on.
pub const MLPERF_KWS_LABELS: [&str; 12] = [
    "Down", "Go", "Left", "No", "Off", "On", "Right", "Stop", "Up", "Yes", "Silence", "Unknown",
];

/// A class name without case or surrounding underscores (`_silence_` and `Silence` agree).
fn label_key(name: &str) -> String {
    name.trim().trim_matches('_').to_lowercase()
}

/// Where each of our classes ([`KWS_LABELS`] order) sits in `labels` (a model's output order,
/// e.g. an imported model's `InputSpec::labels`): `map[ours] = theirs`. Names match ignoring
/// case and surrounding underscores, so [`MLPERF_KWS_LABELS`] maps `yes` (our 2) to `Yes`
/// (its 9). `labels` must name the same 12 classes, each once.
pub fn kws_label_map<S: AsRef<str>>(labels: &[S]) -> Result<Vec<usize>, DataError> {
    let theirs: Vec<String> = labels.iter().map(|l| label_key(l.as_ref())).collect();
    let missing: Vec<&str> = KWS_LABELS
        .iter()
        .filter(|ours| !theirs.contains(&label_key(ours)))
        .copied()
        .collect();
    let ours: Vec<String> = KWS_LABELS.iter().map(|l| label_key(l)).collect();
    let extra: Vec<&str> = labels
        .iter()
        .zip(&theirs)
        .enumerate()
        .filter(|(i, (_, key))| !ours.contains(key) || theirs[..*i].contains(key))
        .map(|(_, (name, _))| name.as_ref())
        .collect();
    if !missing.is_empty() || !extra.is_empty() {
        let given: Vec<&str> = labels.iter().map(|l| l.as_ref()).collect();
        return Err(DataError::InvalidSetting {
            field: "labels",
            reason: format!(
                "the model's classes {given:?} are not the 12 keyword-spotting classes \
                 {KWS_LABELS:?} in some order (missing: {missing:?}; unknown or repeated: \
                 {extra:?}); give the model's labels by these names, case and surrounding \
                 underscores ignored"
            ),
        });
    }
    Ok(ours
        .iter()
        .map(|key| theirs.iter().position(|t| t == key).unwrap_or_default())
        .collect())
}

/// Which part of a set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Every clip.
    All,
    /// Speakers whose hash bucket is not 0.
    Train,
    /// Speakers whose hash bucket (sha1 mod 10) is 0.
    Validation,
}

/// The speaker of a clip: the token before `_nohash_` (`backward_0c540988_nohash_0.wav.wav` →
/// `0c540988`), or the whole file name when there is none (`1037.wav`).
pub fn speaker_of(file_name: &str) -> &str {
    match file_name.find("_nohash_") {
        Some(end) => {
            let head = &file_name[..end];
            head.rsplit('_').next().unwrap_or(head)
        }
        None => file_name,
    }
}

/// `int(sha1(speaker as UTF-8).hexdigest(), 16) % 10`: 0 means validation.
pub fn val_bucket(speaker: &str) -> u32 {
    Sha1::digest(speaker.as_bytes())
        .iter()
        .fold(0u32, |r, b| (r * 256 + *b as u32) % 10)
}

/// One clip: where it is, its class and speaker.
#[derive(Clone, Debug, PartialEq)]
pub struct Clip {
    /// The WAV file.
    pub path: PathBuf,
    /// Start sample inside the file (non-zero only for silence cut from long noise files).
    pub offset: usize,
    /// Class index in [`KWS_LABELS`] order.
    pub label: usize,
    /// Speaker key used for the split.
    pub speaker: String,
}

/// A Speech Commands folder, listed.
#[derive(Clone, Debug)]
pub struct SpeechCommands {
    /// The clips, sorted by class then path.
    pub clips: Vec<Clip>,
    /// Background-noise recordings (`_background_noise_/`), for augmentation.
    pub noise: Vec<PathBuf>,
}

fn wav_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.to_string_lossy().to_lowercase().ends_with(".wav"))
        .collect();
    files.sort();
    Ok(files)
}

impl SpeechCommands {
    /// List the clips under `root` (prepared or standard layout).
    pub fn open(root: &Path) -> Result<Self, DataError> {
        if !root.is_dir() {
            return Err(DataError::Empty {
                path: root.to_path_buf(),
                reason: "not a folder; pass the Speech Commands folder (one sub-folder per word)"
                    .into(),
            });
        }
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
            .map_err(|e| DataError::io(root, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        let name = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let noise_dir = root.join("_background_noise_");
        let noise = if noise_dir.is_dir() {
            wav_files(&noise_dir)?
        } else {
            Vec::new()
        };
        let prepared = dirs.iter().any(|d| name(d) == "_silence_");
        let mut clips = Vec::new();
        for dir in &dirs {
            let word = name(dir);
            if word == "_background_noise_" {
                continue;
            }
            let label = match KWS_LABELS.iter().position(|l| *l == word) {
                Some(l) => l,
                None if !prepared && !word.starts_with('_') => 1, // another word: _unknown_
                None => {
                    return Err(DataError::Format {
                        path: dir.clone(),
                        reason: format!(
                            "unknown class folder `{word}`; expected the 12 classes {KWS_LABELS:?} \
                             (prepared layout) or word folders (standard layout)"
                        ),
                    });
                }
            };
            for path in wav_files(dir)? {
                let file = name(&path);
                clips.push(Clip {
                    speaker: speaker_of(&file).to_string(),
                    path,
                    offset: 0,
                    label,
                });
            }
        }
        if !prepared {
            // Silence: one clip per full second of each background-noise recording.
            for path in &noise {
                let samples = hound::WavReader::open(path)
                    .map(|r| r.duration() as usize)
                    .unwrap_or(0);
                for (k, offset) in (0..samples.saturating_sub(CLIP_SAMPLES - 1))
                    .step_by(CLIP_SAMPLES)
                    .enumerate()
                {
                    clips.push(Clip {
                        speaker: format!("{}#{k}", name(path)),
                        path: path.clone(),
                        offset,
                        label: 0,
                    });
                }
            }
        }
        if clips.is_empty() {
            return Err(DataError::Empty {
                path: root.to_path_buf(),
                reason: "no .wav clips found in its class folders".into(),
            });
        }
        clips.sort_by(|a, b| (a.label, &a.path, a.offset).cmp(&(b.label, &b.path, b.offset)));
        Ok(Self { clips, noise })
    }

    /// The clips of `split`.
    pub fn split(&self, split: Split) -> Vec<Clip> {
        self.clips
            .iter()
            .filter(|c| match split {
                Split::All => true,
                Split::Train => val_bucket(&c.speaker) != 0,
                Split::Validation => val_bucket(&c.speaker) == 0,
            })
            .cloned()
            .collect()
    }

    /// Decode `clips` and compute their MFCCs with `frontend` in parallel.
    pub fn features<F: MfccFrontend + ?Sized>(
        clips: &[Clip],
        frontend: &F,
    ) -> Result<KwsSet, DataError> {
        let audio = load_audio(clips)?;
        Ok(KwsSet::from_audio(
            &audio,
            clips.iter().map(|c| c.label).collect(),
            frontend,
        ))
    }
}

/// Decode the clips (16,000 samples each), in parallel over the available cores. Files that
/// had to be converted (stereo, not 16-bit, longer than a clip) are counted in one warning.
pub fn load_audio(clips: &[Clip]) -> Result<Vec<Vec<f32>>, DataError> {
    let (audio, notes) = load_audio_noted(clips)?;
    notes.warn(&format!("{} clips", clips.len()));
    Ok(audio)
}

/// As [`load_audio`], returning the conversion counts instead of logging them.
pub fn load_audio_noted(clips: &[Clip]) -> Result<(Vec<Vec<f32>>, Conversions), DataError> {
    let decoded = parallel_map(clips, |clip| {
        if clip.offset == 0 {
            read_clip_noted(&clip.path)
        } else {
            // A second cut from a long background-noise recording: cutting is the point.
            read_segment(&clip.path, clip.offset).map(|a| (a, Conversions::default()))
        }
    });
    let mut audio = Vec::with_capacity(decoded.len());
    let mut notes = Conversions::default();
    for item in decoded {
        let (clip, n) = item?;
        audio.push(clip);
        notes += n;
    }
    Ok((audio, notes))
}

fn read_segment(path: &Path, offset: usize) -> Result<Vec<f32>, DataError> {
    let mut reader =
        hound::WavReader::open(path).map_err(|e| DataError::format(path, e.to_string()))?;
    reader
        .seek(offset as u32)
        .map_err(|e| DataError::io(path, e))?;
    let mut samples: Vec<f32> = reader
        .samples::<i16>()
        .take(CLIP_SAMPLES)
        .map(|s| s.map(|v| v as f32 / 32768.0))
        .collect::<Result<_, _>>()
        .map_err(|e| DataError::format(path, e.to_string()))?;
    samples.resize(CLIP_SAMPLES, 0.0);
    Ok(samples)
}

/// Apply `f` to every item on all cores, keeping the order.
pub(crate) fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .max(1);
    let chunk = items.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(|| part.iter().map(&f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("feature worker panicked"))
            .collect()
    })
}

/// Keyword-spotting features in memory: MFCCs `[len, 49, 10]` and labels.
#[derive(Clone, Debug)]
pub struct KwsSet {
    /// `len · 490` values.
    pub features: Vec<f32>,
    /// Class indices.
    pub labels: Vec<usize>,
}

/// Augmentation as in ML-KWS-for-MCU's `input_data.py`.
#[derive(Clone, Debug, PartialEq)]
pub struct Augment {
    /// Largest time shift in samples (1,600 = 100 ms).
    pub max_shift: usize,
    /// Probability that a clip gets background noise (0.8).
    pub noise_probability: f64,
    /// Largest noise volume (0.1).
    pub max_noise_volume: f32,
}

impl Default for Augment {
    fn default() -> Self {
        Self {
            max_shift: 1600,
            noise_probability: 0.8,
            max_noise_volume: 0.1,
        }
    }
}

impl Augment {
    /// A shifted, noisy copy of `clip`, deterministic for a seeded `rng`. `noise` holds the
    /// background recordings (each at least one clip long); silence clips get noise too.
    pub fn apply(&self, clip: &[f32], noise: &[Vec<f32>], rng: &mut SeededRng) -> Vec<f32> {
        let shift = if self.max_shift > 0 {
            rng.i64_in(-(self.max_shift as i64), self.max_shift as i64)
        } else {
            0
        };
        let mut out = vec![0f32; CLIP_SAMPLES];
        for (i, o) in out.iter_mut().enumerate() {
            let src = i as i64 - shift;
            if (0..CLIP_SAMPLES as i64).contains(&src) {
                *o = clip[src as usize];
            }
        }
        if !noise.is_empty() && rng.unit_f64() < self.noise_probability {
            let n = &noise[rng.index(noise.len())];
            let start = rng.index(n.len().saturating_sub(CLIP_SAMPLES) + 1);
            let volume = rng.f32_in(0.0, self.max_noise_volume);
            for (i, o) in out.iter_mut().enumerate() {
                *o = (*o + volume * n.get(start + i).copied().unwrap_or(0.0)).clamp(-1.0, 1.0);
            }
        }
        out
    }
}

impl KwsSet {
    /// MFCCs of decoded clips with `frontend` (either pipeline), in parallel.
    pub fn from_audio<F: MfccFrontend + ?Sized>(
        audio: &[Vec<f32>],
        labels: Vec<usize>,
        frontend: &F,
    ) -> Self {
        let features = parallel_map(audio, |a| frontend.mfcc(a)).concat();
        Self { features, labels }
    }

    /// Number of clips.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The clips at `indices` as the model input `[batch, 1, 49, 10]` and labels `[batch]`.
    pub fn batch(&self, indices: &[usize], device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
        let per = MFCC_FRAMES * MFCC_COEFFICIENTS;
        let mut x = Vec::with_capacity(indices.len() * per);
        let mut y = Vec::with_capacity(indices.len());
        for &i in indices {
            x.extend_from_slice(&self.features[i * per..(i + 1) * per]);
            y.push(self.labels[i] as i64);
        }
        let n = indices.len();
        (
            Tensor::from_data(
                TensorData::new(x, [n, 1, MFCC_FRAMES, MFCC_COEFFICIENTS]),
                device,
            ),
            Tensor::from_data(TensorData::new(y, [n]), device),
        )
    }

    /// Batches of indices covering the set once, shuffled by `seed` (the last may be smaller).
    pub fn shuffled_batches(&self, batch_size: usize, seed: u64) -> Vec<Vec<usize>> {
        crate::shuffled_batches(self.len(), batch_size, seed)
    }

    /// Put the labels in the order of `labels` (a model's class names, see
    /// [`kws_label_map`]): what a model whose outputs are ordered differently (MLPerf's) is
    /// scored against. The labels must be in [`KWS_LABELS`] order before.
    pub fn relabel<S: AsRef<str>>(&mut self, labels: &[S]) -> Result<(), DataError> {
        let map = kws_label_map(labels)?;
        for l in &mut self.labels {
            *l = map[*l];
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speakers_and_buckets() {
        assert_eq!(speaker_of("backward_0c540988_nohash_0.wav.wav"), "0c540988");
        assert_eq!(speaker_of("022cd682_nohash_1.wav"), "022cd682");
        assert_eq!(speaker_of("1037.wav"), "1037.wav");
        // sha1("022cd682") as an integer mod 10, computed independently:
        // the digest's big-endian value mod 10 equals the running remainder used here.
        let digest = Sha1::digest(b"022cd682");
        let mut r: u128 = 0;
        for b in digest.iter() {
            r = (r * 256 + *b as u128) % 10;
        }
        assert_eq!(val_bucket("022cd682") as u128, r);
    }

    #[test]
    fn mlperf_labels_map_by_name() {
        let map = kws_label_map(&MLPERF_KWS_LABELS).unwrap();
        for (ours, theirs) in map.iter().enumerate() {
            assert_eq!(
                KWS_LABELS[ours].trim_matches('_'),
                MLPERF_KWS_LABELS[*theirs].to_lowercase()
            );
        }
        assert_eq!((map[0], map[1], map[2], map[11]), (10, 11, 9, 1));
        assert_eq!(
            kws_label_map(&KWS_LABELS).unwrap(),
            (0..12).collect::<Vec<_>>()
        );
        let mut set = KwsSet {
            features: vec![0.0; 3 * 490],
            labels: vec![0, 2, 5],
        };
        set.relabel(&MLPERF_KWS_LABELS).unwrap();
        assert_eq!(set.labels, vec![10, 9, 0]);

        let mut bad = MLPERF_KWS_LABELS.to_vec();
        bad[3] = "Maybe";
        let err = kws_label_map(&bad).unwrap_err().to_string();
        assert!(err.contains("\"no\"") && err.contains("\"Maybe\""), "{err}");
        bad[3] = "Yes";
        let err = kws_label_map(&bad).unwrap_err().to_string();
        assert!(
            err.contains("missing: [\"no\"]") && err.contains("repeated: [\"Yes\"]"),
            "{err}"
        );
        assert!(kws_label_map(&MLPERF_KWS_LABELS[..10]).is_err());
    }

    #[test]
    fn augmentation_is_seeded_and_bounded() {
        let clip: Vec<f32> = (0..CLIP_SAMPLES)
            .map(|i| ((i % 100) as f32 / 100.0) - 0.5)
            .collect();
        let noise = vec![vec![0.9f32; CLIP_SAMPLES * 2]];
        let a = Augment::default();
        let x = a.apply(&clip, &noise, &mut SeededRng::new(1));
        let y = a.apply(&clip, &noise, &mut SeededRng::new(1));
        assert_eq!(x, y);
        assert!(x.iter().all(|v| (-1.0..=1.0).contains(v)));
        let none = Augment {
            max_shift: 0,
            noise_probability: 0.0,
            ..Default::default()
        };
        assert_eq!(none.apply(&clip, &noise, &mut SeededRng::new(1)), clip);
    }
}
