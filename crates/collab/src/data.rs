//! Training and evaluation sets behind one trait.

use std::path::Path;

use burn::tensor::{Device, Int, Tensor};
use collab_data::SeededRng;
use collab_data::arrays::ArraySet;
use collab_data::mfcc::KwsFrontend;
use collab_data::speech::{Augment, load_audio_noted};
use collab_data::wav::Conversions;
use collab_data::{
    Cifar10, CifarAugment, DataError, Features, ImageFolder, ImageNorm, ImageSet, InputSpec,
    KWS_LABELS, KwsSet, MfccKind, SpeechCommands, Split, SyntheticImages, SyntheticKws,
};
use collab_data::{KwsFeatures, kws_features};

use crate::CollabError;
use crate::network::Task;

/// Inputs and labels of one batch.
pub type Batch = (Tensor<4>, Tensor<1, Int>);

/// A labelled set the loop can batch.
pub trait Batches: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Inputs `[batch, …]` and labels `[batch]` of `indices`; augmented when `rng` is given.
    /// Fails only for data decoded lazily (image folders) when a file is unreadable.
    fn batch(
        &self,
        indices: &[usize],
        rng: Option<&mut SeededRng>,
        device: &Device,
    ) -> Result<Batch, CollabError>;
    /// Class names, in label order.
    fn class_names(&self) -> Vec<String>;
    /// Labels of all samples.
    fn labels(&self) -> Vec<usize>;
    /// A short description of where the data came from (for manifests).
    fn describe(&self) -> String;
    /// A stable fingerprint: sample count and a hash of the labels.
    fn fingerprint(&self) -> String {
        let labels = self.labels();
        let hash = labels.iter().fold(0xcbf29ce484222325u64, |h, l| {
            (h ^ *l as u64).wrapping_mul(0x100000001b3)
        });
        format!("{} samples, labels fnv1a {hash:016x}", labels.len())
    }
}

/// Keyword clips: MFCC features, plus the audio when augmentation is on (MFCCs are then
/// recomputed per batch from shifted, noisy audio).
pub struct KwsData {
    /// Precomputed MFCCs of the clean clips.
    pub features: KwsSet,
    audio: Option<Vec<Vec<f32>>>,
    noise: Vec<Vec<f32>>,
    augment: Augment,
    frontend: KwsFrontend,
    /// Class names in the model's output order (the labels were remapped to it).
    names: Vec<String>,
    source: String,
}

impl KwsData {
    /// Build from decoded clips with ML-KWS's MFCCs (the built-in DS-CNNs); `noise`
    /// recordings feed the augmentation.
    pub fn new(
        audio: Vec<Vec<f32>>,
        labels: Vec<usize>,
        noise: Vec<Vec<f32>>,
        augment: bool,
        source: String,
    ) -> Self {
        Self::for_model(audio, labels, noise, augment, source, MfccKind::MlKws, &[])
            .expect("no relabelling, nothing to fail")
    }

    /// As [`Self::new`], for a model with the MFCC pipeline `kind` and the class order
    /// `order` (empty: ours, [`KWS_LABELS`]); MLPerf's KWS model takes `tf.signal` MFCCs and
    /// Down … Yes, Silence, Unknown. Fails when `order` names a class the data lacks.
    pub fn for_model(
        audio: Vec<Vec<f32>>,
        labels: Vec<usize>,
        noise: Vec<Vec<f32>>,
        augment: bool,
        source: String,
        kind: MfccKind,
        order: &[String],
    ) -> Result<Self, DataError> {
        let features = KwsSet::from_audio(&audio, labels, &KwsFrontend::new(kind));
        let mut data = Self::from_features(features, kind, order, source)?;
        data.audio = augment.then_some(audio);
        data.noise = noise;
        Ok(data)
    }

    /// MFCCs computed beforehand by the pipeline `kind` (labels in [`KWS_LABELS`] order),
    /// relabelled to `order` as in [`Self::for_model`]. No audio, so no augmentation.
    pub fn from_features(
        mut features: KwsSet,
        kind: MfccKind,
        order: &[String],
        source: String,
    ) -> Result<Self, DataError> {
        let names = if order.is_empty() {
            KWS_LABELS.iter().map(|s| s.to_string()).collect()
        } else {
            features.relabel(order)?;
            order.to_vec()
        };
        Ok(Self {
            features,
            audio: None,
            noise: Vec::new(),
            augment: Augment::default(),
            frontend: KwsFrontend::new(kind),
            names,
            source,
        })
    }
}

impl Batches for KwsData {
    fn len(&self) -> usize {
        self.features.len()
    }

    fn batch(
        &self,
        indices: &[usize],
        rng: Option<&mut SeededRng>,
        device: &Device,
    ) -> Result<Batch, CollabError> {
        Ok(match (rng, &self.audio) {
            (Some(rng), Some(audio)) => {
                let clips: Vec<Vec<f32>> = indices
                    .iter()
                    .map(|&i| self.augment.apply(&audio[i], &self.noise, rng))
                    .collect();
                let labels = indices.iter().map(|&i| self.features.labels[i]).collect();
                let set = KwsSet::from_audio(&clips, labels, &self.frontend);
                let all: Vec<usize> = (0..set.len()).collect();
                set.batch(&all, device)
            }
            _ => self.features.batch(indices, device),
        })
    }

    fn class_names(&self) -> Vec<String> {
        self.names.clone()
    }

    fn labels(&self) -> Vec<usize> {
        self.features.labels.clone()
    }

    fn describe(&self) -> String {
        self.source.clone()
    }
}

/// CIFAR-10 images.
pub struct CifarData {
    /// The images.
    pub set: Cifar10,
    augment: Option<CifarAugment>,
    /// How pixels become the model's input.
    norm: ImageNorm,
    source: String,
}

impl Batches for CifarData {
    fn len(&self) -> usize {
        self.set.len()
    }

    fn batch(
        &self,
        indices: &[usize],
        rng: Option<&mut SeededRng>,
        device: &Device,
    ) -> Result<Batch, CollabError> {
        Ok(match (rng, &self.augment) {
            (Some(rng), Some(a)) => {
                self.set
                    .batch_with(indices, Some((a, rng)), &self.norm, device)?
            }
            _ => self.set.batch_with(indices, None, &self.norm, device)?,
        })
    }

    fn class_names(&self) -> Vec<String> {
        [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn labels(&self) -> Vec<usize> {
        self.set.labels.clone()
    }

    fn describe(&self) -> String {
        self.source.clone()
    }
}

/// Synthetic images (the built-in default for image models).
pub struct ImageData {
    /// The images.
    pub set: ImageSet,
}

impl Batches for ImageData {
    fn len(&self) -> usize {
        self.set.len()
    }

    fn batch(
        &self,
        indices: &[usize],
        _rng: Option<&mut SeededRng>,
        device: &Device,
    ) -> Result<Batch, CollabError> {
        Ok(self.set.batch(indices, device))
    }

    fn class_names(&self) -> Vec<String> {
        (0..self.set.num_classes)
            .map(|c| format!("class{c}"))
            .collect()
    }

    fn labels(&self) -> Vec<usize> {
        self.set.labels.clone()
    }

    fn describe(&self) -> String {
        format!(
            "synthetic images {0}x{0}x{1}",
            self.set.size, self.set.channels
        )
    }
}

/// An ImageNet-style folder (decoded per batch; resize 256, centre crop 224, no augmentation).
pub struct FolderData(pub ImageFolder);

impl Batches for FolderData {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn batch(
        &self,
        indices: &[usize],
        _rng: Option<&mut SeededRng>,
        device: &Device,
    ) -> Result<Batch, CollabError> {
        Ok(self.0.batch(indices, device)?)
    }

    fn class_names(&self) -> Vec<String> {
        self.0.classes.clone()
    }

    fn labels(&self) -> Vec<usize> {
        self.0.samples.iter().map(|(_, l)| *l).collect()
    }

    fn describe(&self) -> String {
        format!("image folder, {} classes", self.0.classes.len())
    }
}

/// Train and validation sets for a task.
pub struct TaskData {
    /// Training set (augmented in training when the data supports it).
    pub train: std::sync::Arc<dyn Batches>,
    /// Validation set.
    pub val: std::sync::Arc<dyn Batches>,
}

/// How many synthetic samples the built-in default generates.
#[derive(Clone, Copy, Debug)]
pub struct SyntheticSize {
    /// Training samples.
    pub train: usize,
    /// Validation samples.
    pub val: usize,
}

impl Default for SyntheticSize {
    fn default() -> Self {
        Self {
            train: 1200,
            val: 300,
        }
    }
}

/// Load the data for `task`: a Speech Commands folder (speaker-disjoint train / validation),
/// a folder of prepared keyword MFCCs (`features.bin`, see [`kws_features`]), a CIFAR-10 folder (`data_batch_*` / `test_batch`), or — without `dir` — the synthetic set.
pub fn load(
    task: Task,
    dir: Option<&Path>,
    augment: bool,
    seed: u64,
    synthetic: SyntheticSize,
) -> Result<TaskData, CollabError> {
    load_with(task, dir, augment, seed, synthetic, (MfccKind::MlKws, &[]))
}

/// [`load`], with keyword clips turned into MFCCs by `kws.0` and relabelled to the order
/// `kws.1` (empty: ours).
fn load_with(
    task: Task,
    dir: Option<&Path>,
    augment: bool,
    seed: u64,
    synthetic: SyntheticSize,
    kws: (MfccKind, &[String]),
) -> Result<TaskData, CollabError> {
    match (task, dir) {
        (Task::Keywords, Some(dir)) if kws_features::features_file(dir).is_some() => {
            load_prepared_kws(dir, augment, kws)
        }
        (Task::Keywords, Some(dir)) => {
            let set = SpeechCommands::open(dir)?;
            let (train_clips, val_clips) = (set.split(Split::Train), set.split(Split::Validation));
            for (clips, split) in [
                (&train_clips, Split::Train),
                (&val_clips, Split::Validation),
            ] {
                if clips.is_empty() {
                    return Err(empty_speech_split(dir, &set, split).into());
                }
            }
            let mut notes = Conversions::default();
            let noise = set
                .noise
                .iter()
                .filter_map(|p| hound_all(p).ok())
                .filter(|n| n.len() >= collab_data::wav::CLIP_SAMPLES)
                .collect::<Vec<_>>();
            let noise = if noise.is_empty() {
                // Prepared layout: the _silence_ clips are background noise.
                let silence: Vec<_> = set.clips.iter().filter(|c| c.label == 0).cloned().collect();
                let (audio, n) = load_audio_noted(&silence)?;
                notes += n;
                audio
            } else {
                noise
            };
            let mut make = |clips: Vec<collab_data::speech::Clip>,
                            split: Split,
                            aug: bool|
             -> Result<std::sync::Arc<dyn Batches>, CollabError> {
                let (audio, n) = load_audio_noted(&clips)?;
                notes += n;
                let labels = clips.iter().map(|c| c.label).collect();
                Ok(std::sync::Arc::new(KwsData::for_model(
                    audio,
                    labels,
                    noise.clone(),
                    aug,
                    format!("{} ({split:?})", dir.display()),
                    kws.0,
                    kws.1,
                )?))
            };
            let data = TaskData {
                train: make(train_clips, Split::Train, augment)?,
                val: make(val_clips, Split::Validation, false)?,
            };
            notes.warn(&dir.display().to_string());
            Ok(data)
        }
        (Task::Keywords, None) => {
            let g = SyntheticKws::default();
            let (train_audio, train_labels) = g.generate_audio(synthetic.train, seed)?;
            let (val_audio, val_labels) =
                g.generate_audio(synthetic.val, seed.wrapping_add(1_000_003))?;
            let noise: Vec<Vec<f32>> = g
                .generate_audio(12 * 4, seed.wrapping_add(7))?
                .0
                .into_iter()
                .step_by(12)
                .collect();
            Ok(TaskData {
                train: std::sync::Arc::new(KwsData::for_model(
                    train_audio,
                    train_labels,
                    noise.clone(),
                    augment,
                    "synthetic keywords".into(),
                    kws.0,
                    kws.1,
                )?),
                val: std::sync::Arc::new(KwsData::for_model(
                    val_audio,
                    val_labels,
                    noise,
                    false,
                    "synthetic keywords".into(),
                    kws.0,
                    kws.1,
                )?),
            })
        }
        (Task::Images { side, .. }, Some(dir))
            if side != 32 || !dir.join("test_batch.bin").exists() =>
        {
            let (train, val) = (dir.join("train"), dir.join("val"));
            if !(train.is_dir() && val.is_dir()) {
                return Err(CollabError::Usage(format!(
                    "{}: expected CIFAR-10 binaries (for the -cifar models) or an image folder with \
                     train/<class>/ and val/<class>/ (for 224 models)",
                    dir.display()
                )));
            }
            Ok(TaskData {
                train: std::sync::Arc::new(FolderData(ImageFolder::open(&train)?)),
                val: std::sync::Arc::new(FolderData(ImageFolder::open(&val)?)),
            })
        }
        (Task::Images { classes, .. }, Some(dir)) => {
            if classes != 10 {
                return Err(CollabError::Usage(
                    "CIFAR-10 data needs a model with 10 classes (a -cifar model)".into(),
                ));
            }
            Ok(TaskData {
                train: std::sync::Arc::new(CifarData {
                    set: nonempty_cifar(dir, true)?,
                    augment: augment.then(CifarAugment::default),
                    norm: Cifar10::default_norm(),
                    source: format!("{} (train)", dir.display()),
                }),
                val: std::sync::Arc::new(CifarData {
                    set: nonempty_cifar(dir, false)?,
                    augment: None,
                    norm: Cifar10::default_norm(),
                    source: format!("{} (test)", dir.display()),
                }),
            })
        }
        (Task::Graph { input, classes }, dir) => {
            load_graph(&input, classes, dir, augment, seed, synthetic)
        }
        (Task::Images { side, classes }, None) => {
            let g = SyntheticImages {
                num_classes: classes.min(10),
                size: side.min(32),
                ..SyntheticImages::cifar_like()
            };
            Ok(TaskData {
                train: std::sync::Arc::new(ImageData {
                    set: g.generate(synthetic.train, seed)?,
                }),
                val: std::sync::Arc::new(ImageData {
                    set: g.generate(synthetic.val, seed.wrapping_add(1_000_003))?,
                }),
            })
        }
    }
}

/// The data of a graph model, by what its input record says the model takes: Speech Commands
/// through the model's MFCC pipeline and label order, CIFAR-10 through its pixel scaling, or
/// `.npz` / `.npy` arrays in its input layout (a folder with `train.npz` and `val.npz`, or one
/// file used for both). Without data: random inputs of the model's shape (enough for
/// calibration and smoke runs, not for accuracy).
fn load_graph(
    input: &InputSpec,
    classes: usize,
    dir: Option<&Path>,
    augment: bool,
    seed: u64,
    synthetic: SyntheticSize,
) -> Result<TaskData, CollabError> {
    let shape = input.shape;
    let is_arrays = |p: &Path| {
        p.extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("npz") || e.eq_ignore_ascii_case("npy"))
            || p.join("train.npz").exists()
    };
    match (&input.features, dir) {
        (_, Some(dir)) if is_arrays(dir) => {
            let (train, val) = if dir.is_dir() {
                let val = ["val.npz", "test.npz"]
                    .iter()
                    .map(|n| dir.join(n))
                    .find(|p| p.exists())
                    .ok_or_else(|| {
                        CollabError::Usage(format!(
                            "{}: a train.npz but no val.npz (or test.npz) beside it",
                            dir.display()
                        ))
                    })?;
                (dir.join("train.npz"), val)
            } else {
                tracing::warn!(
                    "{}: one array file serves as training and validation set",
                    dir.display()
                );
                (dir.to_path_buf(), dir.to_path_buf())
            };
            Ok(TaskData {
                train: std::sync::Arc::new(ArrayData(ArraySet::open(&train, input, classes)?)),
                val: std::sync::Arc::new(ArrayData(ArraySet::open(&val, input, classes)?)),
            })
        }
        (Features::Mfcc { mfcc }, _) if shape == [1, 49, 10] => {
            if input.labels.is_empty() && classes != KWS_LABELS.len() {
                return Err(CollabError::Usage(format!(
                    "the model has {classes} outputs; keyword data has {} classes: import it \
                     with --labels naming its classes in output order",
                    KWS_LABELS.len()
                )));
            }
            load_with(
                Task::Keywords,
                dir,
                augment,
                seed,
                synthetic,
                (*mfcc, &input.labels),
            )
        }
        (Features::Image(norm), Some(dir)) if dir.join("test_batch.bin").exists() => {
            if shape != [3, 32, 32] || classes != 10 {
                return Err(CollabError::Usage(format!(
                    "{}: CIFAR-10 images are [3, 32, 32] in 10 classes; the model takes {shape:?} \
                     with {classes} outputs",
                    dir.display()
                )));
            }
            Ok(TaskData {
                train: std::sync::Arc::new(CifarData {
                    set: nonempty_cifar(dir, true)?,
                    augment: augment.then(CifarAugment::default),
                    norm: norm.clone(),
                    source: format!("{} (train)", dir.display()),
                }),
                val: std::sync::Arc::new(CifarData {
                    set: nonempty_cifar(dir, false)?,
                    augment: None,
                    norm: norm.clone(),
                    source: format!("{} (test)", dir.display()),
                }),
            })
        }
        (_, None) => {
            let make = |len: usize, seed: u64| -> ArraySet {
                let mut rng = SeededRng::new(seed);
                let per: usize = shape.iter().product();
                let (lo, hi) = match &input.features {
                    Features::Image(norm) => norm.range(),
                    _ => (-1.0, 1.0),
                };
                ArraySet {
                    inputs: (0..len * per).map(|_| rng.f32_in(lo, hi)).collect(),
                    labels: (0..len).map(|i| i % classes.max(1)).collect(),
                    shape,
                    names: (0..classes).map(|c| c.to_string()).collect(),
                    source: "random inputs".into(),
                }
            };
            Ok(TaskData {
                train: std::sync::Arc::new(ArrayData(make(synthetic.train, seed))),
                val: std::sync::Arc::new(ArrayData(make(
                    synthetic.val,
                    seed.wrapping_add(1_000_003),
                ))),
            })
        }
        (other, Some(dir)) => Err(CollabError::Usage(format!(
            "{}: no loader for a model taking {shape:?} ({other:?}); give Speech Commands \
             (models imported with --mfcc), CIFAR-10 binaries (--pixels), or an .npz of x \
             (inputs in the model's layout) and y (labels)",
            dir.display()
        ))),
    }
}

/// A folder holding prepared MFCCs ([`kws_features`]; the shipped
/// `datasets/speech_commands_sample`): the splits stored with the clips, relabelled to
/// `kws.1`. There is no audio, so `augment` only brings a warning.
fn load_prepared_kws(
    dir: &Path,
    augment: bool,
    kws: (MfccKind, &[String]),
) -> Result<TaskData, CollabError> {
    let file = dir.join(kws_features::FEATURES_FILE);
    let set = KwsFeatures::read(&file).map_err(DataError::from)?;
    if set.kind != kws.0 {
        return Err(CollabError::Usage(format!(
            "{}: holds {:?} MFCCs but the model takes {:?} ones; pass the Speech Commands clips \
             folder instead (its MFCCs are computed for the model)",
            file.display(),
            set.kind,
            kws.0
        )));
    }
    if set.classes != KWS_LABELS {
        return Err(DataError::Format {
            path: file,
            reason: format!(
                "classes {:?}; keyword models need {KWS_LABELS:?} in this order",
                set.classes
            ),
        }
        .into());
    }
    if augment {
        tracing::warn!(
            "{}: prepared MFCCs have no audio to shift or mix noise into; training without \
             augmentation",
            file.display()
        );
    }
    let make = |split: Split| -> Result<std::sync::Arc<dyn Batches>, CollabError> {
        let features = set.split(split);
        if features.is_empty() {
            return Err(DataError::Empty {
                path: file.clone(),
                reason: format!("no clip of the {split:?} split; make the file again"),
            }
            .into());
        }
        Ok(std::sync::Arc::new(KwsData::from_features(
            features,
            set.kind,
            kws.1,
            format!("{} ({split:?})", file.display()),
        )?))
    };
    Ok(TaskData {
        train: make(Split::Train)?,
        val: make(Split::Validation)?,
    })
}

/// Arrays from `.npy` / `.npz` files.
pub struct ArrayData(pub ArraySet);

impl Batches for ArrayData {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn batch(
        &self,
        indices: &[usize],
        _rng: Option<&mut SeededRng>,
        device: &Device,
    ) -> Result<Batch, CollabError> {
        Ok(self.0.batch(indices, device))
    }

    fn class_names(&self) -> Vec<String> {
        self.0.names.clone()
    }

    fn labels(&self) -> Vec<usize> {
        self.0.labels.clone()
    }

    fn describe(&self) -> String {
        self.0.source.clone()
    }
}

/// Why a split of a Speech Commands folder is empty: the split is by speaker (see
/// [`collab_data::speech`]), so a folder with few speakers can have none in one split.
fn empty_speech_split(dir: &Path, set: &SpeechCommands, split: Split) -> DataError {
    let mut speakers: Vec<&str> = set.clips.iter().map(|c| c.speaker.as_str()).collect();
    speakers.sort_unstable();
    speakers.dedup();
    DataError::Empty {
        path: dir.to_path_buf(),
        reason: format!(
            "the {} split has no clips: clips are split by speaker (the name part before \
             `_nohash_`; validation when sha1(speaker) mod 10 is 0), and {} of the folder's {} \
             speaker(s) fall there. Add clips from more speakers, or evaluate every clip with \
             `collab eval --all`",
            match split {
                Split::Validation => "validation",
                _ => "training",
            },
            if split == Split::Validation {
                "none"
            } else {
                "all"
            },
            speakers.len()
        ),
    }
}

/// A CIFAR-10 split that holds at least one image.
fn nonempty_cifar(dir: &Path, train: bool) -> Result<Cifar10, CollabError> {
    let set = Cifar10::open(dir, train)?;
    if set.is_empty() {
        return Err(DataError::Empty {
            path: dir.to_path_buf(),
            reason: format!(
                "the {} split has no images; expected the official cifar-10-batches-bin files",
                if train {
                    "training"
                } else {
                    "test (validation)"
                }
            ),
        }
        .into());
    }
    Ok(set)
}

fn hound_all(path: &Path) -> Result<Vec<f32>, CollabError> {
    let mut r = collab_data::wav::read_any(path)?;
    r.truncate(16_000 * 60);
    Ok(r)
}

/// A seeded generator for one epoch's augmentation.
pub fn epoch_rng(seed: u64, epoch: usize) -> SeededRng {
    SeededRng::new(seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64))
}

/// The training-set indices that calibrate activation ranges: the first `samples` (at least
/// one) of `0..len` shuffled by the epoch-0 generator of `seed`.
pub fn calibration_indices(len: usize, samples: usize, seed: u64) -> Vec<usize> {
    let mut indices: Vec<usize> = (0..len).collect();
    epoch_rng(seed, 0).shuffle(&mut indices);
    indices.truncate(samples.max(1));
    indices
}
