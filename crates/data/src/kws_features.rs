//! Prepared keyword-spotting features in one file: the MFCCs a DS-CNN takes, already computed,
//! with each clip's class and split. It lets a small real sample ship with the project
//! (`datasets/speech_commands_sample/features.bin`) so that a fresh clone trains on real speech
//! without downloading the WAV clips, and it skips the MFCC frontend at load time.
//!
//! Format (little-endian), version 1:
//!
//! | bytes | what |
//! |---|---|
//! | 8 | magic `CLBKWSF\x01` (`\x01` is the version) |
//! | 1 | MFCC pipeline: 0 ML-KWS ([`crate::Frontend`]), 1 `tf.signal` |
//! | 2 + 2 | frames, coefficients per frame (49, 10) |
//! | 1, then per class 1 + n | class count, then each name's length and UTF-8 bytes |
//! | 4 | clip count `n` |
//! | 4 · coefficients · 2 | per coefficient: `min` (f32), then `step` (f32) |
//! | n | labels (class index) |
//! | n | splits (0 training, 1 validation) |
//! | n · frames · coefficients | values as `u8`: value = `min[c] + step[c] · q` |
//! | 8 | FNV-1a 64 of every byte before it |
//!
//! Values are quantized per coefficient to 256 levels between that coefficient's minimum and
//! maximum over the file, so the error of a value is at most half its coefficient's step
//! ([`KwsFeatures::steps`]); the checksum catches a file damaged in transit.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::input::MfccKind;
use crate::speech::{KwsSet, Split};
use crate::{DataError, mfcc};

/// The file a prepared-features folder holds.
pub const FEATURES_FILE: &str = "features.bin";
/// The first bytes of a features file; the last one is the format version.
pub const MAGIC: [u8; 8] = *b"CLBKWSF\x01";

/// What to run to make a features file again (quoted in error messages).
const REGENERATE: &str = "restore it (`git checkout -- <file>`) or make it again with \
                          `cargo run --release --example make_speech_sample`";

/// Errors reading or writing a features file; each names the file and says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum KwsFeaturesError {
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file does not start with [`MAGIC`].
    #[error(
        "{}: not a keyword-features file (it starts with {found:?}, expected {MAGIC:?}); {REGENERATE}",
        path.display()
    )]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// Its first bytes (fewer when the file is shorter).
        found: Vec<u8>,
    },
    /// The file ends inside `part`.
    #[error(
        "{}: truncated: its {part} ends at byte {needed} but the file has {len} bytes; {REGENERATE}",
        path.display()
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The part being read.
        part: &'static str,
        /// Bytes needed up to the end of that part.
        needed: usize,
        /// The file's length.
        len: usize,
    },
    /// The header or a field holds a value that does not fit.
    #[error("{}: {reason}; {REGENERATE}", path.display())]
    Shape {
        /// The file.
        path: PathBuf,
        /// What is wrong (field, value, what was expected).
        reason: String,
    },
    /// The bytes do not match the stored checksum.
    #[error(
        "{}: checksum mismatch (stored {stored:016x}, computed {computed:016x}): the file is \
         damaged; {REGENERATE}",
        path.display()
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The checksum in the file.
        stored: u64,
        /// The checksum of its bytes.
        computed: u64,
    },
}

impl From<KwsFeaturesError> for DataError {
    fn from(e: KwsFeaturesError) -> Self {
        match e {
            KwsFeaturesError::Io { path, source } => DataError::io(&path, source),
            other => {
                let path = other.path().to_path_buf();
                let message = other.to_string();
                let prefix = format!("{}: ", path.display());
                DataError::Format {
                    reason: message
                        .strip_prefix(&prefix)
                        .unwrap_or(&message)
                        .to_string(),
                    path,
                }
            }
        }
    }
}

impl KwsFeaturesError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::Io { path, .. }
            | Self::BadMagic { path, .. }
            | Self::Truncated { path, .. }
            | Self::Shape { path, .. }
            | Self::Checksum { path, .. } => path,
        }
    }
}

/// Keyword-spotting features of a whole set: MFCCs `[clips, frames, coefficients]` with each
/// clip's class and split.
#[derive(Clone, Debug, PartialEq)]
pub struct KwsFeatures {
    /// The MFCC pipeline the values come from.
    pub kind: MfccKind,
    /// Class names, in label order.
    pub classes: Vec<String>,
    /// Frames per clip (49).
    pub frames: usize,
    /// Coefficients per frame (10).
    pub coefficients: usize,
    /// `clips · frames · coefficients` values, clip-major.
    pub values: Vec<f32>,
    /// Class index of each clip.
    pub labels: Vec<usize>,
    /// Split of each clip: [`Split::Train`] or [`Split::Validation`].
    pub splits: Vec<Split>,
}

/// FNV-1a 64 of `bytes`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

impl KwsFeatures {
    /// Number of clips.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The clips of `split` as a [`KwsSet`] (labels as stored). Needs the DS-CNN input shape,
    /// `frames` = [`mfcc::MFCC_FRAMES`] and `coefficients` = [`mfcc::MFCC_COEFFICIENTS`]
    /// ([`Self::read`] checks it).
    pub fn split(&self, split: Split) -> KwsSet {
        let per = self.frames * self.coefficients;
        let mut set = KwsSet {
            features: Vec::new(),
            labels: Vec::new(),
        };
        for (i, s) in self.splits.iter().enumerate() {
            if split == Split::All || *s == split {
                set.features
                    .extend_from_slice(&self.values[i * per..(i + 1) * per]);
                set.labels.push(self.labels[i]);
            }
        }
        set
    }

    /// Clips per class in `split`, in label order.
    pub fn class_counts(&self, split: Split) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for (l, s) in self.labels.iter().zip(&self.splits) {
            if split == Split::All || *s == split {
                counts[*l] += 1;
            }
        }
        counts
    }

    /// Per coefficient: the lowest value and the quantization step (`(max − min) / 255`, 0
    /// for a constant coefficient).
    pub fn steps(&self) -> Vec<(f32, f32)> {
        (0..self.coefficients)
            .map(|c| {
                let (lo, hi) = self
                    .values
                    .iter()
                    .skip(c)
                    .step_by(self.coefficients.max(1))
                    .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
                        (lo.min(*v), hi.max(*v))
                    });
                if lo.is_finite() && hi > lo {
                    (lo, (hi - lo) / 255.0)
                } else {
                    (if lo.is_finite() { lo } else { 0.0 }, 0.0)
                }
            })
            .collect()
    }

    /// The file's bytes (see the module doc). Fails when the set does not fit the format:
    /// more than 255 classes or 65,535 frames, a label out of range, a split other than
    /// training or validation, a non-finite value, or lengths that disagree.
    pub fn encode(&self, path: &Path) -> Result<Vec<u8>, KwsFeaturesError> {
        let shape = |reason: String| KwsFeaturesError::Shape {
            path: path.to_path_buf(),
            reason,
        };
        let n = self.len();
        let per = self.frames * self.coefficients;
        if self.values.len() != n * per || self.splits.len() != n {
            return Err(shape(format!(
                "{} values, {} labels and {} splits do not make {n} clips of {} x {}",
                self.values.len(),
                n,
                self.splits.len(),
                self.frames,
                self.coefficients
            )));
        }
        let (frames, coefficients) = (
            u16::try_from(self.frames).map_err(|_| shape("too many frames".into()))?,
            u16::try_from(self.coefficients).map_err(|_| shape("too many coefficients".into()))?,
        );
        let classes = u8::try_from(self.classes.len())
            .map_err(|_| shape(format!("{} classes (at most 255)", self.classes.len())))?;
        if let Some(l) = self.labels.iter().find(|l| **l >= self.classes.len()) {
            return Err(shape(format!(
                "label {l} with {} classes",
                self.classes.len()
            )));
        }
        if self.values.iter().any(|v| !v.is_finite()) {
            return Err(shape("a value is not finite".into()));
        }
        let mut out = Vec::with_capacity(64 + n * (2 + per));
        out.extend_from_slice(&MAGIC);
        out.push(match self.kind {
            MfccKind::MlKws => 0,
            MfccKind::TfSignal => 1,
        });
        out.extend_from_slice(&frames.to_le_bytes());
        out.extend_from_slice(&coefficients.to_le_bytes());
        out.push(classes);
        for name in &self.classes {
            let len = u8::try_from(name.len())
                .map_err(|_| shape(format!("class name `{name}` is over 255 bytes")))?;
            out.push(len);
            out.extend_from_slice(name.as_bytes());
        }
        let clips = u32::try_from(n).map_err(|_| shape(format!("{n} clips")))?;
        out.extend_from_slice(&clips.to_le_bytes());
        let steps = self.steps();
        for (lo, step) in &steps {
            out.extend_from_slice(&lo.to_le_bytes());
            out.extend_from_slice(&step.to_le_bytes());
        }
        out.extend(self.labels.iter().map(|l| *l as u8));
        for s in &self.splits {
            out.push(match s {
                Split::Train => 0,
                Split::Validation => 1,
                Split::All => {
                    return Err(shape(
                        "a clip's split is `All`; give Train or Validation".into(),
                    ));
                }
            });
        }
        for (i, v) in self.values.iter().enumerate() {
            let (lo, step) = steps[i % self.coefficients];
            let q = if step > 0.0 {
                ((v - lo) / step).round().clamp(0.0, 255.0)
            } else {
                0.0
            };
            out.push(q as u8);
        }
        let sum = fnv1a(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        Ok(out)
    }

    /// Write to `path` through a temporary file beside it and a rename, so a reader never sees
    /// half a file.
    pub fn write(&self, path: &Path) -> Result<(), KwsFeaturesError> {
        let bytes = self.encode(path)?;
        let io = |source| KwsFeaturesError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".tmp");
        let tmp = path.with_file_name(name);
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Read a features file (all of it; a version-1 file is checked against its checksum).
    pub fn read(path: &Path) -> Result<Self, KwsFeaturesError> {
        let bytes = std::fs::read(path).map_err(|source| KwsFeaturesError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::decode(&bytes, path)
    }

    /// Parse the bytes of a features file; `path` is only for messages. Checks the magic, that
    /// every part is there, the checksum, and that the shape is the DS-CNN input
    /// (`[49, 10]`), the labels are below the class count and the splits are 0 or 1.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Self, KwsFeaturesError> {
        let mut r = Reader { bytes, at: 0, path };
        let magic = &bytes[..bytes.len().min(MAGIC.len())];
        if magic != MAGIC {
            return Err(KwsFeaturesError::BadMagic {
                path: path.to_path_buf(),
                found: magic.to_vec(),
            });
        }
        r.at = MAGIC.len();
        let shape = |reason: String| KwsFeaturesError::Shape {
            path: path.to_path_buf(),
            reason,
        };
        let kind = match r.take(1, "header")?[0] {
            0 => MfccKind::MlKws,
            1 => MfccKind::TfSignal,
            k => {
                return Err(shape(format!(
                    "MFCC pipeline code {k} at byte 8 (0 ML-KWS, 1 tf.signal)"
                )));
            }
        };
        let frames = r.u16("header")? as usize;
        let coefficients = r.u16("header")? as usize;
        if (frames, coefficients) != (mfcc::MFCC_FRAMES, mfcc::MFCC_COEFFICIENTS) {
            return Err(shape(format!(
                "clips are {frames} x {coefficients} MFCCs; the DS-CNN input is {} x {}",
                mfcc::MFCC_FRAMES,
                mfcc::MFCC_COEFFICIENTS
            )));
        }
        let class_count = r.take(1, "class names")?[0] as usize;
        let mut classes = Vec::with_capacity(class_count);
        for _ in 0..class_count {
            let len = r.take(1, "class names")?[0] as usize;
            let name = r.take(len, "class names")?;
            classes.push(
                String::from_utf8(name.to_vec())
                    .map_err(|_| shape(format!("class name {} is not UTF-8", classes.len())))?,
            );
        }
        let n = r.u32("header")? as usize;
        let mut steps = Vec::with_capacity(coefficients);
        for _ in 0..coefficients {
            steps.push((r.f32("scales")?, r.f32("scales")?));
        }
        if let Some((lo, step)) = steps
            .iter()
            .find(|(lo, step)| !lo.is_finite() || !step.is_finite() || *step < 0.0)
        {
            return Err(shape(format!(
                "a coefficient's range is min {lo}, step {step}"
            )));
        }
        let labels = r.take(n, "labels")?;
        let splits = r.take(n, "splits")?;
        let per = frames * coefficients;
        let values = r.take(n * per, "values")?;
        let end = r.at;
        let stored = u64::from_le_bytes(r.take(8, "checksum")?.try_into().expect("8 bytes"));
        if r.at != bytes.len() {
            return Err(shape(format!(
                "{} bytes after the checksum; the header says {n} clips",
                bytes.len() - r.at
            )));
        }
        let computed = fnv1a(&bytes[..end]);
        if stored != computed {
            return Err(KwsFeaturesError::Checksum {
                path: path.to_path_buf(),
                stored,
                computed,
            });
        }
        if let Some((i, l)) = labels
            .iter()
            .enumerate()
            .find(|(_, l)| **l as usize >= class_count)
        {
            return Err(shape(format!(
                "clip {i} has label {l} but there are {class_count} classes"
            )));
        }
        let splits = splits
            .iter()
            .enumerate()
            .map(|(i, s)| match s {
                0 => Ok(Split::Train),
                1 => Ok(Split::Validation),
                s => Err(shape(format!(
                    "clip {i} has split code {s} (0 training, 1 validation)"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let values = values
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let (lo, step) = steps[i % coefficients];
                lo + step * *q as f32
            })
            .collect();
        Ok(Self {
            kind,
            classes,
            frames,
            coefficients,
            values,
            labels: labels.iter().map(|l| *l as usize).collect(),
            splits,
        })
    }
}

/// Whether `dir` is a folder holding a prepared features file, and the file's path if so.
pub fn features_file(dir: &Path) -> Option<PathBuf> {
    let file = dir.join(FEATURES_FILE);
    (dir.is_dir() && file.is_file()).then_some(file)
}

/// Bounds-checked reads that name the part being read when the file ends early.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize, part: &'static str) -> Result<&'a [u8], KwsFeaturesError> {
        let needed = self.at.saturating_add(len);
        let out = self
            .bytes
            .get(self.at..needed)
            .ok_or_else(|| KwsFeaturesError::Truncated {
                path: self.path.to_path_buf(),
                part,
                needed,
                len: self.bytes.len(),
            })?;
        self.at = needed;
        Ok(out)
    }

    fn u16(&mut self, part: &'static str) -> Result<u16, KwsFeaturesError> {
        Ok(u16::from_le_bytes(
            self.take(2, part)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self, part: &'static str) -> Result<u32, KwsFeaturesError> {
        Ok(u32::from_le_bytes(
            self.take(4, part)?.try_into().expect("4 bytes"),
        ))
    }

    fn f32(&mut self, part: &'static str) -> Result<f32, KwsFeaturesError> {
        Ok(f32::from_le_bytes(
            self.take(4, part)?.try_into().expect("4 bytes"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mfcc::{MFCC_COEFFICIENTS, MFCC_FRAMES};

    /// Three clips, two classes, values spread over each coefficient's own range.
    fn sample() -> KwsFeatures {
        let per = MFCC_FRAMES * MFCC_COEFFICIENTS;
        KwsFeatures {
            kind: MfccKind::MlKws,
            classes: vec!["yes".into(), "no".into()],
            frames: MFCC_FRAMES,
            coefficients: MFCC_COEFFICIENTS,
            values: (0..3 * per)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * (1.0 + (i % 10) as f32))
                .collect(),
            labels: vec![1, 0, 1],
            splits: vec![Split::Train, Split::Validation, Split::Train],
        }
    }

    #[test]
    fn round_trip_within_half_a_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FEATURES_FILE);
        let set = sample();
        set.write(&path).unwrap();
        assert!(!dir.path().join("features.bin.tmp").exists());
        assert_eq!(features_file(dir.path()), Some(path.clone()));
        let back = KwsFeatures::read(&path).unwrap();
        assert_eq!(
            (&back.classes, &back.labels, &back.splits, back.kind),
            (&set.classes, &set.labels, &set.splits, set.kind)
        );
        let steps = set.steps();
        for (i, (a, b)) in set.values.iter().zip(&back.values).enumerate() {
            let step = steps[i % MFCC_COEFFICIENTS].1;
            assert!((a - b).abs() <= step * 0.5 + 1e-4, "value {i}: {a} vs {b}");
        }
        // Encoding what was decoded gives the same bytes: the file is a fixed point.
        assert_eq!(
            back.encode(&path).unwrap(),
            std::fs::read(&path).unwrap(),
            "re-encoding changed the file"
        );
        assert_eq!(back.class_counts(Split::Train), vec![0, 2]);
        let val = back.split(Split::Validation);
        assert_eq!(val.labels, vec![0]);
        assert_eq!(
            val.features,
            back.values[MFCC_FRAMES * MFCC_COEFFICIENTS..2 * MFCC_FRAMES * MFCC_COEFFICIENTS]
        );
    }

    #[test]
    fn damaged_files_are_rejected_with_what_and_where() {
        let path = Path::new("x/features.bin");
        let bytes = sample().encode(path).unwrap();

        let mut bad = bytes.clone();
        bad[0] = b'X';
        let err = KwsFeatures::decode(&bad, path).unwrap_err();
        assert!(matches!(err, KwsFeaturesError::BadMagic { .. }), "{err}");
        assert!(err.to_string().contains("make_speech_sample"), "{err}");

        let err = KwsFeatures::decode(&bytes[..bytes.len() - 100], path).unwrap_err();
        assert!(
            matches!(err, KwsFeaturesError::Truncated { part: "values", .. }),
            "{err}"
        );
        assert!(KwsFeatures::decode(&bytes[..4], path).is_err());

        let mut flipped = bytes.clone();
        let middle = bytes.len() / 2;
        flipped[middle] ^= 1;
        let err = KwsFeatures::decode(&flipped, path).unwrap_err();
        assert!(matches!(err, KwsFeaturesError::Checksum { .. }), "{err}");

        // A wrong shape with a valid checksum (a file from another tool): named as such.
        let mut other = sample();
        other.frames = 7;
        other.values.truncate(3 * 7 * MFCC_COEFFICIENTS);
        let err = KwsFeatures::decode(&other.encode(path).unwrap(), path).unwrap_err();
        assert!(
            matches!(err, KwsFeaturesError::Shape { .. }) && err.to_string().contains("7 x 10"),
            "{err}"
        );

        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            KwsFeatures::decode(&trailing, path).unwrap_err(),
            KwsFeaturesError::Shape { .. }
        ));

        // Through DataError the message keeps the file and the advice.
        let data: DataError = KwsFeatures::decode(&bad, path).unwrap_err().into();
        assert!(
            matches!(&data, DataError::Format { path: p, reason } if p == path
                && reason.contains("not a keyword-features file")),
            "{data:?}"
        );
    }

    #[test]
    fn sets_the_format_cannot_hold_are_refused() {
        let path = Path::new("x.bin");
        let mut s = sample();
        s.labels[0] = 2;
        assert!(s.encode(path).is_err());
        let mut s = sample();
        s.splits[0] = Split::All;
        assert!(s.encode(path).is_err());
        let mut s = sample();
        s.values[3] = f32::NAN;
        assert!(s.encode(path).is_err());
        let mut s = sample();
        s.values.pop();
        assert!(s.encode(path).is_err());
    }
}
