//! ES256 verification with a precomputed table per key.
//!
//! An ECDSA P-256 verification computes `u1·G + u2·Q` and compares its `x`
//! with `r`. aws-lc computes the `u2·Q` half with 255 point doublings,
//! because it knows nothing about `Q` in advance. A gateway verifies many
//! signatures with the same few keys, so this module pays once, when a key
//! is loaded, for a table of multiples of `Q`: `d·2^(8i)·Q` for `d` in
//! 1..=128 and each 8-bit window `i` (and of `G` with 10-bit windows, once
//! per process). A verification is then at most 26 + 33 additions of table
//! entries and no doubling at all: about half of aws-lc's cost on this
//! machine (bench/PERFORMANCE.md, *ES256 verification*).
//!
//! What it is built from:
//! - field and scalar arithmetic: `fiat-crypto`'s `p256_64` and
//!   `p256_scalar_64`, machine-checked Montgomery arithmetic (safe Rust),
//!   except the field product, written here for P-256's prime
//!   (`mont_mul`) and tested equal to fiat's;
//! - point addition: the complete formulas of Renes, Costello and Batina
//!   (2015/1060, algorithms 4 and 5, `a = −3`). They have no exceptional
//!   case: doubling, adding a point's negation and adding to the identity
//!   all go through the same formula, so no attacker-chosen input can steer
//!   the computation into an unhandled branch.
//!
//! Everything here works on public data (the key, the message, the
//! signature), so it runs in variable time, like aws-lc's own verify.
//!
//! Every public-key check of the ECDSA definition is here: `r` and `s` in
//! `[1, n−1]`, `Q` on the curve (and, the cofactor being 1, in the group),
//! the sum not the identity, `x mod n == r`. The test suite compares every
//! decision with aws-lc's on random keys, on tampered signatures, on
//! arbitrary input and on the edge values; the fuzz target `p256_verify`
//! does the same.

use fiat_crypto::p256_64 as fp;
use fiat_crypto::p256_scalar_64 as fs;
use std::sync::OnceLock;

/// Bits per window of a key's table (33 windows of 128 points: 264 KiB).
const KEY_W: usize = 8;
/// Bits per window of the generator's table, shared by every key (26
/// windows of 512 points: 832 KiB, once per process).
const GEN_W: usize = 10;
/// The most windows any table has (`KEY_W`'s); digits arrays have this size.
const MAX_WINDOWS: usize = windows(KEY_W);

/// Windows of `w` bits per 256-bit scalar, with one extra bit for the
/// final carry of the signed recoding: ⌈257 / w⌉.
const fn windows(w: usize) -> usize {
    257_usize.div_ceil(w)
}

/// The group order `n`, little-endian 64-bit limbs.
const N: [u64; 4] = [
    0xf3b9_cac2_fc63_2551,
    0xbce6_faad_a717_9e84,
    0xffff_ffff_ffff_ffff,
    0xffff_ffff_0000_0000,
];
/// The field prime `p`, little-endian 64-bit limbs.
const P: [u64; 4] = [
    0xffff_ffff_ffff_ffff,
    0x0000_0000_ffff_ffff,
    0x0000_0000_0000_0000,
    0xffff_ffff_0000_0001,
];
const GX: [u8; 32] = hex32("6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296");
const GY: [u8; 32] = hex32("4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5");
const B: [u8; 32] = hex32("5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b");

/// 64 hex digits as 32 big-endian bytes, at compile time.
const fn hex32(s: &str) -> [u8; 32] {
    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("not a lowercase hex digit"),
        }
    }
    let b = s.as_bytes();
    assert!(b.len() == 64);
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = (nibble(b[2 * i]) << 4) | nibble(b[2 * i + 1]);
        i += 1;
    }
    out
}

// ---------------------------------------------------------------- integers

/// Big-endian bytes → little-endian limbs (also at compile time).
const fn limbs(be: &[u8; 32]) -> [u64; 4] {
    let mut out = [0u64; 4];
    let mut i = 0;
    while i < 4 {
        let mut limb = 0u64;
        let mut j = 0;
        while j < 8 {
            limb = (limb << 8) | be[32 - 8 * (i + 1) + j] as u64;
            j += 1;
        }
        out[i] = limb;
        i += 1;
    }
    out
}

/// `a < b` for little-endian limbs (also at compile time).
const fn lt(a: &[u64; 4], b: &[u64; 4]) -> bool {
    let mut i = 4;
    while i > 0 {
        i -= 1;
        if a[i] != b[i] {
            return a[i] < b[i];
        }
    }
    false
}

/// `a op b` limb by limb with the carry (or borrow) passed up, and whether
/// one left the top limb; `op` is `u64::overflowing_add` or `_sub`.
#[inline(always)]
fn with_carry(a: &[u64; 4], b: &[u64; 4], op: fn(u64, u64) -> (u64, bool)) -> ([u64; 4], bool) {
    let mut out = [0u64; 4];
    let mut carry = false;
    for i in 0..4 {
        let (v1, c1) = op(a[i], b[i]);
        let (v2, c2) = op(v1, u64::from(carry));
        out[i] = v2;
        carry = c1 || c2;
    }
    (out, carry)
}

/// `a + b`, and whether it overflowed 2^256.
fn add_int(a: &[u64; 4], b: &[u64; 4]) -> ([u64; 4], bool) {
    with_carry(a, b, u64::overflowing_add)
}

/// `a − b mod 2^256`, and whether it borrowed (`a < b`).
#[inline(always)]
fn sub_borrow(a: &[u64; 4], b: &[u64; 4]) -> ([u64; 4], bool) {
    with_carry(a, b, u64::overflowing_sub)
}

/// `a − b` for `a ≥ b`.
fn sub_int(a: &[u64; 4], b: &[u64; 4]) -> [u64; 4] {
    sub_borrow(a, b).0
}

fn is_zero(a: &[u64; 4]) -> bool {
    *a == [0; 4]
}

/// `base^exp` by 4-bit fixed windows (public exponents only; off the
/// verification path: table building and the tests).
fn pow<T: Copy>(base: T, exp: &[u64; 4], one: T, mul: impl Fn(&T, &T) -> T) -> T {
    let mut powers = [one; 16];
    for i in 1..16 {
        powers[i] = mul(&powers[i - 1], &base);
    }
    let mut acc = one;
    for i in (0..64).rev() {
        for _ in 0..4 {
            acc = mul(&acc, &acc);
        }
        let nib = (exp[i / 16] >> ((i % 16) * 4)) & 0xf;
        if nib != 0 {
            acc = mul(&acc, &powers[nib as usize]);
        }
    }
    acc
}

/// fiat's Montgomery-domain element types, one per modulus: each is a
/// `[u64; 4]` newtype.
trait Limbs: Copy {
    fn new(limbs: [u64; 4]) -> Self;
    fn limbs(self) -> [u64; 4];
}

impl Limbs for fp::fiat_p256_montgomery_domain_field_element {
    fn new(limbs: [u64; 4]) -> Self {
        Self(limbs)
    }
    fn limbs(self) -> [u64; 4] {
        self.0
    }
}

impl Limbs for fs::fiat_p256_scalar_montgomery_domain_field_element {
    fn new(limbs: [u64; 4]) -> Self {
        Self(limbs)
    }
    fn limbs(self) -> [u64; 4] {
        self.0
    }
}

/// Runs a one-operand fiat function (`out = f(a)`) on raw limbs.
#[inline(always)]
fn fiat1<T: Limbs>(f: fn(&mut T, &T), a: [u64; 4]) -> [u64; 4] {
    let mut out = T::new([0; 4]);
    f(&mut out, &T::new(a));
    out.limbs()
}

/// Runs a two-operand fiat function (`out = f(a, b)`) on raw limbs.
#[inline(always)]
fn fiat2<T: Limbs>(f: fn(&mut T, &T, &T), a: [u64; 4], b: [u64; 4]) -> [u64; 4] {
    let mut out = T::new([0; 4]);
    f(&mut out, &T::new(a), &T::new(b));
    out.limbs()
}

// ---------------------------------------------------------------- field

/// An element of GF(p) in Montgomery form, fully reduced (fiat's outputs
/// are always in `[0, p)`, so equal elements have equal limbs).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Fe([u64; 4]);

impl Fe {
    const ZERO: Fe = Fe([0; 4]);
    const ONE: Fe = Fe::constant(&hex32(
        "0000000000000000000000000000000000000000000000000000000000000001",
    ));

    /// An integer `< p` (checked) into the field.
    const fn from_int(a: &[u64; 4]) -> Option<Fe> {
        if !lt(a, &P) {
            return None;
        }
        let mut o = fp::fiat_p256_montgomery_domain_field_element([0; 4]);
        fp::fiat_p256_to_montgomery(
            &mut o,
            &fp::fiat_p256_non_montgomery_domain_field_element(*a),
        );
        Some(Fe(o.0))
    }

    /// A curve constant, converted at compile time (a value `≥ p` fails the
    /// build).
    const fn constant(be: &[u8; 32]) -> Fe {
        match Fe::from_int(&limbs(be)) {
            Some(fe) => fe,
            None => panic!("curve constant not below p"),
        }
    }

    fn from_be(be: &[u8; 32]) -> Option<Fe> {
        Fe::from_int(&limbs(be))
    }

    #[inline]
    fn mul(&self, b: &Fe) -> Fe {
        Fe(mont_mul(&self.0, &b.0))
    }

    #[inline]
    fn square(&self) -> Fe {
        Fe(fiat1(fp::fiat_p256_square, self.0))
    }

    #[inline]
    fn add(&self, b: &Fe) -> Fe {
        Fe(fiat2(fp::fiat_p256_add, self.0, b.0))
    }

    #[inline]
    fn sub(&self, b: &Fe) -> Fe {
        Fe(fiat2(fp::fiat_p256_sub, self.0, b.0))
    }

    #[inline]
    fn neg(&self) -> Fe {
        Fe(fiat1(fp::fiat_p256_opp, self.0))
    }

    #[inline]
    fn double(&self) -> Fe {
        self.add(self)
    }

    #[inline]
    fn triple(&self) -> Fe {
        self.double().add(self)
    }

    fn is_zero(&self) -> bool {
        *self == Fe::ZERO
    }

    /// `1/self` by Fermat (`self^(p−2)`); zero maps to zero.
    fn invert(&self) -> Fe {
        let exp = sub_int(&P, &[2, 0, 0, 0]);
        pow(*self, &exp, Fe::ONE, Fe::mul)
    }
}

/// The curve's `b`, in Montgomery form.
const CURVE_B: Fe = Fe::constant(&B);
/// The generator `G`.
const GENERATOR: Affine = Affine {
    x: Fe::constant(&GX),
    y: Fe::constant(&GY),
};

/// `a + b + c`, low limb and carry (`c` may exceed 1).
#[inline(always)]
fn adc(a: u64, b: u64, c: u64) -> (u64, u64) {
    let t = u128::from(a) + u128::from(b) + u128::from(c);
    (t as u64, (t >> 64) as u64)
}

/// `acc + a·b + c`, low limb and high limb (never overflows 128 bits).
#[inline(always)]
fn mac(acc: u64, a: u64, b: u64, c: u64) -> (u64, u64) {
    let t = u128::from(acc) + u128::from(a) * u128::from(b) + u128::from(c);
    (t as u64, (t >> 64) as u64)
}

/// What one Montgomery round adds for the quotient `m`, by limb: `m·p`
/// without its lowest term is `m·2^96 + m·(2^64 − 2^32 + 1)·2^192`, i.e.
/// `(m << 32, m >> 32)` at limbs 1–2 and the two limbs of
/// `m·(2^64 − 2^32 + 1)` at limbs 3–4. Shifts and subtractions only.
#[inline(always)]
fn round_terms(m: u64) -> (u64, u64, u64, u64) {
    let (x, y) = (m << 32, m >> 32);
    let (lo, borrow) = m.overflowing_sub(x);
    // m − y − borrow ≥ 0: y < m whenever x > m.
    let hi = m - y - u64::from(borrow);
    (x, y, lo, hi)
}

/// The Montgomery product `a·b·2^-256 mod p` for `a, b < p`, fully
/// reduced: the same function as fiat's `fiat_p256_mul` (the tests compare
/// them on random and edge values), written for p's shape. `−p⁻¹ mod 2^64`
/// is 1, so each round's quotient is the low limb itself, and multiplying
/// it by p takes shifts ([`round_terms`]) instead of multiplications:
/// 16 multiplications instead of fiat's 28, half the instructions.
#[inline]
fn mont_mul(a: &[u64; 4], b: &[u64; 4]) -> [u64; 4] {
    // The 512-bit product, row by row.
    let (t0, c) = mac(0, a[0], b[0], 0);
    let (t1, c) = mac(0, a[0], b[1], c);
    let (t2, c) = mac(0, a[0], b[2], c);
    let (t3, t4) = mac(0, a[0], b[3], c);
    let (t1, c) = mac(t1, a[1], b[0], 0);
    let (t2, c) = mac(t2, a[1], b[1], c);
    let (t3, c) = mac(t3, a[1], b[2], c);
    let (t4, t5) = mac(t4, a[1], b[3], c);
    let (t2, c) = mac(t2, a[2], b[0], 0);
    let (t3, c) = mac(t3, a[2], b[1], c);
    let (t4, c) = mac(t4, a[2], b[2], c);
    let (t5, t6) = mac(t5, a[2], b[3], c);
    let (t3, c) = mac(t3, a[3], b[0], 0);
    let (t4, c) = mac(t4, a[3], b[1], c);
    let (t5, c) = mac(t5, a[3], b[2], c);
    let (t6, t7) = mac(t6, a[3], b[3], c);
    // Four rounds: add m·p with m the lowest remaining limb, which clears
    // it (t_i − m = 0); each round's top carry joins the next round's top.
    let (x, y, lo, hi) = round_terms(t0);
    let (t1, c) = adc(t1, x, 0);
    let (t2, c) = adc(t2, y, c);
    let (t3, c) = adc(t3, lo, c);
    let (t4, c0) = adc(t4, hi, c);
    let (x, y, lo, hi) = round_terms(t1);
    let (t2, c) = adc(t2, x, 0);
    let (t3, c) = adc(t3, y, c);
    let (t4, c) = adc(t4, lo, c);
    let (t5, c1) = adc(t5, hi, c + c0);
    let (x, y, lo, hi) = round_terms(t2);
    let (t3, c) = adc(t3, x, 0);
    let (t4, c) = adc(t4, y, c);
    let (t5, c) = adc(t5, lo, c);
    let (t6, c2) = adc(t6, hi, c + c1);
    let (x, y, lo, hi) = round_terms(t3);
    let (t4, c) = adc(t4, x, 0);
    let (t5, c) = adc(t5, y, c);
    let (t6, c) = adc(t6, lo, c);
    let (t7, c3) = adc(t7, hi, c + c2);
    // (t4..t7) + c3·2^256 < 2p: subtract p once unless it is already below.
    let r = [t4, t5, t6, t7];
    let (d, borrow) = sub_borrow(&r, &P);
    if c3 != 0 || !borrow {
        d
    } else {
        r
    }
}

// ---------------------------------------------------------------- scalars

/// An element of Z/nZ in Montgomery form.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Sc([u64; 4]);

impl Sc {
    #[cfg(test)]
    fn one() -> Sc {
        let mut o = fs::fiat_p256_scalar_montgomery_domain_field_element([0; 4]);
        fs::fiat_p256_scalar_set_one(&mut o);
        Sc(o.0)
    }

    /// An integer `< n` (the caller checks) into Montgomery form.
    fn from_int(a: &[u64; 4]) -> Sc {
        debug_assert!(lt(a, &N));
        let mut o = fs::fiat_p256_scalar_montgomery_domain_field_element([0; 4]);
        fs::fiat_p256_scalar_to_montgomery(
            &mut o,
            &fs::fiat_p256_scalar_non_montgomery_domain_field_element(*a),
        );
        Sc(o.0)
    }

    #[cfg(test)]
    fn to_int(self) -> [u64; 4] {
        let mut o = fs::fiat_p256_scalar_non_montgomery_domain_field_element([0; 4]);
        fs::fiat_p256_scalar_from_montgomery(
            &mut o,
            &fs::fiat_p256_scalar_montgomery_domain_field_element(self.0),
        );
        o.0
    }

    #[cfg(test)]
    fn mul(&self, b: &Sc) -> Sc {
        Sc(fiat2(fs::fiat_p256_scalar_mul, self.0, b.0))
    }

    /// `a·self mod n` as a plain integer, for an integer `a < n`: the
    /// Montgomery product of a plain and a Montgomery-form value is plain.
    fn times_int(&self, a: &[u64; 4]) -> [u64; 4] {
        debug_assert!(lt(a, &N));
        fiat2(fs::fiat_p256_scalar_mul, *a, self.0)
    }

    /// `1/self` by Fermat (`self^(n−2)`, `n` prime): the tests' reference
    /// for [`inverse_mod_n`].
    #[cfg(test)]
    fn invert(&self) -> Sc {
        let exp = sub_int(&N, &[2, 0, 0, 0]);
        pow(*self, &exp, Sc::one(), Sc::mul)
    }
}

/// `−n⁻¹ mod 2^64`, by Newton's iteration (each step doubles the bits).
const NEG_N0_INV: u64 = {
    let mut inv = 1u64;
    let mut i = 0;
    while i < 6 {
        inv = inv.wrapping_mul(2u64.wrapping_sub(N[0].wrapping_mul(inv)));
        i += 1;
    }
    inv.wrapping_neg()
};

/// `a⁻¹ mod n` for `0 < a < n`, by the binary extended Euclidean algorithm
/// (variable time: `a` is a public signature value). Invariants:
/// `x1·a ≡ u` and `x2·a ≡ v (mod n)`, with `x1, x2 < n`; `gcd(u, v) = 1`
/// throughout because `n` is prime, so one of them reaches 1. Runs of
/// trailing zeros are shifted out at once, and the matching division of
/// `x1`/`x2` by `2^k` is one Montgomery-style step ([`div_pow2_mod_n`]).
fn inverse_mod_n(a: &[u64; 4]) -> [u64; 4] {
    /// `x − y mod n` for `x, y < n`: fiat's scalar subtraction, which is
    /// the same in and out of the Montgomery domain.
    fn sub_mod(x: &[u64; 4], y: &[u64; 4]) -> [u64; 4] {
        fiat2(fs::fiat_p256_scalar_sub, *x, *y)
    }
    /// Shifts the trailing zeros out of `u` (not zero) and divides `x` by
    /// the same power of two, mod n.
    fn strip(u: &mut [u64; 4], x: &mut [u64; 4]) {
        loop {
            let k = u[0].trailing_zeros().min(63);
            if k == 0 {
                return;
            }
            *u = shr(u, k);
            *x = div_pow2_mod_n(x, k);
        }
    }
    const ONE: [u64; 4] = [1, 0, 0, 0];
    let (mut u, mut v) = (*a, N);
    let (mut x1, mut x2) = (ONE, [0u64; 4]);
    // Each round removes at least one bit from u or v (512 in all);
    // bounded anyway so that a broken invariant can never loop forever.
    for _ in 0..1024 {
        if is_zero(&u) || is_zero(&v) {
            break;
        }
        strip(&mut u, &mut x1);
        strip(&mut v, &mut x2);
        if u == ONE {
            return x1;
        }
        if v == ONE {
            return x2;
        }
        if lt(&u, &v) {
            v = sub_int(&v, &u);
            x2 = sub_mod(&x2, &x1);
        } else {
            u = sub_int(&u, &v);
            x1 = sub_mod(&x1, &x2);
        }
    }
    // Unreachable for 0 < a < n; zero makes the verification fail.
    [0; 4]
}

/// `x >> k` for `0 < k < 64`.
fn shr(x: &[u64; 4], k: u32) -> [u64; 4] {
    let mut out = [0u64; 4];
    for i in 0..4 {
        let hi = if i == 3 { 0 } else { x[i + 1] << (64 - k) };
        out[i] = (x[i] >> k) | hi;
    }
    out
}

/// `x / 2^k mod n` for `x < n`, `0 < k < 64`: add the multiple `m·n`
/// (`m < 2^k`) that clears the low `k` bits and shift them out. The result
/// is already below `n`: `x + m·n < n + (2^k − 1)·n = 2^k·n`.
fn div_pow2_mod_n(x: &[u64; 4], k: u32) -> [u64; 4] {
    let m = x[0].wrapping_mul(NEG_N0_INV) & ((1u64 << k) - 1);
    // y = x + m·n, five limbs.
    let mut y = [0u64; 5];
    let mut carry = 0u128;
    for i in 0..4 {
        let v = u128::from(m) * u128::from(N[i]) + u128::from(x[i]) + carry;
        y[i] = v as u64;
        carry = v >> 64;
    }
    y[4] = carry as u64;
    debug_assert!(y[0] & ((1u64 << k) - 1) == 0);
    let mut out = [0u64; 4];
    for i in 0..4 {
        out[i] = (y[i] >> k) | (y[i + 1] << (64 - k));
    }
    debug_assert!(y[4] >> k == 0 && lt(&out, &N));
    out
}

// ---------------------------------------------------------------- points

/// A point in homogeneous projective coordinates: `(X : Y : Z)` stands for
/// `(X/Z, Y/Z)`; the identity is `(0 : 1 : 0)`.
#[derive(Clone, Copy)]
struct Proj {
    x: Fe,
    y: Fe,
    z: Fe,
}

/// A point in affine coordinates, never the identity.
#[derive(Clone, Copy)]
struct Affine {
    x: Fe,
    y: Fe,
}

impl Proj {
    fn identity() -> Proj {
        Proj {
            x: Fe::ZERO,
            y: Fe::ONE,
            z: Fe::ZERO,
        }
    }

    fn from_affine(a: &Affine) -> Proj {
        Proj {
            x: a.x,
            y: a.y,
            z: Fe::ONE,
        }
    }

    /// `self + q`: RCB 2015/1060 algorithm 4 (complete, `a = −3`).
    fn add(&self, q: &Proj) -> Proj {
        let xx = self.x.mul(&q.x);
        let yy = self.y.mul(&q.y);
        let zz = self.z.mul(&q.z);
        let xy = self.x.add(&self.y).mul(&q.x.add(&q.y)).sub(&xx.add(&yy));
        let yz = self.y.add(&self.z).mul(&q.y.add(&q.z)).sub(&yy.add(&zz));
        let xz = self.x.add(&self.z).mul(&q.x.add(&q.z)).sub(&xx.add(&zz));
        Proj::finish(xx, yy, zz, xy, yz, xz)
    }

    /// `self + q` for an affine `q`: RCB 2015/1060 algorithm 5 (complete
    /// for every `self`, identity included; `q` is never the identity).
    fn add_affine(&self, q: &Affine) -> Proj {
        let xx = self.x.mul(&q.x);
        let yy = self.y.mul(&q.y);
        let xy = self.x.add(&self.y).mul(&q.x.add(&q.y)).sub(&xx.add(&yy));
        let yz = q.y.mul(&self.z).add(&self.y);
        let xz = q.x.mul(&self.z).add(&self.x);
        Proj::finish(xx, yy, self.z, xy, yz, xz)
    }

    /// The common tail of algorithms 4 and 5, from the cross products
    /// `xx = X1X2`, `yy = Y1Y2`, `zz = Z1Z2`, `xy = X1Y2 + X2Y1`,
    /// `yz = Y1Z2 + Y2Z1`, `xz = X1Z2 + X2Z1`.
    fn finish(xx: Fe, yy: Fe, zz: Fe, xy: Fe, yz: Fe, xz: Fe) -> Proj {
        let b = CURVE_B;
        let bzz3 = xz.sub(&b.mul(&zz)).triple();
        let yy_m = yy.sub(&bzz3);
        let yy_p = yy.add(&bzz3);
        let zz3 = zz.triple();
        let bxz3 = b.mul(&xz).sub(&zz3.add(&xx)).triple();
        let xx3_m_zz3 = xx.triple().sub(&zz3);
        Proj {
            x: yy_p.mul(&xy).sub(&yz.mul(&bxz3)),
            y: yy_p.mul(&yy_m).add(&xx3_m_zz3.mul(&bxz3)),
            z: yy_m.mul(&yz).add(&xy.mul(&xx3_m_zz3)),
        }
    }
}

/// `y² = x³ − 3x + b`.
fn on_curve(a: &Affine) -> bool {
    let rhs = a.x.square().mul(&a.x).sub(&a.x.triple()).add(&CURVE_B);
    a.y.square() == rhs
}

/// The table of a point for `W`-bit windows: entry `i·2^(W−1) + (d−1)` is
/// `d·2^(W·i)·P`, for `d` in `1..=2^(W−1)` and each window `i`.
struct Table<const W: usize>(Box<[Affine]>);

impl<const W: usize> Table<W> {
    const WINDOWS: usize = windows(W);
    const PER_WINDOW: usize = 1 << (W - 1);

    /// `None` only if some multiple is the identity, impossible for a point
    /// of prime order `n` (every multiple is below `n`); checked anyway.
    fn build(p: &Affine) -> Option<Table<W>> {
        let mut proj = Vec::with_capacity(Self::WINDOWS * Self::PER_WINDOW);
        let mut base = Proj::from_affine(p);
        for _ in 0..Self::WINDOWS {
            let mut acc = base;
            proj.push(acc);
            for _ in 1..Self::PER_WINDOW {
                acc = acc.add(&base);
                proj.push(acc);
            }
            // 2^W · base = 2 · (2^(W−1) · base), the window's last entry.
            base = acc.add(&acc);
        }
        // Batch normalization: one inversion for all of them.
        let mut prefix = Vec::with_capacity(proj.len());
        let mut running = Fe::ONE;
        for pt in &proj {
            if pt.z.is_zero() {
                return None;
            }
            prefix.push(running);
            running = running.mul(&pt.z);
        }
        let mut inv = running.invert();
        let mut out = vec![
            Affine {
                x: Fe::ZERO,
                y: Fe::ZERO
            };
            proj.len()
        ];
        for i in (0..proj.len()).rev() {
            let zinv = inv.mul(&prefix[i]);
            inv = inv.mul(&proj[i].z);
            out[i] = Affine {
                x: proj[i].x.mul(&zinv),
                y: proj[i].y.mul(&zinv),
            };
        }
        Some(Table(out.into_boxed_slice()))
    }

    /// `acc + k·P`, for `k < 2^256`.
    fn add_multiple(&self, acc: Proj, k: &[u64; 4]) -> Proj {
        let digits = recode::<W>(k);
        let mut acc = acc;
        for (i, &d) in digits[..Self::WINDOWS].iter().enumerate() {
            if d == 0 {
                continue;
            }
            let entry = &self.0[i * Self::PER_WINDOW + usize::from(d.unsigned_abs()) - 1];
            acc = if d > 0 {
                acc.add_affine(entry)
            } else {
                acc.add_affine(&Affine {
                    x: entry.x,
                    y: entry.y.neg(),
                })
            };
        }
        acc
    }
}

/// `k` (`< 2^256`) as signed `W`-bit digits `d_i ∈ [−2^(W−1) + 1, 2^(W−1)]`
/// with `k = Σ d_i·2^(W·i)`; the first `windows(W)` entries are used.
fn recode<const W: usize>(k: &[u64; 4]) -> [i16; MAX_WINDOWS] {
    const { assert!(W >= KEY_W && W < 16) };
    let half = 1u64 << (W - 1);
    let mut out = [0i16; MAX_WINDOWS];
    let mut carry = 0u64;
    for (i, digit) in out[..windows(W)].iter_mut().enumerate() {
        let bit = i * W;
        let limb = bit / 64;
        let shift = bit % 64;
        let mut v = if limb < 4 { k[limb] >> shift } else { 0 };
        if shift + W > 64 && limb + 1 < 4 {
            v |= k[limb + 1] << (64 - shift);
        }
        let v = (v & ((1 << W) - 1)) + carry;
        // v ≤ 2^W; the top window holds at most W − 1 bits plus a carry.
        if v > half {
            *digit = (v as i64 - (1 << W)) as i16;
            carry = 1;
        } else {
            *digit = v as i16;
            carry = 0;
        }
    }
    out
}

/// The generator's table, built with the first key (≈ 10 ms, once per
/// process); `None` never happens (no multiple of G is the identity).
fn generator_table() -> Option<&'static Table<GEN_W>> {
    static TABLE: OnceLock<Option<Table<GEN_W>>> = OnceLock::new();
    TABLE.get_or_init(|| Table::build(&GENERATOR)).as_ref()
}

/// A P-256 public key prepared for ES256: its table of multiples
/// (33 × 128 points, 264 KiB).
pub struct P256Key {
    /// The SEC1 point the table was built from (to reuse it on a refresh).
    point: [u8; 65],
    table: Table<KEY_W>,
    /// The generator's table (shared by every key).
    gen: &'static Table<GEN_W>,
}

impl P256Key {
    /// From an uncompressed SEC1 point (`04 ‖ x ‖ y`). `None` unless it is
    /// a point of the curve.
    pub fn from_sec1(point: &[u8]) -> Option<P256Key> {
        let point: [u8; 65] = point.try_into().ok()?;
        let [4, xy @ ..] = &point else {
            return None;
        };
        let (x, y) = (xy.first_chunk::<32>()?, xy.last_chunk::<32>()?);
        let q = Affine {
            x: Fe::from_be(x)?,
            y: Fe::from_be(y)?,
        };
        if !on_curve(&q) {
            return None;
        }
        Some(P256Key {
            point,
            table: Table::build(&q)?,
            gen: generator_table()?,
        })
    }

    /// The uncompressed SEC1 point of the key.
    pub fn point(&self) -> &[u8] {
        &self.point
    }

    /// ECDSA P-256 with SHA-256: `signature` is the JWS form `r ‖ s`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let (true, Some(r_be), Some(s_be)) = (
            signature.len() == 64,
            signature.first_chunk::<32>(),
            signature.last_chunk::<32>(),
        ) else {
            return false;
        };
        let (r, s) = (limbs(r_be), limbs(s_be));
        if is_zero(&r) || is_zero(&s) || !lt(&r, &N) || !lt(&s, &N) {
            return false;
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, message);
        let Some(e_be) = digest.as_ref().first_chunk::<32>() else {
            return false;
        };
        // The hash is as long as n: e < 2^256 < 2n, one subtraction reduces.
        let mut e = limbs(e_be);
        if !lt(&e, &N) {
            e = sub_int(&e, &N);
        }
        let w = inverse_mod_n(&s);
        if is_zero(&w) {
            return false;
        }
        let w = Sc::from_int(&w);
        let (u1, u2) = (w.times_int(&e), w.times_int(&r));
        let sum = self.gen.add_multiple(Proj::identity(), &u1);
        let sum = self.table.add_multiple(sum, &u2);
        x_mod_n_is(&sum, &r)
    }
}

/// Whether `x(sum) mod n == r`, for `r < n`; false for the identity.
/// `x(sum) = X/Z < p`, so `x ≡ r (mod n)` means `x = r` or `x = r + n`
/// (the latter only when `r + n < p`), checked as `X = r·Z` without
/// inverting `Z`.
fn x_mod_n_is(sum: &Proj, r: &[u64; 4]) -> bool {
    if sum.z.is_zero() {
        return false;
    }
    let x_is = |v: &[u64; 4]| Fe::from_int(v).is_some_and(|v| v.mul(&sum.z) == sum.x);
    if x_is(r) {
        return true;
    }
    match add_int(r, &N) {
        (rn, false) => x_is(&rn),
        (_, true) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, UnparsedPublicKey};

    fn keypair() -> EcdsaKeyPair {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("generate");
        EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .expect("parse")
    }

    fn aws_lc(public: &[u8], message: &[u8], sig: &[u8]) -> bool {
        UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, public)
            .verify(message, sig)
            .is_ok()
    }

    #[test]
    fn constants_are_the_curve() {
        assert!(!CURVE_B.is_zero());
        let g = GENERATOR;
        assert!(on_curve(&g));
        // n·G is the identity: (n−1)·G = −G.
        let t = generator_table().expect("generator");
        let nm1 = sub_int(&N, &[1, 0, 0, 0]);
        let p = t.add_multiple(Proj::identity(), &nm1);
        let zi = p.z.invert();
        assert!(p.x.mul(&zi) == g.x && p.y.mul(&zi) == g.y.neg());
        let p = Proj::from_affine(&g).add(&p);
        assert!(p.z.is_zero());
    }

    fn recoding_sums_back_for<const W: usize>() {
        for k in [
            [0u64; 4],
            [1, 0, 0, 0],
            [u64::MAX; 4],
            N,
            [0x40, 0, 0, 0],
            [0x41, 0, 0, 0],
            [0x200, 0, 0, 0],
            [0x201, 0, 0, 0],
            [0x7f, 0xffff, 0x1234_5678_9abc_def0, 0x8000_0000_0000_0000],
        ] {
            let d = recode::<W>(&k);
            let half = 1i128 << (W - 1);
            // Σ d_i 2^(W·i), rebuilt limb by limb with signed carries.
            let mut acc = [0i128; 6];
            for (i, &di) in d.iter().enumerate() {
                if i >= windows(W) {
                    assert_eq!(di, 0);
                    continue;
                }
                assert!((-half < i128::from(di)) && (i128::from(di) <= half));
                let bit = i * W;
                let (limb, shift) = (bit / 64, bit % 64);
                // Split so that no term overflows i128.
                acc[limb] += (i128::from(di) << shift) & ((1i128 << 64) - 1);
                acc[limb + 1] += (i128::from(di) << shift) >> 64;
            }
            let mut out = [0u64; 4];
            let mut carry = 0i128;
            for i in 0..4 {
                let v = acc[i] + carry;
                out[i] = v as u64;
                carry = v >> 64;
            }
            assert_eq!(out, k, "W = {W}");
            assert_eq!(acc[4] + acc[5] + carry, 0, "W = {W}: nothing above 2^256");
        }
    }

    #[test]
    fn recoding_sums_back() {
        recoding_sums_back_for::<KEY_W>();
        recoding_sums_back_for::<GEN_W>();
        recoding_sums_back_for::<8>();
    }

    #[test]
    fn inverses() {
        let x = Fe::from_int(&[12345, 6789, 1, 2]).expect("fe");
        assert!(x.mul(&x.invert()) == Fe::ONE);
        let s = Sc::from_int(&[98765, 4321, 3, 4]);
        assert!(s.mul(&s.invert()) == Sc::one());
    }

    /// The Montgomery product equals fiat's (the machine-checked one), on
    /// random elements and on the values next to 0 and p.
    #[test]
    fn mont_mul_agrees_with_fiat() {
        use aws_lc_rs::rand::{SecureRandom, SystemRandom};
        let fiat = |a: &[u64; 4], b: &[u64; 4]| {
            let mut o = fp::fiat_p256_montgomery_domain_field_element([0; 4]);
            fp::fiat_p256_mul(
                &mut o,
                &fp::fiat_p256_montgomery_domain_field_element(*a),
                &fp::fiat_p256_montgomery_domain_field_element(*b),
            );
            o.0
        };
        let pm = |k: u64| sub_int(&P, &[k, 0, 0, 0]);
        let mut values = vec![
            [0u64; 4],
            [1, 0, 0, 0],
            [2, 0, 0, 0],
            pm(1),
            pm(2),
            pm(0xffff_ffff),
            [u64::MAX, 0, 0, 0],
            [u64::MAX, u64::MAX, 0, 0],
            [0, 0, 0, 0xffff_ffff_0000_0000],
            [0, 0, u64::MAX, 0xffff_ffff_0000_0000],
            [u64::MAX, 0xffff_ffff, 0, 0xffff_fffe_ffff_ffff],
            Fe::ONE.0,
        ];
        let rng = SystemRandom::new();
        for _ in 0..3000 {
            let mut b = [0u8; 32];
            rng.fill(&mut b).expect("rng");
            let v = limbs(&b);
            values.push(if lt(&v, &P) { v } else { sub_int(&v, &P) });
        }
        for (i, a) in values.iter().enumerate() {
            for b in values.iter().skip(i % 7).step_by(37) {
                assert_eq!(mont_mul(a, b), fiat(a, b), "{a:x?} · {b:x?}");
            }
            assert_eq!(mont_mul(a, a), fiat(a, a));
        }
        for m in [
            0u64,
            1,
            0xffff_ffff,
            0x1_0000_0000,
            u64::MAX,
            0x8000_0000_0000_0001,
        ] {
            let (_, _, lo, hi) = round_terms(m);
            let want = u128::from(m) * u128::from(0xffff_ffff_0000_0001u64);
            assert_eq!((u128::from(hi) << 64) | u128::from(lo), want, "m = {m:x}");
        }
    }

    /// The binary inversion agrees with Fermat's on random and edge values.
    #[test]
    fn inverse_mod_n_agrees_with_fermat() {
        use aws_lc_rs::rand::{SecureRandom, SystemRandom};
        let rng = SystemRandom::new();
        let mut values = vec![
            [1u64, 0, 0, 0],
            [2, 0, 0, 0],
            sub_int(&N, &[1, 0, 0, 0]),
            sub_int(&N, &[2, 0, 0, 0]),
            [0, 0, 0, 1 << 63],
        ];
        for _ in 0..500 {
            let mut b = [0u8; 32];
            rng.fill(&mut b).expect("rng");
            let mut v = limbs(&b);
            while !lt(&v, &N) {
                v = sub_int(&v, &N);
            }
            if !is_zero(&v) {
                values.push(v);
            }
        }
        for v in values {
            let inv = inverse_mod_n(&v);
            assert!(lt(&inv, &N));
            let fermat = Sc::from_int(&v).invert().to_int();
            assert_eq!(inv, fermat);
            assert!(Sc::from_int(&v).mul(&Sc::from_int(&inv)) == Sc::one());
        }
        assert_eq!(inverse_mod_n(&[0; 4]), [0; 4]);
    }

    #[test]
    fn halving_steps_are_divisions() {
        assert_eq!(N[0].wrapping_mul(NEG_N0_INV.wrapping_neg()), 1);
        let two = Sc::from_int(&[2, 0, 0, 0]);
        for x in [[1u64, 0, 0, 0], [3, 5, 7, 11], sub_int(&N, &[1, 0, 0, 0])] {
            for k in [1u32, 2, 7, 31, 63] {
                let d = div_pow2_mod_n(&x, k);
                assert!(lt(&d, &N));
                // d·2^k ≡ x (mod n)
                let mut back = Sc::from_int(&d);
                for _ in 0..k {
                    back = back.mul(&two);
                }
                assert_eq!(back.to_int(), x, "x = {x:x?}, k = {k}");
            }
        }
    }

    #[test]
    fn agrees_with_aws_lc() {
        let rng = SystemRandom::new();
        for k in 0..8 {
            let kp = keypair();
            let public = kp.public_key().as_ref().to_vec();
            let key = P256Key::from_sec1(&public).expect("table");
            for i in 0..40 {
                let msg = format!("eyJhbGciOiJFUzI1NiJ9.key {k} message {i}");
                let sig = kp.sign(&rng, msg.as_bytes()).expect("sign");
                let sig = sig.as_ref();
                assert!(key.verify(msg.as_bytes(), sig), "valid signature refused");
                assert!(aws_lc(&public, msg.as_bytes(), sig));
                // Every single-bit flip of the signature, and a changed
                // message: both verifiers refuse.
                for bit in (0..512).step_by(13) {
                    let mut bad = sig.to_vec();
                    bad[bit / 8] ^= 1 << (bit % 8);
                    assert_eq!(
                        key.verify(msg.as_bytes(), &bad),
                        aws_lc(&public, msg.as_bytes(), &bad)
                    );
                    assert!(!key.verify(msg.as_bytes(), &bad));
                }
                assert!(!key.verify(format!("{msg}.").as_bytes(), sig));
            }
        }
    }

    /// A key pair made once for the property tests.
    fn fixed() -> &'static (EcdsaKeyPair, P256Key) {
        static KEY: OnceLock<(EcdsaKeyPair, P256Key)> = OnceLock::new();
        KEY.get_or_init(|| {
            let pair = keypair();
            let table = P256Key::from_sec1(pair.public_key().as_ref()).expect("table");
            (pair, table)
        })
    }

    proptest::proptest! {
        /// Arbitrary bytes as the signature, arbitrary message: refused,
        /// as aws-lc refuses them.
        #[test]
        fn arbitrary_signatures_refused_like_aws_lc(
            message in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..48),
            sig in proptest::collection::vec(proptest::prelude::any::<u8>(), 64),
        ) {
            let (pair, table) = fixed();
            let ours = table.verify(&message, &sig);
            proptest::prop_assert_eq!(ours, aws_lc(pair.public_key().as_ref(), &message, &sig));
            proptest::prop_assert!(!ours);
        }

        /// A real signature XORed with arbitrary bytes: the same decision
        /// as aws-lc (accepted only when nothing changed).
        #[test]
        fn tampered_signatures_decided_like_aws_lc(
            message in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..48),
            flips in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let (pair, table) = fixed();
            let good = pair.sign(&SystemRandom::new(), &message).expect("sign");
            let mut sig = good.as_ref().to_vec();
            for (s, f) in sig.iter_mut().zip(&flips) {
                *s ^= f;
            }
            let unchanged = flips.iter().all(|&f| f == 0);
            let ours = table.verify(&message, &sig);
            proptest::prop_assert_eq!(ours, aws_lc(pair.public_key().as_ref(), &message, &sig));
            proptest::prop_assert_eq!(ours, unchanged);
        }

        /// Arbitrary coordinates: no table unless the point is on the curve
        /// (and then aws-lc accepts the key too).
        #[test]
        fn arbitrary_points_refused(xy in proptest::collection::vec(proptest::prelude::any::<u8>(), 64)) {
            let mut point = vec![4u8];
            point.extend_from_slice(&xy);
            let parsed = aws_lc_rs::signature::ParsedPublicKey::new(
                &signature::ECDSA_P256_SHA256_FIXED,
                &point,
            );
            proptest::prop_assert_eq!(P256Key::from_sec1(&point).is_some(), parsed.is_ok());
        }
    }

    /// Wycheproof's ECDSA P-256/SHA-256 vectors in the JWS (P1363 `r ‖ s`)
    /// form: every valid signature verifies, every invalid one is refused
    /// (out-of-range and modified `r`/`s`, `r + n`, special points and
    /// Shamir-trick edge cases, arithmetic edge cases among them), and the
    /// "acceptable" ones are decided as aws-lc decides them.
    #[test]
    fn wycheproof_p1363_vectors() {
        use wycheproof::ecdsa::{TestName, TestSet};
        use wycheproof::TestResult;
        let set = TestSet::load(TestName::EcdsaSecp256r1Sha256P1363).expect("vectors");
        let (mut valid, mut invalid) = (0, 0);
        for group in &set.test_groups {
            let point: &[u8] = &group.key.key;
            let key = P256Key::from_sec1(point);
            for t in &group.tests {
                let ours = key.as_ref().is_some_and(|k| k.verify(&t.msg, &t.sig));
                match t.result {
                    TestResult::Valid => {
                        assert!(ours, "tc {} refused: {}", t.tc_id, t.comment);
                        valid += 1;
                    }
                    TestResult::Invalid => {
                        assert!(!ours, "tc {} accepted: {}", t.tc_id, t.comment);
                        invalid += 1;
                    }
                    TestResult::Acceptable => {
                        assert_eq!(ours, aws_lc(point, &t.msg, &t.sig), "tc {}", t.tc_id);
                    }
                }
            }
        }
        assert!(
            valid > 150 && invalid > 80,
            "{valid} valid, {invalid} invalid"
        );
    }

    #[test]
    fn other_keys_signature_refused() {
        let rng = SystemRandom::new();
        let (a, b) = (keypair(), keypair());
        let key_b = P256Key::from_sec1(b.public_key().as_ref()).expect("table");
        let sig = a.sign(&rng, b"m").expect("sign");
        assert!(!key_b.verify(b"m", sig.as_ref()));
    }

    #[test]
    fn edge_values_refused() {
        let kp = keypair();
        let key = P256Key::from_sec1(kp.public_key().as_ref()).expect("table");
        let n_be = {
            let mut out = [0u8; 32];
            for (i, l) in N.iter().enumerate() {
                out[32 - 8 * (i + 1)..32 - 8 * i].copy_from_slice(&l.to_be_bytes());
            }
            out
        };
        let one = {
            let mut o = [0u8; 32];
            o[31] = 1;
            o
        };
        for (r, s) in [
            ([0u8; 32], one),
            (one, [0u8; 32]),
            (n_be, one),
            (one, n_be),
            ([0xff; 32], one),
            (one, [0xff; 32]),
        ] {
            let sig: Vec<u8> = r.iter().chain(s.iter()).copied().collect();
            assert!(!key.verify(b"m", &sig));
        }
        assert!(!key.verify(b"m", &[0u8; 63]));
        assert!(!key.verify(b"m", &[0u8; 65]));
        assert!(!key.verify(b"m", &[]));
    }

    #[test]
    fn points_off_the_curve_refused() {
        let kp = keypair();
        let mut p = kp.public_key().as_ref().to_vec();
        assert!(P256Key::from_sec1(&p).is_some());
        p[64] ^= 1;
        assert!(P256Key::from_sec1(&p).is_none());
        p[64] ^= 1;
        p[0] = 2;
        assert!(P256Key::from_sec1(&p).is_none());
        assert!(P256Key::from_sec1(&p[..64]).is_none());
        // x = p (not reduced) is refused rather than wrapped.
        let mut q = vec![4u8];
        q.extend_from_slice(&le_bytes(&P).iter().rev().copied().collect::<Vec<_>>());
        q.extend_from_slice(&[0u8; 32]);
        assert!(P256Key::from_sec1(&q).is_none());
    }

    #[test]
    fn x_at_or_above_n_compares_mod_n() {
        // x(R) ≥ n has probability ~2^-128 for a real signature, so the
        // comparison is checked on constructed values: X/Z = v with v ≥ n.
        let z = Fe::from_int(&[7, 11, 13, 17]).expect("z");
        let at = |v: &[u64; 4]| Proj {
            x: Fe::from_int(v).expect("v < p").mul(&z),
            y: Fe::ONE,
            z,
        };
        let v = add_int(&N, &[5, 0, 0, 0]).0; // n + 5 < p
        assert!(x_mod_n_is(&at(&v), &[5, 0, 0, 0]));
        assert!(!x_mod_n_is(&at(&v), &[6, 0, 0, 0]));
        assert!(!x_mod_n_is(&at(&v), &[4, 0, 0, 0]));
        assert!(x_mod_n_is(&at(&[9, 0, 0, 0]), &[9, 0, 0, 0]));
        assert!(!x_mod_n_is(&at(&[9, 0, 0, 0]), &[8, 0, 0, 0]));
        // The identity never matches.
        assert!(!x_mod_n_is(&Proj::identity(), &[0, 0, 0, 0]));
    }

    /// Little-endian limbs → little-endian bytes (fiat's byte order).
    fn le_bytes(a: &[u64; 4]) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, limb) in a.iter().enumerate() {
            out[8 * i..8 * i + 8].copy_from_slice(&limb.to_le_bytes());
        }
        out
    }
}
