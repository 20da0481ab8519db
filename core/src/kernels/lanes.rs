//! The fused kernels' loops, one value or four at a time.
//!
//! Natively the kernels' loops are plain `f32` code that the compiler vectorises (16 lanes
//! with AVX-512, through `widest_simd`). The browser's release build is optimised for size
//! (`opt-level = "z"`), at which rustc runs no vectoriser at all, so there the loops would run
//! one value at a time. Each loop here therefore takes its arithmetic twice from one
//! expression ([`both!`]): as `f32`, and as [`F4`], four lanes of WebAssembly's 128-bit SIMD.
//! In a wasm32 build with `simd128` the loops run four lanes at a time and finish the tail
//! one value at a time; elsewhere they run the `f32` form alone.
//!
//! Both forms give the same bits (a NaN may come out with another sign or payload, which IEEE
//! 754 leaves open; and [`max8`] may return −0 where the scalar form returns +0 or the other
//! way round, as `f32::max` leaves that open too, which no kernel's output shows: they only
//! subtract it). Every lane operation is the IEEE operation the scalar code
//! performs, in the same order (WebAssembly's SIMD has no fused multiply-add); `exp`'s range
//! reduction, clamp and special cases are written out in lane operations whose semantics
//! match the scalar ones (`pmax`/`pmin` are the comparisons `f32::clamp` makes); and sums keep
//! eight partial sums in the same order. Off wasm, [`F4`] is an array of four `f32` with the
//! same lane operations, so a unit test runs every kernel both ways on this machine and
//! compares bits.

use std::ops::{Add, Div, Mul, Neg, Sub};

/// What a kernel's arithmetic needs of a value: `f32`, or four of them in [`F4`].
pub(super) trait Lanes: Copy + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + Div<Output = Self> + Neg<Output = Self> {
    /// `v` (in every lane).
    fn splat(v: f32) -> Self;
    /// e^x, as [`super::exp`] computes it (the same bits in every lane). Not named `exp`:
    /// on `f32` that name is std's `f32::exp`, which would win over a trait method.
    fn cephes_exp(self) -> Self;
}

impl Lanes for f32 {
    #[inline(always)]
    fn splat(v: f32) -> f32 {
        v
    }

    #[inline(always)]
    fn cephes_exp(self) -> f32 {
        super::exp(self)
    }
}

/// σ(x) = 1 / (1 + e^−x).
#[inline(always)]
pub(super) fn sigmoid<L: Lanes>(x: L) -> L {
    L::splat(1.0) / (L::splat(1.0) + (-x).cephes_exp())
}

/// A loop body as a pair of closures, `f32` and [`F4`], from one expression; `L` names the
/// lane type inside it. `both!(|x, y| x * y + L::splat(2.0))` is a body for [`map`] over two
/// inputs (closures of `[f32; 2]` and `[F4; 2]`); `both!(|acc; x| acc + x)` one for
/// [`update`], whose closures also take the value they overwrite.
macro_rules! both {
    (|$($x:ident),*| $body:expr) => {
        (
            #[inline(always)]
            |[$($x),*]: [f32; _]| -> f32 {
                #[allow(dead_code)]
                type L = f32;
                $body
            },
            #[inline(always)]
            |[$($x),*]: [$crate::kernels::lanes::F4; _]| -> $crate::kernels::lanes::F4 {
                #[allow(dead_code)]
                type L = $crate::kernels::lanes::F4;
                $body
            },
        )
    };
    (|$acc:ident; $($x:ident),*| $body:expr) => {
        (
            #[inline(always)]
            |$acc: f32, [$($x),*]: [f32; _]| -> f32 {
                #[allow(dead_code)]
                type L = f32;
                $body
            },
            #[inline(always)]
            |$acc: $crate::kernels::lanes::F4, [$($x),*]: [$crate::kernels::lanes::F4; _]| -> $crate::kernels::lanes::F4 {
                #[allow(dead_code)]
                type L = $crate::kernels::lanes::F4;
                $body
            },
        )
    };
}
pub(super) use both;

/// Whether the loops take four lanes at a time: in wasm32 with SIMD, and in unit tests that ask.
#[inline(always)]
fn four() -> bool {
    cfg!(all(target_arch = "wasm32", target_feature = "simd128")) || test_four()
}

#[cfg(test)]
static FOUR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes the loops take [`F4`]'s four lanes (tests on a machine that is not wasm).
#[cfg(test)]
pub(super) fn set_four(on: bool) {
    FOUR.store(on, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(test)]
fn test_four() -> bool {
    FOUR.load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(not(test))]
#[inline(always)]
const fn test_four() -> bool {
    false
}

/// `o[i] = f([ins[0][i], …])` over `o` (each input at least as long as `o`).
#[inline(always)]
pub(super) fn map<const K: usize>(o: &mut [f32], ins: [&[f32]; K], (f, v): (impl Fn([f32; K]) -> f32, impl Fn([F4; K]) -> F4)) {
    let ins = cut(ins, o.len());
    let done = if four() {
        let at = o.len() / 4 * 4;
        for (c, o) in o[..at].chunks_exact_mut(4).enumerate() {
            v(load(&ins, 4 * c)).store(o);
        }
        at
    } else {
        0
    };
    for (i, o) in o.iter_mut().enumerate().skip(done) {
        *o = f(get(&ins, i));
    }
}

/// `o[i] = f(o[i], [ins[0][i], …])` over `o`: [`map`] that reads what it overwrites.
#[inline(always)]
pub(super) fn update<const K: usize>(o: &mut [f32], ins: [&[f32]; K], (f, v): (impl Fn(f32, [f32; K]) -> f32, impl Fn(F4, [F4; K]) -> F4)) {
    let ins = cut(ins, o.len());
    let done = if four() {
        let at = o.len() / 4 * 4;
        for (c, o) in o[..at].chunks_exact_mut(4).enumerate() {
            v(F4::load(o), load(&ins, 4 * c)).store(o);
        }
        at
    } else {
        0
    };
    for (i, o) in o.iter_mut().enumerate().skip(done) {
        *o = f(*o, get(&ins, i));
    }
}

/// The inputs cut to `n` values, so that indexing them below `n` needs no bounds checks in
/// the loops (which would keep the compiler from vectorising them).
#[inline(always)]
fn cut<const K: usize>(mut ins: [&[f32]; K], n: usize) -> [&[f32]; K] {
    for s in ins.iter_mut() {
        *s = &s[..n];
    }
    ins
}

/// The inputs' values at `i` (a loop over K, unrolled; `array::map`'s closures might not be
/// inlined in the size-optimised build).
#[inline(always)]
fn get<const K: usize>(ins: &[&[f32]; K], i: usize) -> [f32; K] {
    let mut x = [0.0; K];
    for (x, s) in x.iter_mut().zip(ins) {
        *x = s[i];
    }
    x
}

/// The inputs' four values from `i`.
#[inline(always)]
fn load<const K: usize>(ins: &[&[f32]; K], i: usize) -> [F4; K] {
    let mut x = [F4::splat(0.0); K];
    for (x, s) in x.iter_mut().zip(ins) {
        *x = F4::load(&s[i..]);
    }
    x
}

/// Σ f(v) over `x` in eight interleaved partial sums (a SIMD register's worth), added in
/// lane order, then the tail's sum.
#[inline(always)]
pub(super) fn lane_sum(x: &[f32], (f, v): (impl Fn([f32; 1]) -> f32, impl Fn([F4; 1]) -> F4)) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|&x| f([x])).sum();
    if four() {
        let (mut lo, mut hi) = (F4::splat(0.0), F4::splat(0.0));
        for c in chunks {
            lo = lo + v([F4::load(c)]);
            hi = hi + v([F4::load(&c[4..])]);
        }
        acc[..4].copy_from_slice(&lo.to_array());
        acc[4..].copy_from_slice(&hi.to_array());
    } else {
        for c in chunks {
            let c: &[f32; 8] = c.try_into().expect("chunks of 8");
            acc.iter_mut().zip(c).for_each(|(a, &x)| *a += f([x]));
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The largest value of `x` (−∞ for none; NaNs are passed over), eight lanes at a time.
#[inline(always)]
pub(super) fn max8(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    if four() {
        let (mut lo, mut hi) = (F4::splat(f32::NEG_INFINITY), F4::splat(f32::NEG_INFINITY));
        for c in chunks {
            lo = lo.pmax(F4::load(c));
            hi = hi.pmax(F4::load(&c[4..]));
        }
        acc[..4].copy_from_slice(&lo.to_array());
        acc[4..].copy_from_slice(&hi.to_array());
    } else {
        for c in chunks {
            let c: &[f32; 8] = c.try_into().expect("chunks of 8");
            acc.iter_mut().zip(c).for_each(|(a, &v)| *a = a.max(v));
        }
    }
    acc.iter().fold(tail, |m, &v| m.max(v))
}

impl Lanes for F4 {
    #[inline(always)]
    fn splat(v: f32) -> F4 {
        F4::splat(v)
    }

    /// [`super::exp`] in lane operations, step for step.
    #[inline(always)]
    fn cephes_exp(self) -> F4 {
        let (round, ln2_hi, ln2_lo) = (F4::splat(super::EXP_ROUND), F4::splat(super::LN2_HI), F4::splat(super::LN2_LO));
        let (lo, hi) = (F4::splat(super::EXP_LOW), F4::splat(super::EXP_HIGH));
        let x = self;
        // f32::clamp(lo, hi): `if x < lo { lo }`, then `if x > hi { hi }`; NaN stays.
        let xc = x.pmax(lo).pmin(hi);
        let n = (xc * F4::splat(std::f32::consts::LOG2_E) + round) - round;
        let r = xc - n * ln2_hi - n * ln2_lo;
        let [c6, c5, c4, c3, c2, c1] = super::EXP_POLY;
        let s = F4::splat;
        let p = ((((s(c6) * r + s(c5)) * r + s(c4)) * r + s(c3)) * r + s(c2)) * r + s(c1);
        let er = p * r * r + r + F4::splat(1.0);
        let y = er * n.pow2_minus_1() * F4::splat(2.0);
        let special = F4::select(x.lt(lo), F4::splat(0.0), F4::select(x.gt(hi), F4::splat(f32::INFINITY), y));
        F4::select(x.ne(x), x, special)
    }
}

pub(super) use imp::F4;

/// WebAssembly's `f32x4`: each method one instruction (`to_array` four lane extracts).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod imp {
    use std::arch::wasm32::*;

    /// Four `f32` lanes in a `v128`.
    #[derive(Clone, Copy)]
    pub struct F4(v128);

    /// A lane mask (all ones or all zeros per lane).
    #[derive(Clone, Copy)]
    pub struct M4(v128);

    impl F4 {
        #[inline(always)]
        pub fn splat(v: f32) -> F4 {
            F4(f32x4_splat(v))
        }

        /// The first four values of `s`.
        #[inline(always)]
        pub fn load(s: &[f32]) -> F4 {
            let s = &s[..4];
            // SAFETY: `s` holds four f32, 16 readable bytes; wasm loads need no alignment.
            F4(unsafe { v128_load(s.as_ptr().cast::<v128>()) })
        }

        /// Writes the lanes to the first four values of `o`.
        #[inline(always)]
        pub fn store(self, o: &mut [f32]) {
            let o = &mut o[..4];
            // SAFETY: `o` holds four f32, 16 writable bytes; wasm stores need no alignment.
            unsafe { v128_store(o.as_mut_ptr().cast::<v128>(), self.0) }
        }

        #[inline(always)]
        pub fn to_array(self) -> [f32; 4] {
            [f32x4_extract_lane::<0>(self.0), f32x4_extract_lane::<1>(self.0), f32x4_extract_lane::<2>(self.0), f32x4_extract_lane::<3>(self.0)]
        }

        /// `if self < o { o } else { self }` per lane.
        #[inline(always)]
        pub fn pmax(self, o: F4) -> F4 {
            F4(f32x4_pmax(self.0, o.0))
        }

        /// `if o < self { o } else { self }` per lane.
        #[inline(always)]
        pub fn pmin(self, o: F4) -> F4 {
            F4(f32x4_pmin(self.0, o.0))
        }

        #[inline(always)]
        pub fn lt(self, o: F4) -> M4 {
            M4(f32x4_lt(self.0, o.0))
        }

        #[inline(always)]
        pub fn gt(self, o: F4) -> M4 {
            M4(f32x4_gt(self.0, o.0))
        }

        #[inline(always)]
        pub fn ne(self, o: F4) -> M4 {
            M4(f32x4_ne(self.0, o.0))
        }

        /// `a` where `m` is set, else `b`.
        #[inline(always)]
        pub fn select(m: M4, a: F4, b: F4) -> F4 {
            F4(v128_bitselect(a.0, b.0, m.0))
        }

        /// 2ⁿ⁻¹ for integral n in −125..=128: `f32::from_bits((n as i32 + 126) << 23)`.
        #[inline(always)]
        pub fn pow2_minus_1(self) -> F4 {
            F4(i32x4_shl(i32x4_add(i32x4_trunc_sat_f32x4(self.0), i32x4_splat(126)), 23))
        }
    }

    macro_rules! binary {
        ($($trait:ident $method:ident $op:ident),*) => {$(
            impl std::ops::$trait for F4 {
                type Output = F4;
                #[inline(always)]
                fn $method(self, o: F4) -> F4 {
                    F4($op(self.0, o.0))
                }
            }
        )*};
    }
    binary!(Add add f32x4_add, Sub sub f32x4_sub, Mul mul f32x4_mul, Div div f32x4_div);

    impl std::ops::Neg for F4 {
        type Output = F4;
        #[inline(always)]
        fn neg(self) -> F4 {
            F4(f32x4_neg(self.0))
        }
    }
}

/// The same lane operations on an array: what unit tests run off wasm.
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
mod imp {
    /// Four `f32` lanes.
    #[derive(Clone, Copy)]
    pub struct F4([f32; 4]);

    /// A lane mask.
    #[derive(Clone, Copy)]
    pub struct M4([bool; 4]);

    impl F4 {
        #[inline(always)]
        pub fn splat(v: f32) -> F4 {
            F4([v; 4])
        }

        #[inline(always)]
        pub fn load(s: &[f32]) -> F4 {
            F4(s[..4].try_into().expect("four values"))
        }

        #[inline(always)]
        pub fn store(self, o: &mut [f32]) {
            o[..4].copy_from_slice(&self.0);
        }

        #[inline(always)]
        pub fn to_array(self) -> [f32; 4] {
            self.0
        }

        #[inline(always)]
        fn zip(self, o: F4, f: impl Fn(f32, f32) -> f32) -> F4 {
            F4(std::array::from_fn(|i| f(self.0[i], o.0[i])))
        }

        #[inline(always)]
        fn test(self, o: F4, f: impl Fn(f32, f32) -> bool) -> M4 {
            M4(std::array::from_fn(|i| f(self.0[i], o.0[i])))
        }

        /// wasm's `f32x4.pmax`: `if self < o { o } else { self }` per lane.
        #[inline(always)]
        pub fn pmax(self, o: F4) -> F4 {
            self.zip(o, |a, b| if a < b { b } else { a })
        }

        /// wasm's `f32x4.pmin`: `if o < self { o } else { self }` per lane.
        #[inline(always)]
        pub fn pmin(self, o: F4) -> F4 {
            self.zip(o, |a, b| if b < a { b } else { a })
        }

        #[inline(always)]
        pub fn lt(self, o: F4) -> M4 {
            self.test(o, |a, b| a < b)
        }

        #[inline(always)]
        pub fn gt(self, o: F4) -> M4 {
            self.test(o, |a, b| a > b)
        }

        #[inline(always)]
        pub fn ne(self, o: F4) -> M4 {
            self.test(o, |a, b| a != b)
        }

        #[inline(always)]
        pub fn select(m: M4, a: F4, b: F4) -> F4 {
            F4(std::array::from_fn(|i| if m.0[i] { a.0[i] } else { b.0[i] }))
        }

        /// wasm's `i32x4.trunc_sat_f32x4`, `i32x4.add` of 126 and `i32x4.shl` by 23.
        #[inline(always)]
        pub fn pow2_minus_1(self) -> F4 {
            F4(self.0.map(|n| f32::from_bits(((n as i32).wrapping_add(126) as u32) << 23)))
        }
    }

    macro_rules! binary {
        ($($trait:ident $method:ident $op:tt),*) => {$(
            impl std::ops::$trait for F4 {
                type Output = F4;
                #[inline(always)]
                fn $method(self, o: F4) -> F4 {
                    self.zip(o, |a, b| a $op b)
                }
            }
        )*};
    }
    binary!(Add add +, Sub sub -, Mul mul *, Div div /);

    impl std::ops::Neg for F4 {
        type Output = F4;
        #[inline(always)]
        fn neg(self) -> F4 {
            F4(self.0.map(|v| -v))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{F4, Lanes};

    /// Four lanes of `cephes_exp` give [`super::super::exp`]'s bits, across its range and at
    /// its edges.
    #[test]
    fn exp_four_lanes_at_a_time_gives_the_same_bits() {
        let mut xs: Vec<f32> = (0..40_000).map(|i| -100.0 + i as f32 * 0.005_01).collect();
        xs.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 88.72, 88.73, -86.5, -86.51, 0.0, -0.0, 1e-30, f32::MAX, f32::MIN]);
        for x in xs.chunks(4) {
            let mut four = [f32::NAN; 4];
            four[..x.len()].copy_from_slice(x);
            let got = F4::load(&four).cephes_exp().to_array();
            for (&x, got) in four.iter().zip(got) {
                let want = super::super::exp(x);
                assert_eq!(got.to_bits(), want.to_bits(), "e^{x}: {got} four lanes at a time, {want} one");
            }
        }
    }
}
