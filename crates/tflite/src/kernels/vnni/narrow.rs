//! CONV_2D on AVX-512 VNNI in blocks of 16 output channels, reading the input in place: the
//! interpreter's convolution kernel wherever the weights are dense.
//!
//! - **Blocks of 16, or fewer channels packed with more pixels.** One 16-lane accumulator per
//!   pixel holds a block of 16 output channels; blocks run in pairs (tiles of 8 pixels × 32
//!   channels, so each broadcast input feeds two products), an odd last block in tiles of 16
//!   pixels. A convolution with 8 or fewer outputs (3, 8: MobileNet's and ResNet's stems)
//!   would leave most lanes on padding, so there one accumulator holds `blk` channels (4 or 8) × `g = 16 / blk` consecutive groups of 4 `k`: the input is
//!   broadcast 4, 8 or 16 bytes at a time (`vpbroadcastd`, `vpbroadcastq`, `vbroadcasti32x4`),
//!   the weights are packed in the same lane order, and after the sweep over `k` the `g` partial
//!   sums of each channel are added across lanes while `g` pixels are gathered into one vector,
//!   so every lane requantized and stored is a real output.
//! - **Direct** (no unfolding) when the filter has no dilation along the width: each filter row
//!   then reads `kw · ic` contiguous bytes of the input (9 for a 3×3 stem on 3 channels, 48 for
//!   a 3×3 convolution on 16), so the input is copied once into a buffer padded with the zero
//!   point (shifted to unsigned as for the GEMM) and each step of the sweep reads `4·g` bytes of
//!   a filter row at a fixed offset from the pixel; a tile of pixels along an output row (all
//!   pixels at once for a 1×1 stride-1 convolution) reads the buffer with one stride. Steps
//!   that run past a filter row's end read neighbouring bytes against zero weights. Unfolding
//!   the pixels as the GEMM does costs more than the products on narrow inputs (a stem on 1 to
//!   3 channels copies a few bytes per tap). With width dilation the pixels are unfolded, rows
//!   rounded up to `4·g` bytes.
//! - The integers are the GEMM's: `Σ w·(x + 128)` in i32 plus the per-channel constant
//!   `bias − (zp + 128)·Σw`, requantized in registers by the same `requant16` (tests compare the
//!   kernel with the plain formula and with the 32-channel GEMM, which block-pruned weights
//!   keep: it skips their zero blocks).

use super::{Geometry, Requant};

/// A CONV_2D packed for [`conv`].
#[derive(Clone, Debug)]
pub(crate) struct Narrow {
    /// Output channels per pixel in an accumulator: 4, 8 or 16.
    blk: usize,
    /// Groups of 4 `k` per accumulator lane set (`16 / blk`).
    g: usize,
    /// Blocks of 16 output channels (more than one only when `blk` is 16).
    blocks: usize,
    /// Whether the kernel reads the padded input directly (else it unfolds the pixels).
    direct: bool,
    /// Bytes of one unfolded pixel: `k` rounded up to `4·g` (unfolding).
    row: usize,
    /// Height and width of the padded input (direct).
    hp: usize,
    wp: usize,
    /// Per step of the sweep, where its `4·g` input bytes start, from the pixel's first.
    offsets: Vec<u32>,
    /// `[blocks][steps][16 lanes][4]`: lane `c·g + e` holds channel `c`'s weights for the
    /// step's `e`-th group of 4 `k`.
    w: Vec<i8>,
    /// `bias − (zp + 128)·Σw` in the output lane order (`pixel · blk + channel`; with one pixel
    /// per accumulator, the channels in order), `16 · blocks` lanes.
    corr: Vec<i32>,
    /// Requantization constants in the output lane order.
    rq: Requant,
}

impl Narrow {
    /// From HWIO `i32` weights (`[kh, kw, ic, oc]`), the int32 bias, TFLite's per-channel
    /// `(multiplier, shift)`, the output zero point and the activation range, for the
    /// convolution `geo`; `None` when it has no output channels.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        geo: &Geometry,
        hwio: &[i32],
        bias: &[i32],
        multiplier: &[i32],
        shift: &[i32],
        zero_point: i32,
        act: [i32; 2],
    ) -> Option<Self> {
        let [_, _, _, ic] = geo.in_shape;
        let [_, oh, ow, oc] = geo.out_shape;
        let [kh, kw] = geo.kernel;
        if oc == 0 {
            return None;
        }
        let blk = if oc <= 4 {
            4
        } else if oc <= 8 {
            8
        } else {
            16
        };
        let g = 16 / blk;
        let blocks = oc.div_ceil(16);
        let taps = kh * kw;
        let k = taps * ic;
        // Reading the input in place needs adjacent taps along a row (no dilation across it):
        // a filter row is then `kw · ic` contiguous bytes of the padded input.
        let direct = geo.dilation[1] == 1;
        let row = k.div_ceil(4 * g) * 4 * g;
        let hp = (oh - 1) * geo.stride[0] + (kh - 1) * geo.dilation[0] + 1;
        let wp = (ow - 1) * geo.stride[1] + kw;
        // Per step, the `k` index of each of its `4·g` bytes (`None`: padding, weight 0), and
        // where the step's bytes start.
        let mut steps: Vec<(u32, Vec<Option<usize>>)> = Vec::new();
        if direct {
            let span = kw * ic;
            for fy in 0..kh {
                let at = fy * geo.dilation[0] * wp * ic;
                for j in 0..span.div_ceil(4 * g) {
                    let ks = (0..4 * g)
                        .map(|b| {
                            Some(4 * g * j + b)
                                .filter(|i| *i < span)
                                .map(|i| fy * span + i)
                        })
                        .collect();
                    steps.push(((at + 4 * g * j) as u32, ks));
                }
            }
        } else {
            for s in 0..row / (4 * g) {
                let ks = (0..4 * g)
                    .map(|b| Some(4 * g * s + b).filter(|kk| *kk < k))
                    .collect();
                steps.push(((4 * g * s) as u32, ks));
            }
        }
        let mut w = vec![0i8; blocks * steps.len() * 64];
        for (s, (_, ks)) in steps.iter().enumerate() {
            for c in 0..oc {
                let (ob, lane) = (c / 16, c % 16);
                for e in 0..g {
                    for b in 0..4 {
                        if let Some(kk) = ks[4 * e + b] {
                            w[((ob * steps.len() + s) * 16 + lane * g + e) * 4 + b] =
                                hwio[kk * oc + c] as i8;
                        }
                    }
                }
            }
        }
        let zp = geo.input_zp;
        let corr_c: Vec<i32> = (0..oc)
            .map(|c| {
                let sum = (0..k).fold(0i32, |s, kk| s.wrapping_add(hwio[kk * oc + c]));
                bias[c].wrapping_sub(zp.wrapping_add(128).wrapping_mul(sum))
            })
            .collect();
        // Blocks of 16 channels in order (g = 1), else one block of `g` pixels × `blk`.
        let lanes = |v: &[i32]| -> Vec<i32> {
            (0..blocks * 16)
                .map(|l| {
                    v.get(if g == 1 { l } else { l % blk })
                        .copied()
                        .unwrap_or(0)
                })
                .collect()
        };
        Some(Self {
            blk,
            g,
            blocks,
            direct,
            row,
            hp,
            wp,
            offsets: steps.iter().map(|(o, _)| *o).collect(),
            w,
            corr: lanes(&corr_c),
            rq: Requant::new(&lanes(multiplier), &lanes(shift), zero_point, act),
        })
    }
}

/// The input of a direct convolution in `buf`: `[nb, hp, wp, ic]` unsigned (`x + 128`), the
/// rows and columns outside the input set to `zp + 128`, followed by `spare` bytes (whatever
/// they hold).
#[inline(always)]
fn pad_unsigned(g: &Geometry, p: &Narrow, x: &[i8], spare: usize, buf: &mut Vec<u8>) {
    let [nb, ih, iw, ic] = g.in_shape;
    let (hp, wp) = (p.hp, p.wp);
    let fill = (g.input_zp + 128) as u8;
    let len = nb * hp * wp * ic;
    if buf.len() < len + spare {
        buf.resize(len + spare, 0);
    }
    for b in 0..nb {
        for py in 0..hp {
            let row = &mut buf[(b * hp + py) * wp * ic..][..wp * ic];
            let Some(y) = py.checked_sub(g.pad[0]).filter(|y| *y < ih) else {
                row.fill(fill);
                continue;
            };
            // Columns `first..last` of the padded row come from the input.
            let first = g.pad[1].min(wp);
            let last = (g.pad[1] + iw).min(wp);
            row[..first * ic].fill(fill);
            row[last * ic..].fill(fill);
            if last <= first {
                continue;
            }
            let src = &x[((b * ih + y) * iw + first - g.pad[1]) * ic..][..(last - first) * ic];
            super::copy_bytes(&mut row[first * ic..last * ic], src, 0x80);
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::conv;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Narrow, pad_unsigned};
    use crate::kernels::vnni::x86::{Rq16, ld32, ld64, ld128, ld512, st128};
    use crate::kernels::vnni::{Geometry, Scratch, unfold};
    use std::arch::x86_64::*;

    /// Pixels per tile: one accumulator each.
    const ROWS: usize = 16;

    /// Lanes `2i` and `2i + 1` of `a` (i < 8), then of `b`, added: the two partial sums of each
    /// channel of two pixels, as `[a's 8 channels, b's 8 channels]`.
    #[inline(always)]
    unsafe fn pair_sum(a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: register shuffles; the caller has AVX-512 F.
        unsafe {
            let even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
            let odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
            _mm512_add_epi32(
                _mm512_permutex2var_epi32(a, even, b),
                _mm512_permutex2var_epi32(a, odd, b),
            )
        }
    }

    /// One tile of `R` pixels (the first `rows` stored): pixel `r`'s input starts at `base + r ·
    /// stride`, its `oc` outputs at `out + r · oc`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const G: usize, const R: usize>(
        p: &Narrow,
        ob: usize,
        base: *const u8,
        stride: usize,
        out: *mut i8,
        rows: usize,
        oc: usize,
    ) {
        // SAFETY: the caller guarantees that `R` pixels' steps are readable from `base` (spare
        // bytes past the last real pixel) and that `rows` pixels' outputs are writable at `out`.
        unsafe {
            let mut acc = [_mm512_setzero_si512(); R];
            let w = p.w.as_ptr().wrapping_add(ob * p.offsets.len() * 64);
            // Wrapping index arithmetic (no overflow checks: the offsets are in bounds, as
            // above), so the loop over the tile's pixels unrolls with the accumulators in
            // registers.
            for (s, off) in p.offsets.iter().enumerate() {
                let wv = ld512(w.wrapping_add(s.wrapping_mul(64)));
                let src = base.wrapping_add(*off as usize);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let a = src.wrapping_add(r.wrapping_mul(stride));
                    let xb = match G {
                        1 => _mm512_set1_epi32(ld32(a)),
                        2 => _mm512_set1_epi64(ld64(a)),
                        _ => _mm512_broadcast_i32x4(ld128(a)),
                    };
                    *acc = _mm512_dpbusd_epi32(*acc, xb, wv);
                }
            }
            let corr = ld512(p.corr.as_ptr().wrapping_add(16 * ob));
            let rq = Rq16::new(&p.rq, 16 * ob);
            for q in 0..R / G {
                if q * G >= rows {
                    break;
                }
                let v = match G {
                    1 => acc[q],
                    2 => pair_sum(acc[2 * q], acc[2 * q + 1]),
                    _ => pair_sum(
                        pair_sum(acc[4 * q], acc[4 * q + 1]),
                        pair_sum(acc[4 * q + 2], acc[4 * q + 3]),
                    ),
                };
                let y = rq.apply8(_mm512_add_epi32(v, corr));
                let n = (rows - q * G).min(G);
                let dst = out.wrapping_add(q * G * oc);
                if G == 1 {
                    let bytes = (oc - 16 * ob).min(16);
                    _mm_mask_storeu_epi8(
                        dst.wrapping_add(16 * ob),
                        ((1u32 << bytes) - 1) as u16,
                        y,
                    );
                } else if oc == p.blk {
                    let bytes = n * oc;
                    let mask = if bytes >= 16 {
                        u16::MAX
                    } else {
                        (1u16 << bytes) - 1
                    };
                    _mm_mask_storeu_epi8(dst, mask, y);
                } else {
                    let mut tmp = [0i8; 16];
                    st128(tmp.as_mut_ptr(), y);
                    for j in 0..n {
                        std::ptr::copy_nonoverlapping(
                            tmp.as_ptr().wrapping_add(j * p.blk),
                            dst.wrapping_add(j * oc),
                            oc,
                        );
                    }
                }
            }
        }
    }

    /// [`tile`] with one pixel per accumulator over two blocks of 16 channels (`ob`, `ob + 1`):
    /// each broadcast input feeds two products, halving the loads per product.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile2<const R: usize>(
        p: &Narrow,
        ob: usize,
        base: *const u8,
        stride: usize,
        out: *mut i8,
        rows: usize,
        oc: usize,
    ) {
        // SAFETY: as `tile`, for blocks `ob` and `ob + 1 < blocks`.
        unsafe {
            let mut acc = [[_mm512_setzero_si512(); 2]; R];
            let steps = p.offsets.len();
            let w0 = p.w.as_ptr().wrapping_add(ob * steps * 64);
            let w1 = w0.wrapping_add(steps * 64);
            for (s, off) in p.offsets.iter().enumerate() {
                let wa = ld512(w0.wrapping_add(s.wrapping_mul(64)));
                let wb = ld512(w1.wrapping_add(s.wrapping_mul(64)));
                let src = base.wrapping_add(*off as usize);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let xb = _mm512_set1_epi32(ld32(src.wrapping_add(r.wrapping_mul(stride))));
                    acc[0] = _mm512_dpbusd_epi32(acc[0], xb, wa);
                    acc[1] = _mm512_dpbusd_epi32(acc[1], xb, wb);
                }
            }
            for h in 0..2 {
                let at = 16 * (ob + h);
                let corr = ld512(p.corr.as_ptr().wrapping_add(at));
                let rq = Rq16::new(&p.rq, at);
                let mask = ((1u32 << (oc - at).min(16)) - 1) as u16;
                for (r, acc) in acc.iter().enumerate() {
                    if r < rows {
                        let y = rq.apply8(_mm512_add_epi32(acc[h], corr));
                        _mm_mask_storeu_epi8(out.wrapping_add(r * oc + at), mask, y);
                    }
                }
            }
        }
    }

    /// `n` pixels from `base` (stride `stride`) into `out`, in tiles of 16, 8 and 4.
    #[inline(always)]
    unsafe fn sweep<const G: usize>(
        p: &Narrow,
        base: *const u8,
        stride: usize,
        out: *mut i8,
        n: usize,
        oc: usize,
    ) {
        // SAFETY: forwarded; the tails read at most `ROWS` pixels from their start.
        unsafe {
            let mut first = 0;
            if G == 1 {
                // Pairs of blocks: tiles of 8 pixels × 32 channels.
                while first + 1 < p.blocks {
                    let mut at = 0;
                    while at < n {
                        let (b, o) = (base.wrapping_add(at * stride), out.wrapping_add(at * oc));
                        let rest = n - at;
                        if rest > 4 {
                            tile2::<8>(p, first, b, stride, o, rest.min(8), oc);
                        } else {
                            tile2::<4>(p, first, b, stride, o, rest, oc);
                        }
                        at += 8;
                    }
                    first += 2;
                }
            }
            for ob in first..p.blocks {
                let mut at = 0;
                while n - at >= ROWS {
                    let (b, o) = (base.wrapping_add(at * stride), out.wrapping_add(at * oc));
                    tile::<G, ROWS>(p, ob, b, stride, o, ROWS, oc);
                    at += ROWS;
                }
                let rest = n - at;
                let (b, o) = (base.wrapping_add(at * stride), out.wrapping_add(at * oc));
                if rest > 8 {
                    tile::<G, ROWS>(p, ob, b, stride, o, rest, oc);
                } else if rest > 4 {
                    tile::<G, 8>(p, ob, b, stride, o, rest, oc);
                } else if rest > 0 {
                    tile::<G, 4>(p, ob, b, stride, o, rest, oc);
                }
            }
        }
    }

    /// CONV_2D into `out` (`[pixels, oc]` int8).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW, VL and VNNI ([`crate::kernels::Cpu::avx512_vnni`]);
    /// `x` and `out` must have the geometry's sizes and `p` must be built by [`Narrow::new`] for it.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(crate) unsafe fn conv(g: &Geometry, p: &Narrow, x: &[i8], out: &mut [i8]) {
        // SAFETY: forwarded.
        unsafe {
            match p.g {
                1 => run::<1>(g, p, x, out),
                2 => run::<2>(g, p, x, out),
                _ => run::<4>(g, p, x, out),
            }
        }
    }

    #[inline(always)]
    unsafe fn run<const G: usize>(g: &Geometry, p: &Narrow, x: &[i8], out: &mut [i8]) {
        let [nb, _, _, _] = g.in_shape;
        let [_, oh, ow, oc] = g.out_shape;
        let o = out.as_mut_ptr();
        if p.direct {
            let stride = g.stride[1] * g.in_shape[3];
            // The last tile of a row reads up to `ROWS` pixels past its start, and a step up to
            // 15 bytes past its filter row.
            let spare = ROWS * stride + 64;
            let mut scratch = Scratch::bytes(0);
            pad_unsigned(g, p, x, spare, &mut scratch.0);
            let src = scratch.0.as_ptr();
            if g.kernel == [1, 1] && g.stride == [1, 1] {
                // Pixels follow each other in the input as in the output: one sweep.
                // SAFETY: as below, over all the pixels at once.
                unsafe { sweep::<G>(p, src, stride, o, nb * oh * ow, oc) };
                return;
            }
            for b in 0..nb {
                for oy in 0..oh {
                    let start = ((b * p.hp + oy * g.stride[0]) * p.wp) * g.in_shape[3];
                    let px = (b * oh + oy) * ow;
                    // SAFETY: the padded input holds every tap of the row's pixels, and
                    // `spare` bytes follow it; `out` holds the row's `ow · oc` outputs.
                    unsafe {
                        sweep::<G>(
                            p,
                            src.wrapping_add(start),
                            stride,
                            o.wrapping_add(px * oc),
                            ow,
                            oc,
                        )
                    };
                }
            }
        } else {
            let pixels = nb * oh * ow;
            let mut scratch = Scratch::bytes((pixels + ROWS) * p.row);
            let col = &mut scratch.0[..(pixels + ROWS) * p.row];
            unfold(g, x, p.row, col);
            // SAFETY: `col` has `ROWS` spare rows; `out` is `[pixels, oc]`.
            unsafe { sweep::<G>(p, col.as_ptr(), p.row, o, pixels, oc) };
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::fixed::mbqm;
    use crate::kernels::vnni::test_cases::{channels, draws, geometry};
    use crate::kernels::vnni::{Packed, Requant};
    use proptest::prelude::*;

    /// A random convolution with 1 to 39 outputs (one to three blocks of 16 past 16).
    #[derive(Debug)]
    struct Case {
        geo: Geometry,
        hwio: Vec<i32>,
        bias: Vec<i32>,
        m: Vec<(i32, i32)>,
        zp: i32,
        act: [i32; 2],
        x: Vec<i8>,
    }

    impl std::fmt::Debug for Geometry {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "in {:?} out {:?} kernel {:?} stride {:?} dilation {:?} pad {:?} zp {}",
                self.in_shape,
                self.out_shape,
                self.kernel,
                self.stride,
                self.dilation,
                self.pad,
                self.input_zp
            )
        }
    }

    fn case() -> impl Strategy<Value = Case> {
        (
            (1usize..3, 1usize..12, 1usize..40, 1usize..35),
            (1usize..4, 1usize..4),
            (1usize..3, 1usize..3, 1usize..3),
            (any::<bool>(), 1usize..40, any::<bool>()),
            prop::sample::select(vec![1e-2f64, 1e-3, 3e-5, 2.0]),
            any::<u64>(),
        )
            .prop_filter("kernel fits", |(s, k, (_, _, d), (same, ..), ..)| {
                *same || ((k.0 - 1) * d < s.1 && (k.1 - 1) * d < s.2)
            })
            .prop_map(|(s, k, (sy, sx, d), (same, oc, relu), scale, seed)| {
                let mut next = draws(seed);
                let [nb, ih, iw, ic] = [s.0, s.1, s.2, s.3];
                let geo = geometry([nb, ih, iw, ic], oc, k, (sy, sx), d, same, &mut next);
                let hwio = (0..k.0 * k.1 * ic * oc).map(|_| next(-127, 127)).collect();
                let (bias, m, zp, act) = channels(oc, scale, relu, &mut next);
                let x = (0..nb * ih * iw * ic)
                    .map(|_| next(-128, 127) as i8)
                    .collect();
                Case {
                    geo,
                    hwio,
                    bias,
                    m,
                    zp,
                    act,
                    x,
                }
            })
    }

    /// TFLite's formula, plainly: `clamp(MBQM(bias + Σ w·(x − zp)) + out_zp)`.
    fn plain(c: &Case) -> Vec<i8> {
        let g = &c.geo;
        let [nb, ih, iw, ic] = g.in_shape;
        let [_, oh, ow, oc] = g.out_shape;
        let [kh, kw] = g.kernel;
        let mut y = Vec::new();
        for b in 0..nb {
            for oy in 0..oh {
                for ox in 0..ow {
                    for o in 0..oc {
                        let mut acc = c.bias[o];
                        for fy in 0..kh {
                            for fx in 0..kw {
                                let iy = (oy * g.stride[0] + fy * g.dilation[0]) as isize
                                    - g.pad[0] as isize;
                                let ix = (ox * g.stride[1] + fx * g.dilation[1]) as isize
                                    - g.pad[1] as isize;
                                if iy < 0 || ix < 0 || iy >= ih as isize || ix >= iw as isize {
                                    continue;
                                }
                                for i in 0..ic {
                                    let v = c.x
                                        [((b * ih + iy as usize) * iw + ix as usize) * ic + i]
                                        as i32;
                                    acc += c.hwio[((fy * kw + fx) * ic + i) * oc + o]
                                        * (v - g.input_zp);
                                }
                            }
                        }
                        let v = mbqm(acc, c.m[o].0, c.m[o].1) + c.zp;
                        y.push(v.clamp(c.act[0], c.act[1]) as i8);
                    }
                }
            }
        }
        y
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// The kernel (direct and unfolding, 4-, 8- and 16-channel blocks, several blocks of
        /// 16, ragged channel counts and rows, padding, strides, dilation, multipliers above 1)
        /// gives the plain formula's bytes, and the 32-channel GEMM's.
        #[test]
        fn narrow_conv_equals_the_plain_formula_and_the_gemm(c in case()) {
            prop_assume!(crate::kernels::cpu().avx512_vnni);
            let (mult, shift): (Vec<i32>, Vec<i32>) = c.m.iter().copied().unzip();
            let p = Narrow::new(&c.geo, &c.hwio, &c.bias, &mult, &shift, c.zp, c.act).unwrap();
            let n: usize = c.geo.out_shape.iter().product();
            let mut got = vec![0i8; n];
            // SAFETY: the CPU has AVX-512 VNNI (checked above); sizes follow the geometry.
            unsafe { conv(&c.geo, &p, &c.x, &mut got) };
            prop_assert_eq!(&got, &plain(&c), "direct {} blk {}", p.direct, p.blk);
            let [_, kh, kw, ic] = [0, c.geo.kernel[0], c.geo.kernel[1], c.geo.in_shape[3]];
            let oc = c.geo.out_shape[3];
            let gemm = Packed::new(&c.hwio, kh * kw * ic, oc, &c.bias, c.geo.input_zp);
            let rq = Requant::new(&mult, &shift, c.zp, c.act);
            let mut other = vec![0i8; n];
            // SAFETY: as above.
            unsafe { crate::kernels::vnni::conv(&c.geo, &gemm, &rq, &c.x, &mut other) };
            prop_assert_eq!(&got, &other);
        }
    }
}
