//! CONV_2D as an int8 GEMM with AVX-512 VNNI (`vpdpbusd`: 64 u8×i8 products per instruction).
//!
//! Same integer result as the reference formula `bias + Σ w·(x − zp)`: inputs are shifted to
//! unsigned (`x + 128`, padding taps get `zp + 128`, i.e. a real zero), the GEMM computes
//! `Σ w·(x + 128)` exactly in i32, and the per-channel constant `bias − (zp + 128)·Σw` is added
//! before the same requantization. Used when the CPU has AVX-512 F/BW/VNNI; otherwise the
//! portable kernel runs (tests compare both with the plain formula).

/// Weights packed for the kernel: `k = (fy, fx, i)` flattened and padded to a multiple of 4,
/// output channels padded to a multiple of 32, laid out `[k / 4][oc][4]`.
#[derive(Clone, Debug)]
pub(crate) struct Packed {
    /// `k` rounded up to 4.
    k4: usize,
    /// Output channels rounded up to 32.
    oc32: usize,
    w: Vec<i8>,
    /// `bias − (zp + 128)·Σw` per output channel.
    corr: Vec<i32>,
    /// Per block of 32 output channels, the groups of 4 `k` that hold a non-zero weight: the
    /// kernel skips the rest, so block-sparse weights (32 × 4 zero blocks, e.g. block pruning
    /// of 1×1 convolutions) cost proportionally less.
    active: Vec<Vec<u32>>,
}

impl Packed {
    /// From HWIO `i32` weights (`[kh, kw, ic, oc]`), the int32 bias and the input zero point.
    pub(crate) fn new(hwio: &[i32], k: usize, oc: usize, bias: &[i32], input_zp: i32) -> Self {
        let k4 = k.div_ceil(4) * 4;
        let oc32 = oc.div_ceil(32) * 32;
        let mut w = vec![0i8; k4 * oc32];
        let mut sums = vec![0i32; oc];
        for kk in 0..k {
            for o in 0..oc {
                let v = hwio[kk * oc + o];
                w[((kk / 4) * oc32 + o) * 4 + kk % 4] = v as i8;
                sums[o] = sums[o].wrapping_add(v);
            }
        }
        let corr = (0..oc)
            .map(|o| bias[o].wrapping_sub((input_zp.wrapping_add(128)).wrapping_mul(sums[o])))
            .collect();
        let active = (0..oc32 / 32)
            .map(|ob| {
                (0..k4 / 4)
                    .filter(|kg| {
                        let start = (kg * oc32 + ob * 32) * 4;
                        w[start..start + 128].iter().any(|v| *v != 0)
                    })
                    .map(|kg| kg as u32)
                    .collect()
            })
            .collect();
        Self {
            k4,
            oc32,
            w,
            corr,
            active,
        }
    }
}

/// Whether this CPU runs the VNNI kernel.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Geometry of one convolution.
pub(crate) struct Geometry {
    pub in_shape: [usize; 4],
    pub out_shape: [usize; 4],
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    pub pad: [usize; 2],
    pub input_zp: i32,
}

/// Fill `col` with the `k4` unsigned input values of output pixel `(b, oy, ox)`.
fn gather(g: &Geometry, x: &[i8], b: usize, oy: usize, ox: usize, col: &mut [u8]) {
    let [_, ih, iw, ic] = g.in_shape;
    let pad = (g.input_zp + 128) as u8;
    let y0 = (oy * g.stride[0]) as isize - g.pad[0] as isize;
    let x0 = (ox * g.stride[1]) as isize - g.pad[1] as isize;
    let mut at = 0;
    for fy in 0..g.kernel[0] {
        let y = y0 + (fy * g.dilation[0]) as isize;
        for fx in 0..g.kernel[1] {
            let xx = x0 + (fx * g.dilation[1]) as isize;
            let dst = &mut col[at..at + ic];
            if y < 0 || y >= ih as isize || xx < 0 || xx >= iw as isize {
                dst.fill(pad);
            } else {
                let src = &x[((b * ih + y as usize) * iw + xx as usize) * ic..][..ic];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = (*s as u8) ^ 0x80;
                }
            }
            at += ic;
        }
    }
    col[at..].fill(0);
}

/// The raw accumulators `Σ w·(x + 128) + corr` of every output, `[pixels, oc]`.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VNNI ([`available`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn accumulate(g: &Geometry, p: &Packed, x: &[i8]) -> Vec<i32> {
    use std::arch::x86_64::*;
    const ROWS: usize = 4;
    let [nb, _, _, _] = g.in_shape;
    let [_, oh, ow, oc] = g.out_shape;
    let pixels = nb * oh * ow;
    let mut out = vec![0i32; pixels * oc];
    let mut col = vec![0u8; ROWS * p.k4];
    let mut tile = vec![0i32; ROWS * p.oc32];
    let mut start = 0;
    while start < pixels {
        let rows = ROWS.min(pixels - start);
        for r in 0..rows {
            let px = start + r;
            let (b, rest) = (px / (oh * ow), px % (oh * ow));
            gather(
                g,
                x,
                b,
                rest / ow,
                rest % ow,
                &mut col[r * p.k4..(r + 1) * p.k4],
            );
        }
        for r in rows..ROWS {
            col[r * p.k4..(r + 1) * p.k4].fill(0);
        }
        for ob in (0..p.oc32).step_by(32) {
            let mut acc = [_mm512_setzero_si512(); 2 * ROWS];
            for &kg in &p.active[ob / 32] {
                let kg = kg as usize;
                // SAFETY: kg < k4 / 4 and ob + 32 <= oc32, so both 64-byte loads stay in `w`.
                let (w0, w1) = unsafe {
                    let base = p.w.as_ptr().add((kg * p.oc32 + ob) * 4);
                    (
                        _mm512_loadu_si512(base as *const __m512i),
                        _mm512_loadu_si512(base.add(64) as *const __m512i),
                    )
                };
                for r in 0..ROWS {
                    let c = &col[r * p.k4 + kg * 4..][..4];
                    let xb = _mm512_set1_epi32(i32::from_le_bytes([c[0], c[1], c[2], c[3]]));
                    acc[2 * r] = _mm512_dpbusd_epi32(acc[2 * r], xb, w0);
                    acc[2 * r + 1] = _mm512_dpbusd_epi32(acc[2 * r + 1], xb, w1);
                }
            }
            for r in 0..ROWS {
                // SAFETY: ob + 32 <= oc32 = the tile's row length.
                unsafe {
                    let dst = tile.as_mut_ptr().add(r * p.oc32 + ob);
                    _mm512_storeu_si512(dst as *mut __m512i, acc[2 * r]);
                    _mm512_storeu_si512(dst.add(16) as *mut __m512i, acc[2 * r + 1]);
                }
            }
        }
        for r in 0..rows {
            let dst = &mut out[(start + r) * oc..][..oc];
            for ((d, t), corr) in dst.iter_mut().zip(&tile[r * p.oc32..]).zip(&p.corr) {
                *d = t.wrapping_add(*corr);
            }
        }
        start += rows;
    }
    out
}
