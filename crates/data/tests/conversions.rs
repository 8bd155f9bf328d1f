//! WAV files the loader converts (stereo, not 16-bit, longer than a clip) are still decoded,
//! and counted per kind (issue #17, item 11).

use std::path::Path;

use collab_data::speech::load_audio_noted;
use collab_data::wav::{CLIP_SAMPLES, Conversions, read_clip_noted};
use collab_data::{SpeechCommands, Split};

fn write(path: &Path, channels: u16, bits: u16, float: bool, frames: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let spec = hound::WavSpec {
        channels,
        sample_rate: 16_000,
        bits_per_sample: bits,
        sample_format: if float {
            hound::SampleFormat::Float
        } else {
            hound::SampleFormat::Int
        },
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..frames * channels as usize {
        let x = ((i % 50) as f32 - 25.0) / 100.0;
        match (float, bits) {
            (true, _) => w.write_sample(x).unwrap(),
            (false, 8) => w.write_sample((x * 127.0) as i8).unwrap(),
            (false, 16) => w.write_sample((x * 32767.0) as i16).unwrap(),
            (false, _) => w.write_sample((x * 8_388_607.0) as i32).unwrap(),
        }
    }
    w.finalize().unwrap();
}

#[test]
fn each_conversion_is_counted_per_kind_and_the_clips_are_still_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let clip = |word: &str, n: usize| root.join(word).join(format!("abc{n}_nohash_0.wav"));
    write(&clip("yes", 0), 1, 16, false, 12_000); // nothing to note
    write(&clip("yes", 1), 2, 16, false, 12_000); // stereo
    write(&clip("no", 2), 1, 8, false, 12_000); // 8-bit
    write(&clip("no", 3), 1, 24, false, 12_000); // 24-bit
    write(&clip("up", 4), 1, 32, true, 12_000); // float
    write(&clip("up", 5), 2, 24, false, 20_000); // stereo, 24-bit and too long
    write(&clip("go", 6), 1, 16, false, 16_001); // one sample too long
    write(&clip("go", 7), 1, 16, false, CLIP_SAMPLES); // exactly one clip
    let set = SpeechCommands::open(root).unwrap();
    let clips = set.split(Split::All);
    assert_eq!(clips.len(), 8);
    let (audio, notes) = load_audio_noted(&clips).unwrap();
    assert_eq!(audio.len(), 8);
    assert!(audio.iter().all(|a| a.len() == CLIP_SAMPLES));
    assert_eq!(
        notes,
        Conversions {
            multichannel: 2,
            bits_8: 1,
            bits_24: 2,
            other_format: 1,
            cut: 2,
        }
    );
    let text = notes.to_string();
    for part in [
        "2 WAV files stereo",
        "1 WAV file 8-bit",
        "2 WAV files 24-bit",
        "1 WAV file 32-bit or float",
        "2 WAV files longer than 1 s",
    ] {
        assert!(text.contains(part), "{part}: {text}");
    }
    // One file: the first second kept, the rest cut.
    let (samples, one) = read_clip_noted(&clip("up", 5)).unwrap();
    assert_eq!(samples.len(), CLIP_SAMPLES);
    assert_eq!((one.multichannel, one.bits_24, one.cut), (1, 1, 1));
    let (_, plain) = read_clip_noted(&clip("yes", 0)).unwrap();
    assert!(plain.is_empty(), "{plain:?}");
}
