//! CONV_2D and FULLY_CONNECTED on N:M-sparse weights (2:4, 4:8) with AVX-512 VNNI and VBMI.
//!
//! A layer qualifies when, for every output channel, every aligned run of 8 consecutive `k`
//! (`k = (fy, fx, i)` flattened, input channels innermost) holds at most 4 non-zero weights:
//! 2:4 sparsity along input channels (what `collab-prune`'s `Granularity::NOfM { n: 2, m: 4 }`
//! produces) always does. The file stays an ordinary dense int8 file; the pattern is found in
//! its weights when the interpreter is prepared, and layers without it keep the dense kernels.
//!
//! Packing: per output channel and run of 8 `k`, the (up to) 4 non-zero weights form one dword
//! and their positions in the run (0..8) another, laid out `[k / 8][oc][4]` like the dense
//! GEMM's `[k / 4][oc][4]`. Per pixel and run, the 8 input bytes are broadcast to every qword
//! (`vpbroadcastq`), `vpermb` picks each output channel's 4 inputs with the position vector
//! (loaded once per block of channels and reused across the tile of pixels), and one
//! `vpdpbusd` accumulates them: half the dot-product instructions of the dense kernel, plus one
//! permute (a different execution port) per dot product.
//!
//! Everything else is the dense GEMM's: inputs shifted to unsigned, the per-channel constant
//! `bias − (zp + 128)·Σw`, tiles of 8 pixels × 32 channels, and requantization in registers
//! (`super::x86::requant16`); the results are the same integers (tests compare them with the
//! portable kernels).

/// N:M-sparse weights packed for [`conv`] / [`gemv`]: `k` padded to a multiple of 8, output
/// channels to a multiple of 32.
#[derive(Clone, Debug)]
pub(crate) struct SparsePacked {
    /// `k` rounded up to 8.
    pub(in crate::kernels::vnni) k8: usize,
    /// Output channels rounded up to 32.
    pub(in crate::kernels::vnni) oc32: usize,
    /// `[k / 8][oc32][4]`: the non-zero weights of each run of 8 `k`, zeros after them.
    w: Vec<i8>,
    /// `[k / 8][oc32][4]`: the position (0..8) in its run of each weight in `w`.
    index: Vec<u8>,
    /// `bias − (zp + 128)·Σw` per output channel, padded to `oc32`.
    pub(in crate::kernels::vnni) corr: Vec<i32>,
}

impl SparsePacked {
    /// From HWIO `i32` weights (`[kh, kw, ic, oc]`, i.e. `[k, oc]`), the int32 bias and the input
    /// zero point; `None` when some run of 8 `k` of some output channel has more than 4 non-zero
    /// weights (then only the dense kernels fit).
    pub(crate) fn new(
        hwio: &[i32],
        k: usize,
        oc: usize,
        bias: &[i32],
        input_zp: i32,
    ) -> Option<Self> {
        if k == 0 || oc == 0 || hwio.len() != k * oc {
            return None;
        }
        let k8 = k.div_ceil(8) * 8;
        let oc32 = oc.div_ceil(32) * 32;
        let mut w = vec![0i8; k8 / 8 * oc32 * 4];
        let mut index = vec![0u8; k8 / 8 * oc32 * 4];
        let mut sums = vec![0i32; oc];
        for run in 0..k8 / 8 {
            for o in 0..oc {
                let at = (run * oc32 + o) * 4;
                let mut n = 0;
                for j in 0..8 {
                    let kk = run * 8 + j;
                    let v = if kk < k { hwio[kk * oc + o] } else { 0 };
                    if v == 0 {
                        continue;
                    }
                    if n == 4 {
                        return None;
                    }
                    w[at + n] = v as i8;
                    index[at + n] = j as u8;
                    sums[o] = sums[o].wrapping_add(v);
                    n += 1;
                }
            }
        }
        let mut corr: Vec<i32> = (0..oc)
            .map(|o| bias[o].wrapping_sub((input_zp.wrapping_add(128)).wrapping_mul(sums[o])))
            .collect();
        corr.resize(oc32, 0);
        Some(Self {
            k8,
            oc32,
            w,
            index,
            corr,
        })
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{conv, gemv};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::SparsePacked;
    use crate::kernels::vnni::fc::x86::{gemv_rows, store_sums};
    use crate::kernels::vnni::x86::{Gemm, gemm, store_tile};
    use crate::kernels::vnni::{Geometry, Requant};
    use std::arch::x86_64::*;

    impl Gemm for SparsePacked {
        fn depth(&self) -> usize {
            self.k8
        }

        fn oc32(&self) -> usize {
            self.oc32
        }

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
            // SAFETY: `col` holds at least `start + R` rows of `k8` bytes (the caller pads it),
            // every run `< k8 / 8`, `ob + 32 <= oc32`, and `store_tile` writes what it documents.
            unsafe {
                let mut acc = [_mm512_setzero_si512(); 16];
                // Plain pointer steps in the loop (no index arithmetic to check).
                let mut xp = col.as_ptr().add(start * p.k8);
                let mut wp = p.w.as_ptr().add(ob * 4);
                let mut ip = p.index.as_ptr().add(ob * 4);
                let step = p.oc32 * 4;
                for _ in 0..p.k8 / 8 {
                    let w0 = _mm512_loadu_si512(wp as *const __m512i);
                    let w1 = _mm512_loadu_si512(wp.wrapping_add(64) as *const __m512i);
                    let i0 = _mm512_loadu_si512(ip as *const __m512i);
                    let i1 = _mm512_loadu_si512(ip.wrapping_add(64) as *const __m512i);
                    for r in 0..R {
                        let xb = _mm512_broadcastq_epi64(_mm_loadl_epi64(
                            xp.wrapping_add(r.wrapping_mul(p.k8)) as *const __m128i,
                        ));
                        let x0 = _mm512_permutexvar_epi8(i0, xb);
                        let x1 = _mm512_permutexvar_epi8(i1, xb);
                        acc[2 * r] = _mm512_dpbusd_epi32(acc[2 * r], x0, w0);
                        acc[2 * r + 1] = _mm512_dpbusd_epi32(acc[2 * r + 1], x1, w1);
                    }
                    xp = xp.wrapping_add(8);
                    wp = wp.wrapping_add(step);
                    ip = ip.wrapping_add(step);
                }
                store_tile::<R>(&acc, &p.corr, rq, start, rows, ob, oc, out);
            }
        }

        #[inline(always)]
        unsafe fn tile_gemv<const NB: usize>(&self, xu: &[u8], ob: usize, acc: &mut [i32]) {
            let p = self;
            // SAFETY: `xu` holds `k8` bytes, every weight and position read is below `k8 / 8 ·
            // oc32 · 4` (`ob + 32·NB ≤ oc32`), and `store_sums` writes what it documents.
            unsafe {
                let mut a = [[_mm512_setzero_si512(); 2]; NB];
                let mut xp = xu.as_ptr();
                let mut wp = p.w.as_ptr().add(ob * 4);
                let mut ip = p.index.as_ptr().add(ob * 4);
                let step = p.oc32 * 4;
                for _ in 0..p.k8 / 8 {
                    let xb = _mm512_broadcastq_epi64(_mm_loadl_epi64(xp as *const __m128i));
                    for (j, a) in a.iter_mut().enumerate() {
                        let at = 128 * j;
                        let w0 = _mm512_loadu_si512(wp.wrapping_add(at) as *const __m512i);
                        let w1 = _mm512_loadu_si512(wp.wrapping_add(at + 64) as *const __m512i);
                        let i0 = _mm512_loadu_si512(ip.wrapping_add(at) as *const __m512i);
                        let i1 = _mm512_loadu_si512(ip.wrapping_add(at + 64) as *const __m512i);
                        a[0] = _mm512_dpbusd_epi32(a[0], _mm512_permutexvar_epi8(i0, xb), w0);
                        a[1] = _mm512_dpbusd_epi32(a[1], _mm512_permutexvar_epi8(i1, xb), w1);
                    }
                    xp = xp.wrapping_add(8);
                    wp = wp.wrapping_add(step);
                    ip = ip.wrapping_add(step);
                }
                store_sums(&a, &p.corr, ob, acc);
            }
        }
    }

    /// CONV_2D on N:M-sparse weights: unfold the input (rows of `k8` bytes), multiply with the
    /// packed weights, requantize into `out` (`[pixels, oc]` int8).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW, VL, VNNI and VBMI ([`crate::kernels::Cpu::avx512_vbmi`]); `x` and
    /// `out` must have the geometry's sizes, `p` and `rq` must be built for this convolution.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
    pub(crate) unsafe fn conv(
        g: &Geometry,
        p: &SparsePacked,
        rq: &Requant,
        x: &[i8],
        out: &mut [i8],
    ) {
        // SAFETY: forwarded.
        unsafe { gemm(g, p, rq, x, out) }
    }

    /// FULLY_CONNECTED sums on N:M-sparse weights, as `crate::kernels::vnni::fc::gemv`:
    /// `acc[b · stride + u] = bias[u] + Σ_d w[u, d]·(x[b, d] − zp)` for `x` `[batches, depth]`
    /// int8, `stride = acc_stride(units)`.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW, VL, VNNI and VBMI ([`crate::kernels::Cpu::avx512_vbmi`]); `p` must
    /// be packed for `k = depth`, `x` must hold `batches · depth` values and `acc` `batches ·
    /// stride`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
    pub(crate) unsafe fn gemv(
        p: &SparsePacked,
        x: &[i8],
        batches: usize,
        depth: usize,
        acc: &mut [i32],
    ) {
        // SAFETY: forwarded.
        unsafe { gemv_rows(p, x, batches, depth, acc) }
    }
}

#[cfg(test)]
mod tests {
    use super::SparsePacked;

    /// 2:4 weights pack; a run of 8 with 5 non-zeros refuses; the packed positions and weights
    /// give back every non-zero weight, and the constant folds their sum.
    #[test]
    fn packing_keeps_every_weight_and_refuses_dense_runs() {
        let (k, oc) = (13, 3);
        let mut hwio = vec![0i32; k * oc];
        for o in 0..oc {
            for kk in (0..k).filter(|kk| (kk + o) % 4 < 2) {
                hwio[kk * oc + o] = ((kk as i32 * 7 + o as i32) % 200 - 100) | 1;
            }
        }
        let p = SparsePacked::new(&hwio, k, oc, &[5, 6, 7], 3).expect("2:4 packs");
        assert_eq!((p.k8, p.oc32), (16, 32));
        for o in 0..oc {
            let mut got = vec![0i32; p.k8];
            for run in 0..2 {
                for j in 0..4 {
                    let at = (run * p.oc32 + o) * 4 + j;
                    got[run * 8 + p.index[at] as usize] += p.w[at] as i32;
                }
            }
            let want: Vec<i32> = (0..p.k8)
                .map(|kk| if kk < k { hwio[kk * oc + o] } else { 0 })
                .collect();
            assert_eq!(got, want, "channel {o}");
            let sum: i32 = want.iter().sum();
            assert_eq!(p.corr[o], [5, 6, 7][o] - 131 * sum);
        }
        let mut dense = hwio.clone();
        // Channel 1's first run of 8 gets a fifth non-zero.
        for kk in 0..8 {
            dense[kk * oc + 1] = 1;
        }
        assert!(SparsePacked::new(&dense, k, oc, &[0; 3], 0).is_none());
    }
}
