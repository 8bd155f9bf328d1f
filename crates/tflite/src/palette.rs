//! The palette weight form next to the dense one, for measuring: a FULLY_CONNECTED layer or a
//! 1×1 CONV_2D whose int8 weights hold at most 16 distinct values (clustered models) stored as
//! 4-bit indices plus a 16-entry int8 table, per tensor or per output channel, and decoded in
//! registers before each `vpdpbusd` (AVX-512 VNNI + VBMI).
//!
//! The palette halves the bytes the weights take; whether that beats the dense kernels depends
//! on where the weights live (cache or memory), which `examples/bench_palette.rs` measures.
//! The interpreter does not use this form: on the models we export the weights fit in L2 and
//! the dense kernels win (docs/DESIGN.md, docs/results/palette/). All forms compute the same
//! integers (tests compare them).

use crate::TfliteError;
use crate::kernels::vnni::palette::{PalettePacked, Table};
use crate::kernels::vnni::{Packed, Requant};

/// How the weights are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// int8, one byte per weight (the interpreter's form).
    Dense,
    /// 4-bit indices and one 16-entry table for the tensor.
    PerTensor,
    /// 4-bit indices and a 16-entry table per output channel.
    PerChannel,
    /// int8, stored in the palettes' block-major order (each tile's weights one contiguous
    /// stream) instead of the interpreter's: tells the order's effect from the palette's.
    DenseBlocked,
}

/// A layer `out[p, u] = requant(Σ_d w[u, d]·(x[p, d] − zp))` over `pixels` rows (1: a
/// matrix–vector product, FULLY_CONNECTED at batch 1; more: a 1×1 convolution), weights
/// `[units, depth]` packed in every form they fit.
#[derive(Clone, Debug)]
pub struct PaletteLayer {
    pixels: usize,
    depth: usize,
    units: usize,
    input_zp: i32,
    dense: Packed,
    requant: Requant,
    per_tensor: Option<PalettePacked>,
    per_channel: Option<PalettePacked>,
    blocked: Option<PalettePacked>,
}

impl PaletteLayer {
    /// Whether this CPU runs the palette kernels (AVX-512 F/BW/VL, VNNI and VBMI).
    pub fn available() -> bool {
        crate::kernels::cpu().avx512_vbmi
    }

    /// From `weights` `[units, depth]`, for inputs of `pixels` rows with zero point
    /// `input_zp`; requantized with one multiplier `scale` (output zero point 0, full int8
    /// range). Errors when the CPU lacks the kernels or the sizes disagree.
    pub fn new(
        weights: &[i8],
        [pixels, depth, units]: [usize; 3],
        input_zp: i32,
        scale: f64,
    ) -> Result<Self, TfliteError> {
        if !Self::available() {
            return Err(TfliteError::Unsupported(
                "the palette kernels need AVX-512 VNNI and VBMI".into(),
            ));
        }
        if pixels == 0 || depth == 0 || units == 0 || weights.len() != units * depth {
            return Err(TfliteError::Input(format!(
                "weights of {} values for [units {units}, depth {depth}], {pixels} pixels",
                weights.len()
            )));
        }
        let mut kio = vec![0i32; depth * units];
        for u in 0..units {
            for d in 0..depth {
                kio[d * units + u] = weights[u * depth + d] as i32;
            }
        }
        let dense = Packed::new(&kio, depth, units, &vec![0; units], input_zp);
        let (m, s) = crate::fixed::quantize_multiplier(scale);
        let requant = Requant::new(&vec![m; units], &vec![s; units], 0, [-128, 127]);
        Ok(Self {
            pixels,
            depth,
            units,
            input_zp,
            per_tensor: PalettePacked::new(&dense, depth, units, Table::PerTensor),
            per_channel: PalettePacked::new(&dense, depth, units, Table::PerChannel),
            blocked: PalettePacked::new(&dense, depth, units, Table::Raw),
            dense,
            requant,
        })
    }

    /// Bytes of the weights in `form` (indices and tables for the palettes), or `None` when
    /// they do not fit it (more than 16 values per table).
    pub fn weight_bytes(&self, form: Form) -> Option<usize> {
        match form {
            Form::Dense => Some(self.depth * self.units),
            Form::PerTensor => self.per_tensor.as_ref().map(PalettePacked::bytes),
            Form::PerChannel => self.per_channel.as_ref().map(PalettePacked::bytes),
            Form::DenseBlocked => self.blocked.as_ref().map(PalettePacked::bytes),
        }
    }

    /// Run `form` on `x` (`[pixels, depth]`) into `out` (`[pixels, units]`).
    pub fn run(&self, form: Form, x: &[i8], out: &mut [i8]) -> Result<(), TfliteError> {
        let (pixels, depth, units) = (self.pixels, self.depth, self.units);
        if x.len() != pixels * depth || out.len() != pixels * units {
            return Err(TfliteError::Input(format!(
                "input of {} values (want {pixels} × {depth}) or output of {} (want {pixels} × \
                 {units})",
                x.len(),
                out.len()
            )));
        }
        let palette = match form {
            Form::Dense => None,
            Form::PerTensor => Some(self.per_tensor.as_ref()),
            Form::PerChannel => Some(self.per_channel.as_ref()),
            Form::DenseBlocked => Some(self.blocked.as_ref()),
        };
        if matches!(palette, Some(None)) {
            return Err(TfliteError::Unsupported(format!(
                "{form:?}: a table would need more than 16 values; cluster the weights first"
            )));
        }
        #[cfg(target_arch = "x86_64")]
        {
            let g = crate::kernels::vnni::Geometry {
                in_shape: [1, pixels, 1, depth],
                out_shape: [1, pixels, 1, units],
                kernel: [1, 1],
                stride: [1, 1],
                dilation: [1, 1],
                pad: [0, 0],
                input_zp: self.input_zp,
            };
            let stride = crate::kernels::vnni::fc::acc_stride(units);
            // SAFETY: `new` checked the CPU (VNNI and VBMI); the packings are for `k = depth`,
            // `oc = units`; `x` and `out` have the sizes checked above; `acc` holds `stride ≥
            // units` sums.
            unsafe {
                match (palette.flatten(), pixels) {
                    (None, 1) => {
                        let mut acc = vec![0i32; stride];
                        crate::kernels::vnni::fc::gemv(&self.dense, x, 1, depth, &mut acc);
                        crate::kernels::vnni::fc::requantize(&self.requant, &acc, out);
                    }
                    (None, _) => crate::kernels::vnni::conv(&g, &self.dense, &self.requant, x, out),
                    (Some(p), 1) => {
                        let mut acc = vec![0i32; stride];
                        crate::kernels::vnni::palette::gemv(p, x, 1, depth, &mut acc);
                        crate::kernels::vnni::fc::requantize(&self.requant, &acc, out);
                    }
                    (Some(p), _) => {
                        crate::kernels::vnni::palette::conv(&g, p, &self.requant, x, out)
                    }
                }
            }
            Ok(())
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = palette;
            Err(TfliteError::Unsupported(
                "the palette kernels are x86-64 only".into(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(seed: u64, n: usize) -> Vec<u64> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s
            })
            .collect()
    }

    /// Clustered weights (16 values per channel, different per channel; or 16 per tensor), odd
    /// sizes, 1 pixel (GEMV) and many (1×1 convolution): both palettes give the dense output.
    #[test]
    fn palette_forms_compute_the_dense_integers() {
        if !PaletteLayer::available() {
            return;
        }
        for (case, &(pixels, depth, units)) in [
            (1, 276, 12),
            (1, 13, 300),
            (65, 276, 276),
            (7, 37, 45),
            (3, 4, 1),
        ]
        .iter()
        .enumerate()
        {
            let seed = case as u64 + 1;
            let tables: Vec<i8> = values(seed, 16 * units)
                .iter()
                .map(|v| ((*v % 255) as i32 - 127) as i8)
                .collect();
            let pick = values(seed ^ 9, units * depth);
            let per_channel: Vec<i8> = (0..units * depth)
                .map(|i| tables[(i / depth) * 16 + (pick[i] % 16) as usize])
                .collect();
            let per_tensor: Vec<i8> = (0..units * depth)
                .map(|i| tables[(pick[i] % 16) as usize])
                .collect();
            let x: Vec<i8> = values(seed ^ 3, pixels * depth)
                .iter()
                .map(|v| *v as u8 as i8)
                .collect();
            let scale = 0.004 / (depth as f64).sqrt();
            for (w, shared) in [(per_channel, false), (per_tensor, true)] {
                let layer = PaletteLayer::new(&w, [pixels, depth, units], -5, scale).unwrap();
                let mut want = vec![0i8; pixels * units];
                layer.run(Form::Dense, &x, &mut want).unwrap();
                assert!(want.iter().any(|v| *v != 127 && *v != -128 && *v != 0));
                let mut got = vec![0i8; pixels * units];
                layer.run(Form::PerChannel, &x, &mut got).unwrap();
                assert_eq!(got, want, "per channel, {pixels}×{depth}→{units}");
                layer.run(Form::DenseBlocked, &x, &mut got).unwrap();
                assert_eq!(got, want, "blocked, {pixels}×{depth}→{units}");
                let per_tensor = layer.run(Form::PerTensor, &x, &mut got);
                if shared || units == 1 {
                    per_tensor.unwrap();
                    assert_eq!(got, want, "per tensor, {pixels}×{depth}→{units}");
                } else {
                    assert!(per_tensor.is_err(), "{units} channels × 16 values");
                }
            }
        }
    }
}
