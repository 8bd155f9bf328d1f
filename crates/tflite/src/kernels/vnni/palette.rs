//! Palette weights for the VNNI GEMM: 4-bit indices into a 16-entry int8 table (one table per
//! tensor, or one per output channel), decoded in registers right before `vpdpbusd`.
//!
//! The indices keep the dense GEMM's tiles, stored block-major (all `k` of a block of 32
//! output channels contiguous): per group of 4 `k` and block of 32 output channels, the dense
//! kernel loads two 64-byte weight vectors (channels 0–15 and 16–31 of the block, 4 `k` each);
//! here one 64-byte vector holds both, byte `j` carrying the first
//! vector's byte `j` in its low nibble and the second's in its high nibble, so decoding is
//! two masks and a shift, then a table lookup per vector:
//! - **per tensor**: `vpshufb` with the table repeated in every 128-bit lane;
//! - **per channel**: each byte's index is offset by `16 ×` its channel within a group of 8,
//!   and two `vpermi2b` look it up in the 128 bytes of those 8 channels' tables, blended.
//!
//! The decoded weights are the dense weights, so the sums, the per-channel constant and the
//! requantization are the dense GEMM's (tests compare the outputs).

use super::Packed;

/// Which table the indices point into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Table {
    /// One 16-entry table for the whole tensor.
    PerTensor,
    /// One 16-entry table per output channel.
    PerChannel,
    /// No table: the int8 weights themselves in this module's layout (to tell the layout's
    /// effect from the palette's).
    Raw,
}

/// Weights as 4-bit indices plus tables, packed for [`conv`] / [`gemv`]; `k4`, `oc32` and the
/// constant as the dense [`Packed`].
#[derive(Clone, Debug)]
pub(crate) struct PalettePacked {
    pub(in crate::kernels::vnni) k4: usize,
    pub(in crate::kernels::vnni) oc32: usize,
    pub(in crate::kernels::vnni) table: Table,
    /// `[oc32 / 32][k4 / 4][chunk]`, block-major so that a tile's weights are one contiguous
    /// stream: nibble pairs (64 bytes, see the module docs), or the raw weights (128 bytes).
    index: Vec<u8>,
    /// Per tensor: the 16 entries repeated 4 times (64 bytes). Per channel: `[oc32][16]`.
    entries: Vec<i8>,
    pub(in crate::kernels::vnni) corr: Vec<i32>,
}

impl PalettePacked {
    /// From the dense packing of `k × oc` weights; `None` when some table would need more
    /// than 16 values (per tensor: the whole tensor; per channel: one output channel). Padding
    /// (`k..k4`, `oc..oc32`) decodes to any table entry: it meets zero inputs or is never
    /// stored.
    pub(crate) fn new(dense: &Packed, k: usize, oc: usize, table: Table) -> Option<Self> {
        let (k4, oc32) = (dense.k4, dense.oc32);
        let at = |kg: usize, o: usize, i: usize| dense.w[(kg * oc32 + o) * 4 + i];
        // The values of each table (channel `o`, or all in slot 0), padding included: a padded
        // weight is 0, which must then be in the table too.
        if table == Table::Raw {
            let mut index = vec![0u8; k4 * oc32];
            for ob in (0..oc32).step_by(32) {
                for kg in 0..k4 / 4 {
                    let dst = &mut index[(ob / 32 * (k4 / 4) + kg) * 128..][..128];
                    for (j, d) in dst.iter_mut().enumerate() {
                        let (o, i) = (ob + (j / 64) * 16 + (j % 64) / 4, j % 4);
                        *d = at(kg, o, i) as u8;
                    }
                }
            }
            return Some(Self {
                k4,
                oc32,
                table,
                index,
                entries: Vec::new(),
                corr: dense.corr.clone(),
            });
        }
        let tables = if table == Table::PerTensor { 1 } else { oc32 };
        let mut values: Vec<Vec<i8>> = vec![Vec::new(); tables];
        for kg in 0..k4 / 4 {
            for o in 0..oc {
                for i in (0..4).filter(|i| kg * 4 + i < k) {
                    let v = at(kg, o, i);
                    let t = &mut values[if table == Table::PerTensor { 0 } else { o }];
                    if !t.contains(&v) {
                        if t.len() == 16 {
                            return None;
                        }
                        t.push(v);
                    }
                }
            }
        }
        let code = |o: usize, v: i8| -> u8 {
            let t = &values[if table == Table::PerTensor { 0 } else { o }];
            t.iter().position(|x| *x == v).unwrap_or(0) as u8
        };
        let mut index = vec![0u8; k4 / 4 * oc32 * 2];
        for kg in 0..k4 / 4 {
            for ob in (0..oc32).step_by(32) {
                let dst = &mut index[(ob / 32 * (k4 / 4) + kg) * 64..][..64];
                for (j, d) in dst.iter_mut().enumerate() {
                    let (o, i) = (ob + j / 4, j % 4);
                    *d = code(o, at(kg, o, i)) | (code(o + 16, at(kg, o + 16, i)) << 4);
                }
            }
        }
        let entries = match table {
            Table::PerTensor => {
                let mut t = values[0].clone();
                t.resize(16, 0);
                t.repeat(4)
            }
            Table::PerChannel | Table::Raw => values
                .iter()
                .flat_map(|t| {
                    let mut t = t.clone();
                    t.resize(16, 0);
                    t
                })
                .collect(),
        };
        Some(Self {
            k4,
            oc32,
            table,
            index,
            entries,
            corr: dense.corr.clone(),
        })
    }

    /// Bytes the weights take in this form: indices and tables.
    pub(crate) fn bytes(&self) -> usize {
        self.index.len() + self.entries.len()
    }

    /// Bytes per group of 4 `k` and block of 32 channels.
    fn chunk(&self) -> usize {
        if self.table == Table::Raw { 128 } else { 64 }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{conv, gemv};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{PalettePacked, Table};
    use crate::kernels::vnni::fc::x86::{gemv_rows, store_sums};
    use crate::kernels::vnni::x86::{Gemm, gemm, store_tile};
    use crate::kernels::vnni::{Geometry, Requant};
    use std::arch::x86_64::*;

    /// The two weight vectors (channels `ob..ob + 16` and `ob + 16..ob + 32`, 4 `k` each) of
    /// the 64 index bytes at `idx`.
    #[inline(always)]
    unsafe fn decode(p: &PalettePacked, idx: *const u8, ob: usize) -> (__m512i, __m512i) {
        // SAFETY: `idx` points at 64 index bytes; the per-channel tables hold `oc32 · 16` bytes
        // and `ob + 32 ≤ oc32`; the per-tensor table 64.
        unsafe {
            if p.table == Table::Raw {
                return (
                    _mm512_loadu_si512(idx as *const __m512i),
                    _mm512_loadu_si512(idx.add(64) as *const __m512i),
                );
            }
            let v = _mm512_loadu_si512(idx as *const __m512i);
            let nib = _mm512_set1_epi8(0x0F);
            let lo = _mm512_and_si512(v, nib);
            let hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
            match p.table {
                Table::PerTensor => {
                    let t = _mm512_loadu_si512(p.entries.as_ptr() as *const __m512i);
                    (_mm512_shuffle_epi8(t, lo), _mm512_shuffle_epi8(t, hi))
                }
                Table::PerChannel => {
                    // Byte j belongs to channel j / 4 of its 16: offset by 16 × (j / 4 mod 8)
                    // into the 128 bytes of its group of 8 channels.
                    let off = _mm512_set_epi64(
                        0x7070_7070_6060_6060,
                        0x5050_5050_4040_4040,
                        0x3030_3030_2020_2020,
                        0x1010_1010_0000_0000,
                        0x7070_7070_6060_6060,
                        0x5050_5050_4040_4040,
                        0x3030_3030_2020_2020,
                        0x1010_1010_0000_0000,
                    );
                    let t = p.entries.as_ptr().add(ob * 16);
                    let look = |i: __m512i, at: usize| {
                        let ld = |o: usize| _mm512_loadu_si512(t.add(at + o) as *const __m512i);
                        let first = _mm512_permutex2var_epi8(ld(0), i, ld(64));
                        let second = _mm512_permutex2var_epi8(ld(128), i, ld(192));
                        _mm512_mask_blend_epi8(0xFFFF_FFFF_0000_0000, first, second)
                    };
                    (
                        look(_mm512_or_si512(lo, off), 0),
                        look(_mm512_or_si512(hi, off), 256),
                    )
                }
                Table::Raw => unreachable!("returned above"),
            }
        }
    }

    impl Gemm for PalettePacked {
        fn depth(&self) -> usize {
            self.k4
        }

        fn oc32(&self) -> usize {
            self.oc32
        }

        /// As the dense GEMM's tile.
        #[inline(always)]
        unsafe fn tile<const R: usize>(
            &self,
            rq: &Requant,
            col: &[u8],
            start: usize,
            rows: usize,
            ob: usize,
            oc: usize,
            out: &mut [i8],
        ) {
            let p = self;
            // SAFETY: as the dense tile: `col` holds `start + R` rows of `k4` bytes, `ob + 32 ≤
            // oc32`, `store_tile` writes what it documents.
            unsafe {
                let mut acc = [_mm512_setzero_si512(); 16];
                let mut xp = col.as_ptr().add(start * p.k4);
                let step = p.chunk();
                let mut ip = p.index.as_ptr().add(ob / 32 * (p.k4 / 4) * step);
                for _ in 0..p.k4 / 4 {
                    let (w0, w1) = decode(p, ip, ob);
                    for r in 0..R {
                        let xb = _mm512_set1_epi32(std::ptr::read_unaligned(
                            xp.wrapping_add(r.wrapping_mul(p.k4)) as *const i32,
                        ));
                        acc[2 * r] = _mm512_dpbusd_epi32(acc[2 * r], xb, w0);
                        acc[2 * r + 1] = _mm512_dpbusd_epi32(acc[2 * r + 1], xb, w1);
                    }
                    xp = xp.wrapping_add(4);
                    ip = ip.wrapping_add(step);
                }
                store_tile::<R>(&acc, &p.corr, rq, start, rows, ob, oc, out);
            }
        }

        /// As the dense GEMV's tile.
        #[inline(always)]
        unsafe fn tile_gemv<const NB: usize>(&self, xu: &[u8], ob: usize, acc: &mut [i32]) {
            let p = self;
            // SAFETY: `xu` holds `k4` bytes, `ob + 32·NB ≤ oc32`, `store_sums` writes what it
            // documents.
            unsafe {
                let mut a = [[_mm512_setzero_si512(); 2]; NB];
                let mut xp = xu.as_ptr();
                let step = p.chunk();
                let mut ip = p.index.as_ptr().add(ob / 32 * (p.k4 / 4) * step);
                for _ in 0..p.k4 / 4 {
                    let xb = _mm512_set1_epi32(std::ptr::read_unaligned(xp as *const i32));
                    for (j, a) in a.iter_mut().enumerate() {
                        let block = ip.wrapping_add(j * (p.k4 / 4) * step);
                        let (w0, w1) = decode(p, block, ob + 32 * j);
                        a[0] = _mm512_dpbusd_epi32(a[0], xb, w0);
                        a[1] = _mm512_dpbusd_epi32(a[1], xb, w1);
                    }
                    xp = xp.wrapping_add(4);
                    ip = ip.wrapping_add(step);
                }
                store_sums(&a, &p.corr, ob, acc);
            }
        }
    }

    /// CONV_2D on palette weights, as `crate::kernels::vnni::conv` on the dense ones.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW, VL, VNNI and VBMI; `x` and `out` must have the
    /// geometry's sizes, `p` and `rq` must be built for this convolution.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
    pub(crate) unsafe fn conv(
        g: &Geometry,
        p: &PalettePacked,
        rq: &Requant,
        x: &[i8],
        out: &mut [i8],
    ) {
        // SAFETY: forwarded.
        unsafe { gemm(g, p, rq, x, out) }
    }

    /// FULLY_CONNECTED sums on palette weights, as `crate::kernels::vnni::fc::gemv`.
    ///
    /// # Safety
    /// As `crate::kernels::vnni::fc::gemv`, and the CPU must support AVX-512 VBMI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
    pub(crate) unsafe fn gemv(
        p: &PalettePacked,
        x: &[i8],
        batches: usize,
        depth: usize,
        acc: &mut [i32],
    ) {
        // SAFETY: forwarded.
        unsafe { gemv_rows(p, x, batches, depth, acc) }
    }
}
