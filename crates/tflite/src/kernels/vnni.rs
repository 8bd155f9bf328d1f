//! CONV_2D and DEPTHWISE_CONV_2D with AVX-512 VNNI, requantized in registers.
//!
//! Both kernels compute TFLite's integers exactly: `clamp(MultiplyByQuantizedMultiplier(bias +
//! Σ w·(x − zp)) + out_zp)` per output channel (tests compare them with the portable kernels and
//! with the plain formula).
//!
//! - **CONV_2D** is an int8 GEMM on `vpdpbusd` (64 u8×i8 products per instruction). Inputs are
//!   shifted to unsigned (`x + 128`; padding taps get `zp + 128`, i.e. a real zero), the GEMM
//!   computes `Σ w·(x + 128)` exactly in i32, and the per-channel constant
//!   `bias − (zp + 128)·Σw` is added before requantization. Dense weights run the direct kernel
//!   of [`narrow`] (16-channel blocks, no unfolding); the GEMM here, on the unfolded input in
//!   blocks of 32 output channels, runs block-pruned weights, whose all-zero 32 × 4 blocks it
//!   skips: the loops run block of 32 output channels outermost, so that block's weights
//!   (`k × 32` bytes) and the whole unfolded input stay in L1 while tiles of 8 pixels × 32
//!   channels (16 accumulator registers) sweep over it.
//! - **DEPTHWISE_CONV_2D** (multiplier 1) runs on `vpdpwssd`: two taps of 32 channels at a time,
//!   sign-extended to i16 and interleaved, against weights packed in the same order. The input is
//!   first copied into a buffer padded with `zp` (padding then contributes `w·zp`, which the
//!   per-channel constant `bias − zp·Σw` cancels), so no tap needs a bounds check.
//! - **Requantization** (`MultiplyByQuantizedMultiplier` with TFLite's two roundings, the zero
//!   point, the activation clamp) runs on 16 accumulators at a time in registers and stores int8
//!   directly: no i32 output tensor is written. The two roundings fold into one arithmetic
//!   shift of the 64-bit product (derivation at `requant16_i32`).
//! - Depthwise convolutions on at most 16 channels run [`narrow_dw`] (several pixels per
//!   vector).
//! - The hot loops load and store through `[u8; N]` dereferences (`x86::ld512`), not the
//!   `loadu` intrinsics, whose `copy_nonoverlapping` precondition checks would run in builds
//!   with debug assertions.
//!
//! Used when the CPU has AVX-512 F/BW/VL and VNNI ([`super::Cpu::avx512_vnni`]); otherwise the
//! portable kernels run. Dispatch follows the idiom of [`super`]: these `unsafe fn` are chosen
//! once, when an operator is prepared, through [`super::Tier`].

/// Per-output-channel requantization constants, padded with zeros to a multiple of 32 channels.
#[derive(Clone, Debug)]
pub(crate) struct Requant {
    multiplier: Vec<i32>,
    /// The multiplier of every odd channel moved to the even slot before it (what
    /// `_mm512_mul_epi32` reads), zeros in the odd slots.
    multiplier_odd: Vec<i32>,
    /// `max(shift, 0)`.
    left: Vec<i32>,
    /// `max(−shift, 0)`.
    right: Vec<i32>,
    /// `2^right − 1`.
    mask: Vec<i32>,
    /// `mask >> 1`.
    half: Vec<i32>,
    zero_point: i32,
    lo: i32,
    hi: i32,
    /// Both roundings as one (see `requant16_i32`), per block of 16 channels the 8 even
    /// channels' then the 8 odd channels' 64-bit constants: `2^30 + 2^(30 + right)` (`2^30`
    /// when `right` is 0)...
    round: Vec<i64>,
    /// ... `31 + right` ...
    total: Vec<i64>,
    /// ... and `2^31` (0 when `right` is 0), taken off negative products.
    negative: Vec<i64>,
    /// Whether some channel shifts left (multiplier above 1).
    any_left: bool,
    /// Whether the clamp sends every negative result to `lo` (`lo ≥ zero_point`, e.g. ReLU):
    /// negative products then need no exact rounding.
    floors_negatives: bool,
}

impl Requant {
    /// From TFLite's per-channel `(multiplier, shift)` (`shift` in −31..=30, as
    /// `quantize_multiplier` returns it), the output zero point and the activation range.
    pub(crate) fn new(multiplier: &[i32], shift: &[i32], zero_point: i32, act: [i32; 2]) -> Self {
        let n = multiplier.len().div_ceil(32) * 32;
        let pad = |v: Vec<i32>| {
            let mut v = v;
            v.resize(n, 0);
            v
        };
        let right = pad(shift.iter().map(|s| (-*s).clamp(0, 31)).collect());
        let mask: Vec<i32> = right.iter().map(|r| ((1i64 << r) - 1) as i32).collect();
        let multiplier = pad(multiplier.to_vec());
        let multiplier_odd = (0..n)
            .map(|i| if i % 2 == 0 { multiplier[i + 1] } else { 0 })
            .collect();
        let left = pad(shift.iter().map(|s| (*s).clamp(0, 31)).collect());
        // Channel order within each block of 16: even channels, then odd ones.
        let order = |f: &dyn Fn(i64) -> i64| -> Vec<i64> {
            (0..n)
                .map(|i| {
                    let (block, j) = (i / 16, i % 16);
                    let ch = block * 16 + if j < 8 { 2 * j } else { 2 * (j - 8) + 1 };
                    f(right[ch] as i64)
                })
                .collect()
        };
        Self {
            round: order(&|r| (1i64 << 30) + if r > 0 { 1i64 << (30 + r) } else { 0 }),
            total: order(&|r| 31 + r),
            negative: order(&|r| if r > 0 { 1i64 << 31 } else { 0 }),
            any_left: left.iter().any(|l| *l > 0),
            floors_negatives: act[0] >= zero_point,
            multiplier,
            multiplier_odd,
            left,
            right,
            half: mask.iter().map(|m| m >> 1).collect(),
            mask,
            zero_point,
            lo: act[0],
            hi: act[1],
        }
    }
}

/// Weights packed for the GEMM: `k = (fy, fx, i)` flattened and padded to a multiple of 4,
/// output channels padded to a multiple of 32, laid out `[k / 4][oc][4]`.
#[derive(Clone, Debug)]
pub(crate) struct Packed {
    /// `k` rounded up to 4.
    k4: usize,
    /// Output channels rounded up to 32.
    oc32: usize,
    w: Vec<i8>,
    /// `bias − (zp + 128)·Σw` per output channel, padded to `oc32`.
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
        let mut corr: Vec<i32> = (0..oc)
            .map(|o| bias[o].wrapping_sub((input_zp.wrapping_add(128)).wrapping_mul(sums[o])))
            .collect();
        corr.resize(oc32, 0);
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

impl Packed {
    /// Whether no block of 32 output channels × 4 `k` is all zeros (nothing for the GEMM to
    /// skip).
    pub(crate) fn is_dense(&self) -> bool {
        self.active.iter().all(|a| a.len() == self.k4 / 4)
    }
}

/// Depthwise weights (multiplier 1) packed for `vpdpwssd` / `vpmaddwd`: per block of `width`
/// channels (32 for AVX-512, 16 for AVX2) and pair of taps `(2j, 2j + 1)`, `2 · width` `i16` in
/// the order `unpacklo_epi16` / `unpackhi_epi16` interleave two taps' sign-extended inputs in
/// each 128-bit lane (an odd last tap is paired with a zero weight).
#[derive(Clone, Debug)]
pub(crate) struct DwPacked {
    /// Taps (`kh · kw`) rounded up to 2, halved.
    pairs: usize,
    /// Channels per block.
    width: usize,
    /// Channels rounded up to `width`.
    padded: usize,
    /// `[padded / width][pairs][2 · width]`.
    w: Vec<i16>,
    /// `bias − zp·Σw` per channel, padded to a multiple of 32.
    corr: Vec<i32>,
}

impl DwPacked {
    /// From `[kh · kw, c]` weights (TFLite's `[1, kh, kw, c]`), the int32 bias, the input
    /// zero point and the block width (32 or 16).
    pub(crate) fn new(
        w: &[i32],
        taps: usize,
        c: usize,
        bias: &[i32],
        input_zp: i32,
        width: usize,
    ) -> Self {
        let pairs = taps.div_ceil(2);
        let padded = c.div_ceil(width) * width;
        let at = |t: usize, ch: usize| -> i16 {
            if t < taps && ch < c {
                w[t * c + ch] as i16
            } else {
                0
            }
        };
        let mut packed = vec![0i16; padded / width * pairs * 2 * width];
        for cb in 0..padded / width {
            for j in 0..pairs {
                let dst = &mut packed[(cb * pairs + j) * 2 * width..][..2 * width];
                for lane in 0..width / 8 {
                    for i in 0..4 {
                        for (half, base) in [(0, 0), (width, 4)] {
                            let ch = cb * width + 8 * lane + base + i;
                            let d = half + 8 * lane + 2 * i;
                            dst[d] = at(2 * j, ch);
                            dst[d + 1] = at(2 * j + 1, ch);
                        }
                    }
                }
            }
        }
        let mut corr: Vec<i32> = (0..c)
            .map(|ch| {
                let sum = (0..taps).fold(0i32, |s, t| s.wrapping_add(w[t * c + ch]));
                bias[ch].wrapping_sub(input_zp.wrapping_mul(sum))
            })
            .collect();
        corr.resize(c.div_ceil(32) * 32, 0);
        Self {
            pairs,
            width,
            padded,
            w: packed,
            corr,
        }
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
#[inline(always)]
fn gather(g: &Geometry, x: &[i8], b: usize, oy: usize, ox: usize, col: &mut [u8]) {
    let [_, ih, iw, ic] = g.in_shape;
    let [kh, kw] = g.kernel;
    let pad = (g.input_zp + 128) as u8;
    let y0 = (oy * g.stride[0]) as isize - g.pad[0] as isize;
    let x0 = (ox * g.stride[1]) as isize - g.pad[1] as isize;
    // A filter row lies in one contiguous run of the input when its taps are adjacent and all
    // inside: copy it at once (e.g. DS-CNN's 10×4 stem on one input channel).
    let contiguous = g.dilation[1] == 1 && x0 >= 0 && x0 + kw as isize <= iw as isize;
    let mut at = 0;
    for fy in 0..kh {
        let y = y0 + (fy * g.dilation[0]) as isize;
        if y < 0 || y >= ih as isize {
            col[at..at + kw * ic].fill(pad);
            at += kw * ic;
            continue;
        }
        let row = &x[(g_row(g, b, y as usize))..][..iw * ic];
        if contiguous {
            copy_bytes(
                &mut col[at..at + kw * ic],
                &row[x0 as usize * ic..][..kw * ic],
                0x80,
            );
            at += kw * ic;
            continue;
        }
        for fx in 0..kw {
            let xx = x0 + (fx * g.dilation[1]) as isize;
            let dst = &mut col[at..at + ic];
            if xx < 0 || xx >= iw as isize {
                dst.fill(pad);
            } else {
                copy_bytes(dst, &row[xx as usize * ic..][..ic], 0x80);
            }
            at += ic;
        }
    }
    col[at..].fill(0);
}

/// [`gather`] every output pixel's inputs into the rows of `col` (`k4` bytes each, pixels in
/// order; rows past the last pixel are left as they are).
#[inline(always)]
fn unfold(g: &Geometry, x: &[i8], k4: usize, col: &mut [u8]) {
    let [nb, oh, ow, _] = g.out_shape;
    let mut rows = col.chunks_exact_mut(k4);
    for b in 0..nb {
        for oy in 0..oh {
            for ox in 0..ow {
                if let Some(dst) = rows.next() {
                    gather(g, x, b, oy, ox, dst);
                }
            }
        }
    }
}

/// The input of a depthwise convolution padded with its zero point to the rows and columns its
/// taps reach and to `cp` channels, in `buf` (grown as needed): returns it with its height and
/// width. Channels `c..cp` keep whatever `buf` held (their weights are 0).
fn pad_input<'a>(
    g: &Geometry,
    x: &[i8],
    cp: usize,
    buf: &'a mut Vec<u8>,
) -> (&'a [u8], usize, usize) {
    let [nb, ih, iw, c] = g.in_shape;
    let [_, oh, ow, _] = g.out_shape;
    let [kh, kw] = g.kernel;
    let (s, d) = (g.stride, g.dilation);
    let hp = (oh - 1) * s[0] + (kh - 1) * d[0] + 1;
    let wp = (ow - 1) * s[1] + (kw - 1) * d[1] + 1;
    let zp = g.input_zp as u8;
    let len = nb * hp * wp * cp;
    if buf.len() < len {
        buf.resize(len, 0);
    }
    let padded = &mut buf[..len];
    for b in 0..nb {
        for py in 0..hp {
            let row = &mut padded[(b * hp + py) * wp * cp..][..wp * cp];
            let Some(y) = py.checked_sub(g.pad[0]).filter(|y| *y < ih) else {
                row.fill(zp);
                continue;
            };
            for (px, dst) in row.chunks_exact_mut(cp).enumerate() {
                match px.checked_sub(g.pad[1]).filter(|xx| *xx < iw) {
                    Some(xx) => {
                        copy_bytes(&mut dst[..c], &x[((b * ih + y) * iw + xx) * c..][..c], 0);
                    }
                    None => dst.fill(zp),
                }
            }
        }
    }
    (padded, hp, wp)
}

/// Per pair of depthwise taps `(2j, 2j + 1)` (`j < pairs`), their offsets in the input padded
/// by [`pad_input`] (`wp` pixels of `cp` channels per row); the zero-weight partner of an odd
/// last tap gets offset 0 (any readable position).
fn tap_pairs(g: &Geometry, pairs: usize, wp: usize, cp: usize) -> Vec<[usize; 2]> {
    let [kh, kw] = g.kernel;
    let d = g.dilation;
    let offset = |t: usize| {
        if t >= kh * kw {
            0
        } else {
            ((t / kw) * d[0] * wp + (t % kw) * d[1]) * cp
        }
    };
    (0..pairs)
        .map(|j| [offset(2 * j), offset(2 * j + 1)])
        .collect()
}

/// `dst[i] = src[i] as u8 ^ flip` (`flip` 0x80: the unsigned form `x + 128` the GEMM reads), 16
/// bytes at a time: the short runs of a pixel's channels (16 to 64 bytes) would otherwise fall
/// to the scalar tail of the compiler's wide vector loop.
#[inline(always)]
fn copy_bytes(dst: &mut [u8], src: &[i8], flip: u8) {
    let n = dst.len().min(src.len());
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        // SAFETY: SSE2 is part of x86-64; every access is below `n` bytes of both slices.
        unsafe {
            let mask = _mm_set1_epi8(flip as i8);
            while done + 16 <= n {
                // Plain dereferences of `[u8; 16]` (alignment 1), as `x86::ld512` explains.
                let v: __m128i = std::mem::transmute(*(src.as_ptr().add(done) as *const [u8; 16]));
                *(dst.as_mut_ptr().add(done) as *mut [u8; 16]) =
                    std::mem::transmute::<__m128i, [u8; 16]>(_mm_xor_si128(v, mask));
                done += 16;
            }
        }
    }
    for (d, s) in dst[done..n].iter_mut().zip(&src[done..n]) {
        *d = (*s as u8) ^ flip;
    }
}

/// Offset of input row `(b, y)`.
#[inline(always)]
fn g_row(g: &Geometry, b: usize, y: usize) -> usize {
    let [_, ih, iw, ic] = g.in_shape;
    (b * ih + y) * iw * ic
}

type Pool<T> = std::thread::LocalKey<std::cell::RefCell<Vec<T>>>;

thread_local! {
    /// Memory the kernels reuse from call to call on one thread: the unfolded GEMM input, the
    /// padded depthwise input.
    static BYTES: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The unfolded GEMM input widened to i16 (AVX2 kernels).
    static WORDS: std::cell::RefCell<Vec<i16>> = const { std::cell::RefCell::new(Vec::new()) };
    /// FULLY_CONNECTED's int32 sums.
    static INTS: std::cell::RefCell<Vec<i32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// This thread's scratch memory, taken for one kernel call (at least `len` values, contents left
/// from earlier calls) and given back when dropped. A plain buffer rather than a closure, so the
/// kernels' loops stay inside their `target_feature` functions.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct Scratch<T: Copy + Default + 'static>(pub(crate) Vec<T>, &'static Pool<T>);

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl Scratch<u8> {
    fn bytes(len: usize) -> Self {
        Scratch::take(&BYTES, len)
    }
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl Scratch<i16> {
    fn words(len: usize) -> Self {
        Scratch::take(&WORDS, len)
    }
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl Scratch<i32> {
    pub(crate) fn ints(len: usize) -> Self {
        Scratch::take(&INTS, len)
    }
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl<T: Copy + Default + 'static> Scratch<T> {
    fn take(pool: &'static Pool<T>, len: usize) -> Self {
        let mut buf = pool.with(|cell| {
            cell.try_borrow_mut()
                .map(|mut b| std::mem::take(&mut *b))
                .unwrap_or_default()
        });
        if buf.len() < len {
            buf.resize(len, T::default());
        }
        Self(buf, pool)
    }
}

impl<T: Copy + Default + 'static> Drop for Scratch<T> {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        self.1.with(|cell| {
            if let Ok(mut b) = cell.try_borrow_mut()
                && b.len() < buf.len()
            {
                *b = buf;
            }
        });
    }
}

pub(crate) mod add;
pub(crate) mod avx2;
pub(crate) mod fc;
pub(crate) mod narrow;
pub(crate) mod narrow_dw;
pub(crate) mod palette;
pub(crate) mod sparse;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{DwPacked, Geometry, Packed, Requant, Scratch, pad_input, tap_pairs, unfold};
    use std::arch::x86_64::*;

    /// Unaligned loads and stores that compile to one instruction in every profile: the
    /// `loadu` / `storeu` intrinsics and `read_unaligned` go through `copy_nonoverlapping`,
    /// whose precondition checks run (in the hot loops) where debug assertions are on.
    /// `[u8; N]` has alignment 1, so dereferencing it is a plain unaligned access.
    ///
    /// # Safety
    /// `p` points to `N` readable (or writable) bytes.
    #[inline(always)]
    pub(in crate::kernels::vnni) unsafe fn ld512<T>(p: *const T) -> __m512i {
        // SAFETY: as documented above.
        unsafe { std::mem::transmute(*(p as *const [u8; 64])) }
    }

    /// See [`ld512`].
    #[inline(always)]
    pub(in crate::kernels::vnni) unsafe fn ld256<T>(p: *const T) -> __m256i {
        // SAFETY: as `ld512`.
        unsafe { std::mem::transmute(*(p as *const [u8; 32])) }
    }

    /// See [`ld512`].
    #[inline(always)]
    pub(in crate::kernels::vnni) unsafe fn ld128<T>(p: *const T) -> __m128i {
        // SAFETY: as `ld512`.
        unsafe { std::mem::transmute(*(p as *const [u8; 16])) }
    }

    /// The 4 bytes at `p` as an i32 (see [`ld512`]).
    #[inline(always)]
    pub(in crate::kernels::vnni) unsafe fn ld32<T>(p: *const T) -> i32 {
        // SAFETY: as `ld512`.
        unsafe { i32::from_ne_bytes(*(p as *const [u8; 4])) }
    }

    /// The 8 bytes at `p` as an i64 (see [`ld512`]).
    #[inline(always)]
    pub(in crate::kernels::vnni) unsafe fn ld64<T>(p: *const T) -> i64 {
        // SAFETY: as `ld512`.
        unsafe { i64::from_ne_bytes(*(p as *const [u8; 8])) }
    }

    /// Store 16 bytes at `p` (see [`ld512`]).
    #[inline(always)]
    pub(in crate::kernels::vnni) unsafe fn st128<T>(p: *mut T, v: __m128i) {
        // SAFETY: as `ld512`.
        unsafe { *(p as *mut [u8; 16]) = std::mem::transmute::<__m128i, [u8; 16]>(v) }
    }

    /// Pixels per GEMM tile: 8 rows × 32 channels = 16 accumulators.
    const ROWS: usize = 8;

    /// `clamp(MultiplyByQuantizedMultiplier(v) + zp)` of 16 channels starting at `at`, as int8
    /// (the same integers as `fixed::mbqm`).
    ///
    /// The doubling high multiply `(x·m + (x·m ≥ 0 ? 2^30 : 1 − 2^30)) / 2^31`, truncated toward
    /// zero, equals `⌊(x·m + 2^30) / 2^31⌋` for every product (both round ties up), so it is one
    /// add and one shift of the 64-bit product; multipliers are ≥ 0, so its saturating case
    /// (`i32::MIN · i32::MIN`) cannot occur.
    #[inline(always)]
    pub(in crate::kernels::vnni) unsafe fn requant16(
        v: __m512i,
        rq: &Requant,
        at: usize,
    ) -> __m128i {
        // SAFETY: as `requant16_i32`; the caller has AVX-512 F/BW.
        unsafe { _mm512_cvtepi32_epi8(requant16_i32(v, rq, at)) }
    }

    /// [`requant16`] before the narrowing: the 16 results as i32 (in `lo..=hi`).
    ///
    /// TFLite's two roundings fold into one shift of the exact 64-bit product `P = x·m`:
    /// `SRDHM` is `⌊(P + 2^30) / 2^31⌋` (see [`requant16`]) and `RoundingDivideByPOT(h, e)` is
    /// `⌊(h + 2^(e−1) − [h < 0]) / 2^e⌋` for `e ≥ 1`, and nested floors of divisions by powers of
    /// two are one floor, so the result is `(P + 2^30 + 2^(30+e) − [P < 0]·2^31) >> (31 + e)`.
    /// (`[h < 0]` may be read as `[P < 0]`: where they differ, `−2^30 ≤ P < 0`, both give 0.)
    /// When the clamp maps every negative result to `lo`, the `[P < 0]` term is dropped: a
    /// negative product then gives a result ≤ 0 either way.
    #[inline(always)]
    pub(in crate::kernels::vnni) unsafe fn requant16_i32(
        v: __m512i,
        rq: &Requant,
        at: usize,
    ) -> __m512i {
        // SAFETY: forwarded.
        unsafe { Rq16::new(rq, at).apply(v) }
    }

    /// The requantization constants of 16 channels in registers, for loops that requantize
    /// the same channels many times (loaded once instead of at every call).
    #[derive(Clone, Copy)]
    pub(in crate::kernels::vnni) struct Rq16 {
        multiplier: __m512i,
        multiplier_odd: __m512i,
        left: __m512i,
        round: [__m512i; 2],
        total: [__m512i; 2],
        negative: [__m512i; 2],
        zero_point: __m512i,
        lo: __m512i,
        hi: __m512i,
        any_left: bool,
        floors_negatives: bool,
    }

    impl Rq16 {
        /// Channels `at..at + 16` of `rq`.
        ///
        /// # Safety
        /// `at + 16` is within the constants (all padded to 32 channels, `at` a multiple of 16
        /// below the padded count), and the caller has AVX-512 F/BW.
        #[inline(always)]
        pub(in crate::kernels::vnni) unsafe fn new(rq: &Requant, at: usize) -> Self {
            // SAFETY: as documented.
            unsafe {
                let load = |v: &Vec<i32>| ld512(v.as_ptr().wrapping_add(at));
                let load64 =
                    |v: &Vec<i64>, half: usize| ld512(v.as_ptr().wrapping_add(at + 8 * half));
                Self {
                    multiplier: load(&rq.multiplier),
                    multiplier_odd: load(&rq.multiplier_odd),
                    left: load(&rq.left),
                    round: [load64(&rq.round, 0), load64(&rq.round, 1)],
                    total: [load64(&rq.total, 0), load64(&rq.total, 1)],
                    negative: [load64(&rq.negative, 0), load64(&rq.negative, 1)],
                    zero_point: _mm512_set1_epi32(rq.zero_point),
                    lo: _mm512_set1_epi32(rq.lo),
                    hi: _mm512_set1_epi32(rq.hi),
                    any_left: rq.any_left,
                    floors_negatives: rq.floors_negatives,
                }
            }
        }

        /// [`requant16_i32`] of `v`.
        #[inline(always)]
        pub(in crate::kernels::vnni) unsafe fn apply(&self, v: __m512i) -> __m512i {
            // SAFETY: register operations; the caller has AVX-512 F/BW.
            unsafe {
                let x = if self.any_left {
                    _mm512_sllv_epi32(v, self.left)
                } else {
                    v
                };
                let even = _mm512_mul_epi32(x, self.multiplier);
                let odd = _mm512_mul_epi32(_mm512_srli_epi64(x, 32), self.multiplier_odd);
                let mut te = _mm512_add_epi64(even, self.round[0]);
                let mut to = _mm512_add_epi64(odd, self.round[1]);
                if !self.floors_negatives {
                    let zero = _mm512_setzero_si512();
                    let (ne, no) = (
                        _mm512_cmplt_epi64_mask(even, zero),
                        _mm512_cmplt_epi64_mask(odd, zero),
                    );
                    te = _mm512_mask_sub_epi64(te, ne, te, self.negative[0]);
                    to = _mm512_mask_sub_epi64(to, no, to, self.negative[1]);
                }
                let re = _mm512_srav_epi64(te, self.total[0]);
                let ro = _mm512_srav_epi64(to, self.total[1]);
                // The low dword of each 64-bit result (it fits in i32), even and odd
                // interleaved.
                let idx =
                    _mm512_set_epi32(30, 14, 28, 12, 26, 10, 24, 8, 22, 6, 20, 4, 18, 2, 16, 0);
                let r = _mm512_permutex2var_epi32(re, idx, ro);
                let r = _mm512_add_epi32(r, self.zero_point);
                let r = _mm512_max_epi32(r, self.lo);
                _mm512_min_epi32(r, self.hi)
            }
        }

        /// [`requant16`] of `v`: the 16 results as int8.
        #[inline(always)]
        pub(in crate::kernels::vnni) unsafe fn apply8(&self, v: __m512i) -> __m128i {
            // SAFETY: as `apply`.
            unsafe { _mm512_cvtepi32_epi8(self.apply(v)) }
        }
    }

    /// Where channel `first + k` (k < 16) of a 32-channel depthwise block lies in its two
    /// `vpdpwssd` accumulators (`unpacklo` / `unpackhi` order): dword `k % 8 < 4` of the lo
    /// accumulator, else of hi, as `vpermt2d` indices.
    pub(in crate::kernels::vnni) fn dw_order(first: usize) -> [i32; 16] {
        let mut idx = [0i32; 16];
        for (k, v) in idx.iter_mut().enumerate() {
            let (lane, i) = ((first + k) / 8, (first + k) % 8);
            *v = if i < 4 {
                (4 * lane + i) as i32
            } else {
                (16 + 4 * lane + i - 4) as i32
            };
        }
        idx
    }

    /// Store 32 int8 channels (`lo` then `hi`) at `dst`, only the first `n` when `n < 32`.
    #[inline(always)]
    pub(in crate::kernels::vnni) unsafe fn store32(
        dst: *mut i8,
        lo: __m128i,
        hi: __m128i,
        n: usize,
    ) {
        // SAFETY: the caller owns `n` bytes at `dst`; the masked stores write no others.
        unsafe {
            if n >= 32 {
                st128(dst, lo);
                st128(dst.wrapping_add(16), hi);
            } else if n > 16 {
                st128(dst, lo);
                _mm_mask_storeu_epi8(dst.wrapping_add(16), (1u16 << (n - 16)) - 1, hi);
            } else {
                _mm_mask_storeu_epi8(dst, ((1u32 << n) - 1) as u16, lo);
            }
        }
    }

    /// A weight packing the GEMM drivers run ([`gemm`] for CONV_2D, `fc::x86::gemv_rows` for
    /// FULLY_CONNECTED): the dense [`Packed`], the palette and the N:M-sparse packings differ
    /// only in how a tile reads its weights.
    pub(in crate::kernels::vnni) trait Gemm {
        /// Bytes per unfolded input row: `k` padded to the packing's group of `k`.
        fn depth(&self) -> usize;
        /// Output channels rounded up to 32.
        fn oc32(&self) -> usize;
        /// One tile of `R` pixels (rows of `col` from `start`) × the 32 output channels at
        /// `ob`: accumulate, requantize, store the first `rows` pixels (see [`store_tile`]).
        ///
        /// # Safety
        /// The CPU has the packing's features; `col` holds at least `start + R` rows of
        /// `depth()` bytes, `ob + 32 ≤ oc32()`, `out` is `[pixels, oc]` with `start + rows ≤
        /// pixels`.
        #[allow(clippy::too_many_arguments)]
        unsafe fn tile<const R: usize>(
            &self,
            rq: &Requant,
            col: &[u8],
            start: usize,
            rows: usize,
            ob: usize,
            oc: usize,
            out: &mut [i8],
        );
        /// One row (`xu`: `depth()` unsigned inputs) × the `32·NB` units at `ob`: the sums plus
        /// the per-unit constant into `acc[ob..ob + 32·NB]` (see `fc::x86::store_sums`).
        ///
        /// # Safety
        /// The CPU has the packing's features; `xu` holds `depth()` bytes, `ob + 32·NB ≤
        /// oc32()`, `acc` holds `ob + 32·NB` values.
        unsafe fn tile_gemv<const NB: usize>(&self, xu: &[u8], ob: usize, acc: &mut [i32]);
    }

    /// The end of every GEMM tile: add the constants `corr` of the 32 channels at `ob` to the
    /// accumulators (`acc[2r]`, `acc[2r + 1]`: pixel `r`'s channels `ob..ob + 16` and `ob +
    /// 16..ob + 32`), requantize, and store the first `rows` of the `R` pixels into rows
    /// `start..` of `out` (`[pixels, oc]` int8).
    ///
    /// # Safety
    /// The caller has AVX-512 F/BW/VL; `corr` and `rq` hold `ob + 32` channels, `out` holds
    /// `start + rows` rows of `oc`, `ob < oc`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(in crate::kernels::vnni) unsafe fn store_tile<const R: usize>(
        acc: &[__m512i; 16],
        corr: &[i32],
        rq: &Requant,
        start: usize,
        rows: usize,
        ob: usize,
        oc: usize,
        out: &mut [i8],
    ) {
        // SAFETY: as documented: `min(32, oc − ob)` channels of `rows` rows of `out` are
        // written, 32 constants at `ob` read.
        unsafe {
            let c0 = ld512(corr.as_ptr().wrapping_add(ob));
            let c1 = ld512(corr.as_ptr().wrapping_add(ob + 16));
            // A loop of constant trip count, so the accumulators stay in registers.
            for r in 0..R {
                if r < rows {
                    let lo = requant16(_mm512_add_epi32(acc[2 * r], c0), rq, ob);
                    let hi = requant16(_mm512_add_epi32(acc[2 * r + 1], c1), rq, ob + 16);
                    store32(
                        out.as_mut_ptr().wrapping_add((start + r) * oc + ob),
                        lo,
                        hi,
                        oc - ob,
                    );
                }
            }
        }
    }

    impl Gemm for Packed {
        fn depth(&self) -> usize {
            self.k4
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
            // SAFETY: as the trait requires: every active `kg < k4 / 4`, the rows read are in
            // `col`, `store_tile` writes what it documents.
            unsafe {
                let mut acc = [_mm512_setzero_si512(); 16];
                let cols = col.as_ptr().wrapping_add(start * p.k4);
                let w = p.w.as_ptr().wrapping_add(ob * 4);
                for &kg in &p.active[ob / 32] {
                    let kg = kg as usize;
                    let base = w.wrapping_add(kg * p.oc32 * 4);
                    let w0 = ld512(base);
                    let w1 = ld512(base.wrapping_add(64));
                    for r in 0..R {
                        let xb = _mm512_set1_epi32(std::ptr::read_unaligned(
                            cols.wrapping_add(r * p.k4 + kg * 4) as *const i32,
                        ));
                        acc[2 * r] = _mm512_dpbusd_epi32(acc[2 * r], xb, w0);
                        acc[2 * r + 1] = _mm512_dpbusd_epi32(acc[2 * r + 1], xb, w1);
                    }
                }
                store_tile::<R>(&acc, &p.corr, rq, start, rows, ob, oc, out);
            }
        }

        #[inline(always)]
        unsafe fn tile_gemv<const NB: usize>(&self, xu: &[u8], ob: usize, acc: &mut [i32]) {
            // SAFETY: forwarded.
            unsafe { super::fc::x86::tile_vnni::<NB>(self, xu, ob, acc) }
        }
    }

    /// CONV_2D: unfold the input, GEMM against the packed weights, requantize into `out`
    /// (`[pixels, oc]` int8).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW, VL and VNNI ([`crate::kernels::Cpu::avx512_vnni`]); `x` and `out`
    /// must have the geometry's sizes, `p` and `rq` must be built for this convolution.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(crate) unsafe fn conv(g: &Geometry, p: &Packed, rq: &Requant, x: &[i8], out: &mut [i8]) {
        // SAFETY: forwarded.
        unsafe { gemm(g, p, rq, x, out) }
    }

    /// CONV_2D on any [`Gemm`] packing: unfold the input (rows of `depth()` bytes), run the
    /// packing's tiles over it, requantize into `out` (`[pixels, oc]` int8).
    ///
    /// # Safety
    /// As the packing's `conv`: the CPU has its features, `x` and `out` have the geometry's
    /// sizes, `p` and `rq` are built for this convolution.
    #[inline(always)]
    pub(in crate::kernels::vnni) unsafe fn gemm<P: Gemm>(
        g: &Geometry,
        p: &P,
        rq: &Requant,
        x: &[i8],
        out: &mut [i8],
    ) {
        let [nb, _, _, _] = g.in_shape;
        let [_, oh, ow, oc] = g.out_shape;
        let pixels = nb * oh * ow;
        let depth = p.depth();
        // `ROWS` spare rows: the last tile reads them (whatever they hold) and stores nothing
        // of theirs.
        let mut scratch = Scratch::bytes((pixels + ROWS) * depth);
        let col = &mut scratch.0[..(pixels + ROWS) * depth];
        unfold(g, x, depth, col);
        for ob in (0..p.oc32()).step_by(32) {
            let mut start = 0;
            // SAFETY: as `tile` requires: `col` has `ROWS` spare rows, `out` is `[pixels, oc]`.
            unsafe {
                while pixels - start >= ROWS {
                    p.tile::<ROWS>(rq, col, start, ROWS, ob, oc, out);
                    start += ROWS;
                }
                let rest = pixels - start;
                if rest > 4 {
                    p.tile::<ROWS>(rq, col, start, rest, ob, oc, out);
                } else if rest > 2 {
                    p.tile::<4>(rq, col, start, rest, ob, oc, out);
                } else if rest > 0 {
                    p.tile::<2>(rq, col, start, rest, ob, oc, out);
                }
            }
        }
    }

    /// Depthwise convolution, channel multiplier 1, into `out` (`[pixels, c]` int8).
    ///
    /// # Safety
    /// As [`conv`], with `p` built by [`DwPacked::new`] for this convolution.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(crate) unsafe fn depthwise(
        g: &Geometry,
        p: &DwPacked,
        rq: &Requant,
        x: &[i8],
        out: &mut [i8],
    ) {
        // Specialised copies for the common tap counts (3×3 → 5 pairs), so the weights and the
        // tap loop are fixed at compile time.
        debug_assert_eq!(p.width, 32);
        // SAFETY: forwarded.
        unsafe {
            match p.pairs {
                5 => depthwise_impl(g, p, rq, x, out, 5),
                2 => depthwise_impl(g, p, rq, x, out, 2),
                13 => depthwise_impl(g, p, rq, x, out, 13),
                n => depthwise_impl(g, p, rq, x, out, n),
            }
        }
    }

    #[inline(always)]
    unsafe fn depthwise_impl(
        g: &Geometry,
        p: &DwPacked,
        rq: &Requant,
        x: &[i8],
        out: &mut [i8],
        pairs: usize,
    ) {
        let mut scratch = Scratch::bytes(0);
        let (padded, hp, wp) = pad_input(g, x, p.padded, &mut scratch.0);
        // SAFETY: forwarded.
        unsafe { depthwise_loop(g, p, rq, padded, out, pairs, [hp, wp]) }
    }

    /// The depthwise loop over the padded input (`[nb, hp, wp, c32]`), requantized into `out`.
    #[inline(always)]
    unsafe fn depthwise_loop(
        g: &Geometry,
        p: &DwPacked,
        rq: &Requant,
        padded: &[u8],
        out: &mut [i8],
        pairs: usize,
        [hp, wp]: [usize; 2],
    ) {
        let [nb, _, _, c] = g.in_shape;
        let [_, oh, ow, _] = g.out_shape;
        let s = g.stride;
        let c32 = p.padded;
        let taps = tap_pairs(g, pairs, wp, c32);
        let (i0, i1) = (dw_order(0), dw_order(16));
        // SAFETY: every tap of every output pixel lies inside `padded` (its size follows from
        // the output geometry), each block reads 32 channels of `c32`, and `store32` writes
        // `min(32, c − cb·32)` channels of the pixel's row in `out`.
        unsafe {
            let i0 = ld512(i0.as_ptr());
            let i1 = ld512(i1.as_ptr());
            let src = padded.as_ptr() as *const i8;
            for cb in 0..c32 / 32 {
                let w = p.w.as_ptr().wrapping_add(cb * pairs * 64);
                let c0 = ld512(p.corr.as_ptr().wrapping_add(cb * 32));
                let c1 = ld512(p.corr.as_ptr().wrapping_add(cb * 32 + 16));
                let (r0, r1) = (Rq16::new(rq, cb * 32), Rq16::new(rq, cb * 32 + 16));
                let step = s[1] * c32;
                for b in 0..nb {
                    for oy in 0..oh {
                        let row = src.wrapping_add((b * hp + oy * s[0]) * wp * c32 + cb * 32);
                        let dst = out
                            .as_mut_ptr()
                            .wrapping_add((b * oh + oy) * ow * c + cb * 32);
                        for ox in 0..ow {
                            // Wrapping arithmetic: no overflow checks in the pixel loop.
                            let base = row.wrapping_add(ox.wrapping_mul(step));
                            let mut lo = _mm512_setzero_si512();
                            let mut hi = _mm512_setzero_si512();
                            for (j, [t0, t1]) in taps.iter().enumerate().take(pairs) {
                                let a = _mm512_cvtepi8_epi16(ld256(base.wrapping_add(*t0)));
                                let bb = _mm512_cvtepi8_epi16(ld256(base.wrapping_add(*t1)));
                                let wl = ld512(w.wrapping_add(j * 64));
                                let wh = ld512(w.wrapping_add(j * 64 + 32));
                                lo = _mm512_dpwssd_epi32(lo, _mm512_unpacklo_epi16(a, bb), wl);
                                hi = _mm512_dpwssd_epi32(hi, _mm512_unpackhi_epi16(a, bb), wh);
                            }
                            let v0 = _mm512_add_epi32(_mm512_permutex2var_epi32(lo, i0, hi), c0);
                            let v1 = _mm512_add_epi32(_mm512_permutex2var_epi32(lo, i1, hi), c1);
                            let (q0, q1) = (r0.apply8(v0), r1.apply8(v1));
                            store32(dst.wrapping_add(ox.wrapping_mul(c)), q0, q1, c - cb * 32);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{conv, depthwise};

/// Random convolutions for the kernels' property tests (the parts the CONV_2D and depthwise
/// cases share).
#[cfg(all(test, target_arch = "x86_64"))]
pub(crate) mod test_cases {
    use super::Geometry;
    use crate::fixed::quantize_multiplier;

    /// A xorshift stream from `seed`: each call draws from `lo..=hi`.
    pub(crate) fn draws(seed: u64) -> impl FnMut(i32, i32) -> i32 {
        let mut r = seed | 1;
        move |lo: i32, hi: i32| {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            lo + (r % (hi - lo + 1) as u64) as i32
        }
    }

    /// A convolution of input `in_shape` to `oc` channels with `kernel` `(kh, kw)`, `stride`
    /// `(sy, sx)` and dilation `d` on both axes: SAME padding when `same`, else VALID; the
    /// input zero point drawn from `next`.
    pub(crate) fn geometry(
        in_shape: [usize; 4],
        oc: usize,
        kernel: (usize, usize),
        (sy, sx): (usize, usize),
        d: usize,
        same: bool,
        next: &mut impl FnMut(i32, i32) -> i32,
    ) -> Geometry {
        let [nb, ih, iw, _] = in_shape;
        let out = |size: usize, k: usize, st: usize| {
            if same {
                size.div_ceil(st)
            } else {
                (size - (k - 1) * d - 1) / st + 1
            }
        };
        let (oh, ow) = (out(ih, kernel.0, sy), out(iw, kernel.1, sx));
        let pad = |size: usize, k: usize, o: usize, st: usize| {
            if same {
                ((o - 1) * st + (k - 1) * d + 1).saturating_sub(size) / 2
            } else {
                0
            }
        };
        Geometry {
            in_shape,
            out_shape: [nb, oh, ow, oc],
            kernel: [kernel.0, kernel.1],
            stride: [sy, sx],
            dilation: [d, d],
            pad: [pad(ih, kernel.0, oh, sy), pad(iw, kernel.1, ow, sx)],
            input_zp: next(-128, 127),
        }
    }

    /// Per-channel parameters of `n` output channels, drawn from `next` in this order: the
    /// bias, the `(multiplier, shift)` of `scale` times 0.02 to 2, then the output zero point;
    /// with the activation range (ReLU when `relu`).
    #[allow(clippy::type_complexity)]
    pub(crate) fn channels(
        n: usize,
        scale: f64,
        relu: bool,
        next: &mut impl FnMut(i32, i32) -> i32,
    ) -> (Vec<i32>, Vec<(i32, i32)>, i32, [i32; 2]) {
        let bias = (0..n).map(|_| next(-5000, 5000)).collect();
        let m = (0..n)
            .map(|_| quantize_multiplier(scale * next(1, 100) as f64 / 50.0))
            .collect();
        let zp = next(-128, 127);
        let act = if relu {
            [zp.max(-128), 127]
        } else {
            [-128, 127]
        };
        (bias, m, zp, act)
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::Requant;
    use crate::fixed::mbqm;
    use proptest::prelude::*;

    /// `requant16` on 32 channels (two blocks of 16) against `clamp(mbqm(x) + zp)`.
    fn check(x: &[i32; 32], m: &[i32; 32], shift: &[i32; 32], zp: i32, act: [i32; 2]) {
        let rq = Requant::new(m, shift, zp, act);
        for at in [0, 16] {
            let mut got = [0i32; 16];
            // SAFETY: the CPU has AVX-512 F/BW (checked by the callers); 16 lanes in and out.
            unsafe {
                use std::arch::x86_64::*;
                let v = _mm512_loadu_si512(x.as_ptr().add(at) as *const __m512i);
                let r = super::x86::requant16_i32(v, &rq, at);
                _mm512_storeu_si512(got.as_mut_ptr() as *mut __m512i, r);
            }
            for (j, g) in got.iter().enumerate() {
                let c = at + j;
                let want = (mbqm(x[c], m[c], shift[c]).wrapping_add(zp)).clamp(act[0], act[1]);
                assert_eq!(
                    *g, want,
                    "x {} m {} shift {} zp {zp} act {act:?}",
                    x[c], m[c], shift[c]
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Register requantization equals TFLite's two-rounding `MultiplyByQuantizedMultiplier`
        /// (then the zero point and clamp) for any input, multiplier ≥ 0 and shift, with and
        /// without a clamp that floors negatives (ReLU) and with left shifts.
        #[test]
        fn requant16_equals_mbqm(
            x in prop::array::uniform32(any::<i32>()),
            small in prop::array::uniform32(-70000i32..70000),
            m in prop::array::uniform32(0i32..=i32::MAX),
            shift in prop::array::uniform32(-31i32..=30),
            zp in -128i32..=127,
            relu in any::<bool>(),
        ) {
            prop_assume!(crate::kernels::cpu().avx512_vnni);
            let act = if relu { [zp.max(-128), 127] } else { [-128, 127] };
            let unbounded = [i32::MIN, i32::MAX];
            let right: [i32; 32] = shift.map(|s| s.min(0));
            for x in [&x, &small] {
                check(x, &m, &right, zp, act);
                check(x, &m, &shift, zp, act);
                check(x, &m, &right, 0, unbounded);
            }
        }
    }

    /// The extremes: `i32::MIN` / `MAX` inputs, half-way remainders, shifts 0 and −31.
    #[test]
    fn requant16_edges() {
        if !crate::kernels::cpu().avx512_vnni {
            return;
        }
        let xs = [
            i32::MIN,
            i32::MIN + 1,
            -1,
            0,
            1,
            i32::MAX,
            1 << 30,
            -(1 << 30),
            3,
            -3,
        ];
        let ms = [0, 1, 1 << 30, i32::MAX, (1 << 30) + 1];
        for shift in [-31, -30, -1, 0, 1, 30] {
            for (i, x0) in xs.iter().enumerate() {
                let x: [i32; 32] =
                    std::array::from_fn(|j| x0.wrapping_add((j as i32) - 16 * (i as i32 % 2)));
                let m: [i32; 32] = std::array::from_fn(|j| ms[j % ms.len()]);
                for (zp, act) in [
                    (0, [i32::MIN, i32::MAX]),
                    (-128, [-128, 127]),
                    (5, [5, 127]),
                ] {
                    check(&x, &m, &[shift; 32], zp, act);
                }
            }
        }
    }
}
