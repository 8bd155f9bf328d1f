//! The Speech Commands sample shipped in `datasets/speech_commands_sample` (the DS-CNN
//! examples' default data): it loads through the data layer as a keyword set of the shape and
//! class balance its README gives, and a damaged copy is refused with a message that names the
//! file, what is wrong and how to make it again.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use collab::CollabError;
use collab::data::{self, SyntheticSize, TaskData};
use collab::network::Task;
use collab_data::{DataError, FEATURES_FILE, KWS_LABELS, KwsFeatures, MfccKind, Split};

fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/speech_commands_sample")
}

fn load(dir: &Path) -> Result<TaskData, CollabError> {
    data::load(
        Task::Keywords,
        Some(dir),
        false,
        0,
        SyntheticSize::default(),
    )
}

/// Per class, in `KWS_LABELS` order (`_silence_`, `_unknown_`, yes … go), as in the README.
const TRAIN_PER_CLASS: [usize; 12] = [290, 294, 296, 288, 281, 296, 286, 280, 272, 283, 280, 274];
const VAL_PER_CLASS: [usize; 12] = [42, 38, 45, 47, 47, 46, 52, 42, 47, 46, 46, 46];

#[test]
fn the_shipped_sample_has_the_documented_shape_and_balance() {
    let file = sample_dir().join(FEATURES_FILE);
    let bytes = std::fs::metadata(&file).unwrap().len();
    assert!(
        bytes < 4_000_000,
        "{bytes} bytes: the sample must stay small"
    );
    let set = KwsFeatures::read(&file).unwrap();
    assert_eq!(set.kind, MfccKind::MlKws);
    assert_eq!(set.classes, KWS_LABELS);
    assert_eq!((set.len(), set.frames, set.coefficients), (3964, 49, 10));
    assert_eq!(set.class_counts(Split::Train), TRAIN_PER_CLASS);
    assert_eq!(set.class_counts(Split::Validation), VAL_PER_CLASS);

    let data = load(&sample_dir()).unwrap();
    assert_eq!((data.train.len(), data.val.len()), (3420, 544));
    assert_eq!(data.val.class_names(), KWS_LABELS);
    let (x, y) = data.val.batch(&[0, 543], None, &Device::flex()).unwrap();
    assert_eq!((x.dims(), y.dims()), ([2, 1, 49, 10], [2]));
    // Real MFCCs: the first coefficient (log energy) spreads over tens of units, not a
    // synthetic constant.
    let first: Vec<f32> = x.into_data().try_to_vec::<f32>().unwrap();
    let c0: Vec<f32> = first.iter().step_by(10).copied().collect();
    let (lo, hi) = c0
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), v| (l.min(*v), h.max(*v)));
    assert!(hi - lo > 10.0, "first coefficient spans {lo}..{hi}");
}

/// A copy of the sample's folder with `damage` applied to its file's bytes.
fn damaged_copy(damage: impl Fn(&mut Vec<u8>)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(sample_dir().join(FEATURES_FILE)).unwrap();
    damage(&mut bytes);
    std::fs::write(dir.path().join(FEATURES_FILE), bytes).unwrap();
    dir
}

#[test]
fn a_damaged_copy_is_refused_with_what_where_and_how_to_fix() {
    type Damage = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: [(&str, Damage); 3] = [
        ("checksum mismatch", Box::new(|b| b[1_000_000] ^= 0x10)),
        ("truncated: its values", Box::new(|b| b.truncate(1_500_000))),
        (
            "not a keyword-features file",
            Box::new(|b| b[..4].copy_from_slice(b"RIFF")),
        ),
    ];
    for (what, damage) in cases {
        let dir = damaged_copy(damage);
        let err = load(dir.path())
            .err()
            .expect("a damaged file must not load");
        let CollabError::Data(DataError::Format { path, reason }) = &err else {
            panic!("{what}: expected a format error, got {err:?}");
        };
        assert_eq!(path, &dir.path().join(FEATURES_FILE), "{what}");
        assert!(reason.contains(what), "{what}: {reason}");
        assert!(reason.contains("make_speech_sample"), "{what}: {reason}");
    }
}
