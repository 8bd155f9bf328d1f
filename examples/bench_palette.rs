//! Palette (4-bit indices + 16-entry int8 table, per tensor or per output channel) against the
//! dense int8 weights, single thread: a matrix–vector product (FULLY_CONNECTED at batch 1) and
//! 1×1 convolutions of DS-CNN-L's shape, with weights that fit L1, L2, and that exceed L2.
//! All forms compute the same outputs (`collab_tflite::palette` tests); this times them, in
//! alternating rounds within one process, and prints medians and ratios.
//!
//! ```text
//! cargo run --example bench_palette [-- --rounds 15]
//! ```
//!
//! Needs AVX-512 VNNI and VBMI; prints a line saying so otherwise.

use std::time::Instant;

use burn_collab::tflite::palette::{Form, PaletteLayer};
use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    /// Alternating rounds (each times every form once over about `--ms` milliseconds).
    #[arg(long, default_value_t = 15)]
    rounds: usize,
    /// Milliseconds per form per round.
    #[arg(long, default_value_t = 20.0)]
    ms: f64,
    /// Also run the 256 MB matrix–vector product (about 2 GB of memory while packing).
    #[arg(long)]
    huge: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if !PaletteLayer::available() {
        println!("this CPU lacks AVX-512 VNNI or VBMI: no palette kernels to time");
        return Ok(());
    }
    // (label, pixels, depth, units)
    let mut cases = vec![
        ("ds-cnn-l fc 276->12", 1, 276, 12),
        ("gemv 32 KB (L1)", 1, 128, 256),
        ("gemv 1 MB (L2)", 1, 1024, 1024),
        ("gemv 64 MB", 1, 8192, 8192),
        ("ds-cnn-l 1x1 conv 276->276, 65 px", 65, 276, 276),
        ("1x1 conv 1 MB, 65 px", 65, 1024, 1024),
    ];
    if args.huge {
        cases.push(("gemv 256 MB", 1, 16384, 16384));
    }
    println!(
        "{:<36} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7} {:>7} {:>7}",
        "layer",
        "dense B",
        "palette B",
        "dense us",
        "blocked",
        "p-tensor",
        "p-channel",
        "d/blk",
        "d/pt",
        "d/pc"
    );
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (label, pixels, depth, units) in cases {
        // 16 values for the whole tensor (so every form applies), zeros among them.
        let table: Vec<i8> = (0..16).map(|i| (i * 17 - 128 + 8) as i8).collect();
        let weights: Vec<i8> = (0..units * depth)
            .map(|_| table[(next() % 16) as usize])
            .collect();
        let x: Vec<i8> = (0..pixels * depth).map(|_| next() as u8 as i8).collect();
        let layer = PaletteLayer::new(
            &weights,
            [pixels, depth, units],
            -3,
            0.004 / (depth as f64).sqrt(),
        )?;
        drop(weights);
        let forms = [
            Form::Dense,
            Form::DenseBlocked,
            Form::PerTensor,
            Form::PerChannel,
        ];
        let mut out = vec![0i8; pixels * units];
        // Calls per timing: about `ms` per form.
        let t = Instant::now();
        layer.run(Form::Dense, &x, &mut out)?;
        let once = t.elapsed().as_secs_f64() * 1e3;
        let calls = ((args.ms / once.max(1e-6)) as usize).clamp(1, 100_000);
        let mut times = vec![vec![]; forms.len()];
        for _ in 0..args.rounds {
            for (f, form) in forms.iter().enumerate() {
                let t = Instant::now();
                for _ in 0..calls {
                    layer.run(*form, &x, &mut out)?;
                    std::hint::black_box(&mut out);
                }
                times[f].push(t.elapsed().as_secs_f64() * 1e6 / calls as f64);
            }
        }
        let m: Vec<f64> = times.into_iter().map(median).collect();
        println!(
            "{:<36} {:>10} {:>10} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>7.2} {:>7.2} {:>7.2}",
            label,
            layer.weight_bytes(Form::Dense).unwrap_or(0),
            layer.weight_bytes(Form::PerChannel).unwrap_or(0),
            m[0],
            m[1],
            m[2],
            m[3],
            m[0] / m[1],
            m[0] / m[2],
            m[0] / m[3]
        );
    }
    println!(
        "(single thread, times in us; medians over {} alternating rounds; blocked: dense int8 in \
         the palettes' block-major order; d/x > 1: x is faster than the interpreter's dense)",
        args.rounds
    );
    Ok(())
}
