//! The pooling loops over NHWC int8: MAX_POOL_2D and AVERAGE_POOL_2D share one window walk
//! ([`pool`]); channels are the inner loop, so the compiler vectorises them (AVERAGE_POOL_2D is
//! compiled for AVX-512 and AVX2 too, chosen through [`super::cpu()`]).

use super::multiversion;

/// One pooling window of an NHWC input: the output pixel it makes and the input pixels it
/// covers, clipped to the input (padded cells are in no window).
struct Window<'a> {
    x: &'a [i8],
    /// First input pixel of the batch, `b · ih · iw`.
    image: usize,
    /// `[iw, ch]`: input width and channels.
    dims: [usize; 2],
    /// The window's top-left corner in input coordinates (negative inside the padding).
    origin: [isize; 2],
    /// Window rows and columns inside the input, relative to `origin`.
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
}

impl<'a> Window<'a> {
    /// Input pixels the window covers.
    fn count(&self) -> i32 {
        (self.rows.len() * self.cols.len()) as i32
    }

    /// Each covered input pixel's channels, `[ch]`, row by row.
    fn pixels(&self) -> impl Iterator<Item = &'a [i8]> + '_ {
        let [iw, ch] = self.dims;
        self.rows.clone().flat_map(move |fy| {
            let y = (self.origin[0] + fy as isize) as usize;
            self.cols.clone().map(move |fx| {
                let xx = (self.origin[1] + fx as isize) as usize;
                &self.x[((self.image + y * iw) + xx) * ch..][..ch]
            })
        })
    }
}

/// What a pooling operator over NHWC int8 works on: its geometry and activation range (the
/// parameters MAX_POOL_2D and AVERAGE_POOL_2D share).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PoolShape {
    /// Input `[nb, ih, iw, ch]`.
    pub(crate) in_shape: [usize; 4],
    /// Output `[nb, oh, ow, ch]`.
    pub(crate) out_shape: [usize; 4],
    /// Window `[height, width]`.
    pub(crate) filter: [usize; 2],
    /// `[y, x]` steps between windows.
    pub(crate) stride: [usize; 2],
    /// Padding before (top, left).
    pub(crate) pad: [usize; 2],
    /// The fused activation's clamp, `[lo, hi]`.
    pub(crate) act: [i32; 2],
}

/// A pooling operator over NHWC int8 `x`: `reduce(window, out)` writes each output pixel's
/// `[ch]` values from its window. The one window walk MAX_POOL_2D and AVERAGE_POOL_2D share.
#[inline(always)]
fn pool(x: &[i8], s: &PoolShape, mut reduce: impl FnMut(&Window, &mut [i8])) -> Vec<i8> {
    let PoolShape {
        in_shape,
        out_shape,
        filter,
        stride,
        pad,
        ..
    } = *s;
    let [nb, ih, iw, ch] = in_shape;
    let [_, oh, ow, _] = out_shape;
    let mut out = vec![0i8; nb * oh * ow * ch];
    let clip = |origin: isize, k: usize, size: usize| {
        (-origin).max(0) as usize..(k as isize).min(size as isize - origin).max(0) as usize
    };
    for b in 0..nb {
        for oy in 0..oh {
            for ox in 0..ow {
                let y0 = (oy * stride[0]) as isize - pad[0] as isize;
                let x0 = (ox * stride[1]) as isize - pad[1] as isize;
                let window = Window {
                    x,
                    image: b * ih * iw,
                    dims: [iw, ch],
                    origin: [y0, x0],
                    rows: clip(y0, filter[0], ih),
                    cols: clip(x0, filter[1], iw),
                };
                reduce(&window, &mut out[((b * oh + oy) * ow + ox) * ch..][..ch]);
            }
        }
    }
    out
}

/// MAX_POOL_2D over NHWC int8 (padded cells are not part of any window), clamped to `act`.
pub(crate) fn max_pool(x: &[i8], s: &PoolShape) -> Vec<i8> {
    let act = s.act;
    pool(x, s, |window, o| {
        o.fill(i8::MIN);
        for px in window.pixels() {
            for (o, v) in o.iter_mut().zip(px) {
                *o = (*o).max(*v);
            }
        }
        for o in o.iter_mut() {
            *o = (*o as i32).clamp(act[0], act[1]) as i8;
        }
    })
}

multiversion! {
    /// AVERAGE_POOL_2D: the window's sum per channel (padding excluded from the count),
    /// divided rounding half away from zero, clamped.
    pub(crate) fn avg_pool(x: &[i8], s: &PoolShape) -> Vec<i8> = avg_pool_impl;
}

#[inline(always)]
fn avg_pool_impl(x: &[i8], s: &PoolShape) -> Vec<i8> {
    let (act, mut acc) = (s.act, vec![0i32; s.in_shape[3]]);
    pool(x, s, |window, o| {
        acc.fill(0);
        for px in window.pixels() {
            for (a, v) in acc.iter_mut().zip(px) {
                *a = a.wrapping_add(*v as i32);
            }
        }
        let count = window.count();
        for (o, a) in o.iter_mut().zip(&acc) {
            let v = if count == 0 {
                0
            } else if *a > 0 {
                (a + count / 2) / count
            } else {
                (a - count / 2) / count
            };
            *o = v.clamp(act[0], act[1]) as i8;
        }
    })
}
