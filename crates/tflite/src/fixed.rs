//! TFLite's fixed-point arithmetic (gemmlowp), bit for bit.
//!
//! Everything here reproduces the integer semantics of TFLite's reference kernels
//! (`tensorflow/lite/kernels/internal/common.h`, default double rounding) and gemmlowp's
//! `fixedpoint.h`: C++ integer division truncates toward zero, as Rust's does.

/// `frexp`: `x = m · 2^e` with `|m|` in `[0.5, 1)` (0 → `(0, 0)`).
pub fn frexp(x: f64) -> (f64, i32) {
    if x == 0.0 || !x.is_finite() {
        return (x, 0);
    }
    let bits = x.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    if exp == 0 {
        // Subnormal: scale into the normal range first.
        let (m, e) = frexp(x * 2f64.powi(64));
        return (m, e - 64);
    }
    let m = f64::from_bits((bits & !(0x7ff << 52)) | (1022 << 52));
    (m, exp - 1022)
}

/// TFLite's `QuantizeMultiplier`: a real multiplier as a Q31 significand and a power-of-two
/// shift (positive = left), `m ≈ significand · 2^(shift − 31)`.
pub fn quantize_multiplier(m: f64) -> (i32, i32) {
    if m == 0.0 || !m.is_finite() {
        return (0, 0);
    }
    let (q, mut shift) = frexp(m);
    let mut q_fixed = (q * (1u64 << 31) as f64).round() as i64;
    if q_fixed == 1 << 31 {
        q_fixed /= 2;
        shift += 1;
    }
    if shift < -31 {
        shift = 0;
        q_fixed = 0;
    }
    if shift > 30 {
        shift = 30;
        q_fixed = (1 << 31) - 1;
    }
    (q_fixed as i32, shift)
}

/// gemmlowp `SaturatingRoundingDoublingHighMul`.
#[inline(always)]
pub fn srdhm(a: i32, b: i32) -> i32 {
    if a == i32::MIN && b == i32::MIN {
        return i32::MAX;
    }
    let ab = a as i64 * b as i64;
    let nudge = if ab >= 0 { 1 << 30 } else { 1 - (1 << 30) };
    ((ab + nudge) / (1i64 << 31)) as i32
}

/// gemmlowp `RoundingDivideByPOT` (round half away from zero), `exponent` in 0..=31.
#[inline(always)]
pub fn rdbpot(x: i32, exponent: i32) -> i32 {
    let mask = ((1i64 << exponent) - 1) as i32;
    let remainder = x & mask;
    let threshold = (mask >> 1) + i32::from(x < 0);
    (x >> exponent) + i32::from(remainder > threshold)
}

/// TFLite's `MultiplyByQuantizedMultiplier`.
#[inline(always)]
pub fn mbqm(x: i32, multiplier: i32, shift: i32) -> i32 {
    let left = shift.max(0);
    let right = (-shift).max(0);
    rdbpot(srdhm(x.wrapping_mul(1 << left), multiplier), right)
}

/// `MultiplyByQuantizedMultiplier` with one rounding (`(x·m + 2^(30−shift)) >> (31 − shift)` in
/// 64 bits): what LiteRT's reference FULLY_CONNECTED kernel computes for int8, where TFLite
/// Micro (and every convolution) uses the two-step [`mbqm`]. They differ by 1 when the two-step
/// version rounds twice across a half.
#[inline(always)]
pub fn mbqm_single(x: i32, multiplier: i32, shift: i32) -> i32 {
    let total = (31 - shift).clamp(1, 62);
    let round = 1i64 << (total - 1);
    ((x as i64 * multiplier as i64 + round) >> total) as i32
}

/// gemmlowp `SaturatingRoundingMultiplyByPOT` with a positive exponent (saturating shift).
#[inline(always)]
fn sat_shl(x: i32, exponent: i32) -> i32 {
    if exponent == 0 {
        return x;
    }
    let threshold = (1i32 << (31 - exponent)) - 1;
    if x > threshold {
        i32::MAX
    } else if x < -threshold {
        i32::MIN
    } else {
        x << exponent
    }
}

/// gemmlowp `exp_on_interval_between_negative_one_quarter_and_0_excl`, Q0.31 in and out.
fn exp_on_interval(a: i32) -> i32 {
    const CONSTANT_TERM: i32 = 1_895_147_668; // exp(−1/8)
    const ONE_THIRD: i32 = 715_827_883;
    let x = a.wrapping_add(1 << 28);
    let x2 = srdhm(x, x);
    let x3 = srdhm(x2, x);
    let x4 = srdhm(x2, x2);
    let x4_over_4 = rdbpot(x4, 2);
    let poly = rdbpot(
        srdhm(x4_over_4.wrapping_add(x3), ONE_THIRD).wrapping_add(x2),
        1,
    );
    CONSTANT_TERM.wrapping_add(srdhm(CONSTANT_TERM, x.wrapping_add(poly)))
}

/// gemmlowp `exp_on_negative_values` for a Q5.26 input (`a ≤ 0`), Q0.31 result.
pub fn exp_on_negative_values_q5(a: i32) -> i32 {
    exp_on_negative_values(a, 5)
}

/// gemmlowp `exp_on_negative_values` for an input (`a ≤ 0`) with `integer_bits` integer bits
/// (Q`integer_bits`.`31 − integer_bits`, `integer_bits` in 0..=5), Q0.31 result.
pub fn exp_on_negative_values(a: i32, integer_bits: i32) -> i32 {
    debug_assert!((0..=5).contains(&integer_bits));
    let fractional_bits = 31 - integer_bits;
    let one_quarter = 1i32 << (fractional_bits - 2);
    let mask = one_quarter - 1;
    let a_mod_quarter_minus_one_quarter = (a & mask).wrapping_sub(one_quarter);
    // Rescale to Q0.31: a saturating shift left by the integer bits.
    let mut result = exp_on_interval(sat_shl(a_mod_quarter_minus_one_quarter, integer_bits));
    let remainder = a_mod_quarter_minus_one_quarter.wrapping_sub(a);
    for (exponent, multiplier) in [
        (-2, 1_672_461_947),
        (-1, 1_302_514_674),
        (0, 790_015_084),
        (1, 290_630_308),
        (2, 39_332_535),
        (3, 720_401),
        (4, 242),
    ] {
        if integer_bits > exponent && remainder & (1 << (fractional_bits + exponent)) != 0 {
            result = srdhm(result, multiplier);
        }
    }
    if a == 0 { i32::MAX } else { result }
}

/// The Newton-Raphson iteration gemmlowp's `one_over_one_plus_x_for_x_in_0_1` and
/// `one_minus_x_over_one_plus_x_for_x_in_0_1` share: `1 / (1 + a)` as Q2.29, for a Q0.31 `a`.
fn newton_one_over_one_plus_x(a: i32) -> i32 {
    // RoundingHalfSum(a, One) with One = i32::MAX for Q0.31.
    let sum = a as i64 + i32::MAX as i64;
    let sign = if sum >= 0 { 1 } else { -1 };
    let half_denominator = ((sum + sign) / 2) as i32;
    const C48_17: i32 = 1_515_870_810; // Q2.29
    const CNEG32_17: i32 = -1_010_580_540; // Q2.29
    let mut x = C48_17.wrapping_add(srdhm(half_denominator, CNEG32_17));
    const ONE_Q2: i32 = 1 << 29;
    for _ in 0..3 {
        let half_denominator_times_x = srdhm(half_denominator, x);
        let one_minus = ONE_Q2.wrapping_sub(half_denominator_times_x);
        // Q2 · Q2 = Q4, rescaled to Q2: saturating shift left by 2.
        x = x.wrapping_add(sat_shl(srdhm(x, one_minus), 2));
    }
    x
}

/// gemmlowp `one_over_one_plus_x_for_x_in_0_1`, Q0.31 in and out.
fn one_over_one_plus_x(a: i32) -> i32 {
    // ExactMulByPot<−1> (Q2 → Q1, same raw), then Rescale<0>: saturating shift left by 1.
    sat_shl(newton_one_over_one_plus_x(a), 1)
}

/// gemmlowp `one_minus_x_over_one_plus_x_for_x_in_0_1`, Q0.31 in and out.
fn one_minus_x_over_one_plus_x(a: i32) -> i32 {
    // x − One (Q2.29), then Rescale<0>: saturating shift left by 2.
    sat_shl(newton_one_over_one_plus_x(a).wrapping_sub(1 << 29), 2)
}

/// gemmlowp `logistic` of a fixed-point `a` with `integer_bits` integer bits (0..=5): Q0.31.
pub fn logistic(a: i32, integer_bits: i32) -> i32 {
    if a == 0 {
        return 1 << 30;
    }
    let abs = if a > 0 { a } else { a.wrapping_neg() };
    let positive = one_over_one_plus_x(exp_on_negative_values(abs.wrapping_neg(), integer_bits));
    if a > 0 {
        positive
    } else {
        i32::MAX.wrapping_sub(positive)
    }
}

/// gemmlowp `tanh` of a fixed-point `a` with `integer_bits` integer bits (0..=4): Q0.31.
pub fn tanh(a: i32, integer_bits: i32) -> i32 {
    if a == 0 {
        return 0;
    }
    let negative = if a < 0 { a } else { a.wrapping_neg() };
    // ExactMulByPot<1>: 2·x is the same raw value read with one more integer bit.
    let t = one_minus_x_over_one_plus_x(exp_on_negative_values(negative, integer_bits + 1));
    if a < 0 { t.wrapping_neg() } else { t }
}

/// gemmlowp `SaturatingRoundingDoublingHighMul` for int16.
#[inline(always)]
pub fn srdhm16(a: i16, b: i16) -> i16 {
    if a == i16::MIN && b == i16::MIN {
        return i16::MAX;
    }
    let ab = a as i32 * b as i32;
    let nudge = if ab >= 0 { 1 << 14 } else { 1 - (1 << 14) };
    ((ab + nudge) / (1 << 15)) as i16
}

/// TFLite's `SaturatingDoublingHighMul` for int16 (hard_swish.h): as [`srdhm16`] but rounding
/// toward zero.
#[inline(always)]
pub fn sdhm16(a: i16, b: i16) -> i16 {
    if a == i16::MIN && b == i16::MIN {
        return i16::MAX;
    }
    ((a as i32 * b as i32) / (1 << 15)) as i16
}

/// gemmlowp `RoundingDivideByPOT` for int16, `exponent` in 0..=31 (the mask is the low 16 bits
/// of `2^exponent − 1`, as the C++ computes it).
#[inline(always)]
pub fn rdbpot16(x: i16, exponent: i32) -> i16 {
    let mask = ((1i64 << exponent) - 1) as i16;
    let remainder = x & mask;
    let threshold = (mask >> 1).wrapping_add(i16::from(x < 0));
    let shifted = ((x as i32) >> exponent.min(31)) as i16;
    shifted.wrapping_add(i16::from(remainder > threshold))
}

/// TFLite's `SaturatingLeftShift` for int16 (hard_swish.h), `amount` in 0..=30.
#[inline(always)]
pub fn sat_shl16(x: i16, amount: i32) -> i16 {
    (x as i64 * (1i64 << amount)).clamp(i16::MIN as i64, i16::MAX as i64) as i16
}

/// TFLite's `DownScaleInt32ToInt16Multiplier`: a Q31 multiplier (≥ 0) rounded to Q15.
pub fn downscale_multiplier(m: i32) -> i16 {
    const ROUNDING: i32 = 1 << 15;
    if m >= i32::MAX - ROUNDING {
        return i16::MAX;
    }
    ((m + ROUNDING) >> 16) as i16
}

/// TFLite's `GetReciprocal`: `1 / x` for a fixed-point `x` with `integer_digits` integer bits,
/// as a Q0.31 value and the number of bits the true value lies above 1.
pub fn reciprocal(x: i32, integer_digits: i32) -> (i32, i32) {
    let headroom_plus_one = (x as u32).leading_zeros() as i32;
    let num_bits_over_unit = integer_digits - headroom_plus_one;
    let shifted_sum_minus_one =
        ((x as u32).wrapping_shl(headroom_plus_one as u32)).wrapping_sub(1 << 31) as i32;
    (
        one_over_one_plus_x(shifted_sum_minus_one),
        num_bits_over_unit,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frexp_matches_the_definition() {
        for x in [1.0, 0.5, 0.75, 3.0, 1e-7, 123456.789, 2f64.powi(-1040)] {
            let (m, e) = frexp(x);
            assert!((0.5..1.0).contains(&m), "{x}: {m}");
            assert_eq!(m * 2f64.powi(e + 100), x * 2f64.powi(100));
        }
    }

    #[test]
    fn multiplier_round_trips() {
        for m in [0.000_123, 0.25, 0.5, 0.999_999_999_9, 1.0, 1.5, 17.0] {
            let (q, shift) = quantize_multiplier(m);
            let back = q as f64 * 2f64.powi(shift - 31);
            assert!(
                (back - m).abs() <= m * 1e-9,
                "{m} → {q} << {shift} = {back}"
            );
            // Applying it to an integer rounds the real product.
            for x in [-1000, -3, 0, 7, 12345] {
                let got = mbqm(x, q, shift);
                let want = (x as f64 * m).round();
                assert!((got as f64 - want).abs() <= 1.0, "{x}·{m}: {got} vs {want}");
            }
        }
        assert_eq!(quantize_multiplier(0.0), (0, 0));
    }

    #[test]
    fn rounding_divide_rounds_half_away_from_zero() {
        assert_eq!(rdbpot(5, 1), 3);
        assert_eq!(rdbpot(-5, 1), -3);
        assert_eq!(rdbpot(4, 1), 2);
        assert_eq!(rdbpot(-4, 1), -2);
        assert_eq!(rdbpot(7, 2), 2);
        assert_eq!(rdbpot(-7, 2), -2);
        assert_eq!(rdbpot(i32::MIN, 31), -1);
    }

    #[test]
    fn exp_and_reciprocal_are_accurate() {
        for v in [0.0, -0.01, -0.3, -1.0, -2.5, -7.9, -20.0, -31.9] {
            let raw = (v * (1u64 << 26) as f64) as i32;
            let got = exp_on_negative_values_q5(raw) as f64 / 2f64.powi(31);
            assert!((got - f64::exp(v)).abs() < 1e-6, "exp({v}) = {got}");
        }
        for v in [1.0f64, 1.5, 3.0, 100.0, 2000.0] {
            let raw = (v * 2f64.powi(19)) as i32; // Q12.19
            let (r, bits) = reciprocal(raw, 12);
            let got = r as f64 / 2f64.powi(31) / 2f64.powi(bits);
            assert!((got - 1.0 / v).abs() < 1e-6 / v, "1/{v} = {got}");
        }
    }
}
