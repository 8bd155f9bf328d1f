//! The frontend and loaders on the real shared data: TensorFlow's own test vectors, the
//! speaker-disjoint split of the recipe, and CIFAR-10.

use collab_data::shared::{read_safetensor_f32, require_shared};
use collab_data::wav::read_clip;
use collab_data::{Cifar10, Frontend, KWS_LABELS, SpeechCommands, Split, speaker_of};
use std::collections::HashSet;

#[test]
fn frontend_matches_tensorflow_test_vectors() {
    let shared = require_shared();
    let dir = shared.join("pretrained/ml-kws-for-mcu");
    let bytes = std::fs::read(dir.join("testvectors_ds_cnn_l.safetensors")).unwrap();
    let (shape, audio) = read_safetensor_f32(&bytes, "audio").unwrap();
    assert_eq!(shape, vec![24, 16000]);
    let (_, spectrogram) = read_safetensor_f32(&bytes, "spectrogram").unwrap();
    let (_, mfcc) = read_safetensor_f32(&bytes, "mfcc").unwrap();
    let paths = std::fs::read_to_string(dir.join("testvectors_ds_cnn_l.txt")).unwrap();
    let frontend = Frontend::new();
    let (mut spec_rel, mut mfcc_abs, mut mfcc_rel) = (0f64, 0f64, 0f64);
    for (i, rel) in paths.lines().enumerate() {
        // WAV decoding is TensorFlow's DecodeWav exactly.
        let clip = read_clip(&shared.join("data/speech_commands_12").join(rel)).unwrap();
        assert_eq!(clip, audio[i * 16000..(i + 1) * 16000], "clip {rel}");
        let spec = frontend.spectrogram(&clip);
        let want = &spectrogram[i * 49 * 513..(i + 1) * 49 * 513];
        let peak = want.iter().fold(0f32, |m, v| m.max(*v)) as f64;
        for (a, b) in spec.iter().zip(want) {
            spec_rel = spec_rel.max((a - b).abs() as f64 / peak.max(1e-30));
        }
        let ours = frontend.mfcc(&clip);
        let want = &mfcc[i * 490..(i + 1) * 490];
        for (a, b) in ours.iter().zip(want) {
            let d = (a - b).abs() as f64;
            mfcc_abs = mfcc_abs.max(d);
            mfcc_rel = mfcc_rel.max(d / (b.abs() as f64).max(1.0));
        }
    }
    eprintln!(
        "spectrogram max error / peak {spec_rel:.2e}; MFCC max abs {mfcc_abs:.2e}, max rel {mfcc_rel:.2e}"
    );
    assert!(spec_rel < 1e-6, "spectrogram relative error {spec_rel}");
    assert!(mfcc_rel <= 1e-4, "MFCC relative error {mfcc_rel}");
}

#[test]
fn speaker_disjoint_split_matches_the_recipe() {
    let shared = require_shared();
    let set = SpeechCommands::open(&shared.join("data/speech_commands_12")).unwrap();
    assert_eq!(set.clips.len(), 3964);
    let train = set.split(Split::Train);
    let val = set.split(Split::Validation);
    assert_eq!((train.len(), val.len()), (3420, 544));
    let mut per_class = vec![0; 12];
    for c in &val {
        per_class[c.label] += 1;
    }
    assert_eq!(
        per_class,
        vec![42, 38, 45, 47, 47, 46, 52, 42, 47, 46, 46, 46]
    );
    let train_speakers: HashSet<_> = train.iter().map(|c| c.speaker.clone()).collect();
    assert!(
        val.iter().all(|c| !train_speakers.contains(&c.speaker)),
        "a speaker is in both splits"
    );
    // Labels come from the folder names, in the models' order.
    for c in set.clips.iter().step_by(97) {
        let folder = c
            .path
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy();
        assert_eq!(KWS_LABELS[c.label], folder);
        assert_eq!(
            c.speaker,
            speaker_of(&c.path.file_name().unwrap().to_string_lossy())
        );
    }
}

#[test]
fn bad_folders_are_errors_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let err = SpeechCommands::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("no .wav clips"), "{err}");
    std::fs::create_dir(dir.path().join("_silence_")).unwrap();
    std::fs::create_dir(dir.path().join("banana")).unwrap();
    let err = SpeechCommands::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("banana") && err.contains("unknown class"),
        "{err}"
    );
    std::fs::remove_dir(dir.path().join("banana")).unwrap();
    std::fs::write(dir.path().join("_silence_/broken.wav"), b"RIFF....WAVE").unwrap();
    let set = SpeechCommands::open(dir.path()).unwrap();
    let err = SpeechCommands::features(&set.clips, &Frontend::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("broken.wav"), "{err}");
}

#[test]
fn cifar10_shared_batches_load() {
    let shared = require_shared();
    let dir = shared.join("data/cifar10");
    let train = Cifar10::open(&dir, true).unwrap();
    let test = Cifar10::open(&dir, false).unwrap();
    assert_eq!((train.len(), test.len()), (10_000, 2_000));
    let mut counts = [0; 10];
    for l in &test.labels {
        counts[*l] += 1;
    }
    assert_eq!(counts, [200; 10]);
    let mut rng = Cifar10::rng(0);
    let (x, _) = train.batch(
        &[0, 1, 2],
        Some((&Default::default(), &mut rng)),
        &burn::tensor::Device::flex(),
    );
    assert_eq!(x.dims(), [3, 3, 32, 32]);
}
