//! A conditioner network `Linear(c, hidden) → LeakyReLU → Linear(hidden, o)` as the fused kernels
//! store it, and the SIMD lane blocks they read it through.
//!
//! Packed layout (one network): `W₁ᵀ [c × hp]`, `b₁ [hp]`, `W₂ [o × hp]`, `b₂ [o]`, with the
//! hidden width padded with zeros to `hp`, a multiple of [`LANES`].
// The lane loops index several arrays in step; written as index loops they vectorise predictably.
#![allow(clippy::needless_range_loop)]

/// SIMD lanes the hidden loop is written for (one AVX2 register of f32).
pub(super) const LANES: usize = 8;
/// LeakyReLU's negative slope (PyTorch's default).
pub(super) const SLOPE: f32 = 0.01;

/// `LANES` hidden units.
pub(super) type Lane = [f32; LANES];

/// Length of one packed network.
pub(super) fn net_len(c: usize, o: usize, hp: usize) -> usize {
    (c + 1 + o) * hp + o
}

/// `a·b + c`, fused into one rounding where `F` (the AVX2 + FMA build).
#[inline(always)]
pub(super) fn fma<const F: bool>(a: f32, b: f32, c: f32) -> f32 {
    if F {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Sums the lanes in a fixed order.
#[inline(always)]
pub(super) fn hsum(v: &Lane) -> f32 {
    let mut h = [0.0f32; LANES / 2];
    for l in 0..LANES / 2 {
        h[l] = v[l] + v[l + LANES / 2];
    }
    (h[0] + h[2]) + (h[1] + h[3])
}

/// LeakyReLU of a lane block.
#[inline(always)]
pub(super) fn leaky(h: &Lane) -> Lane {
    // a plain loop: `array::from_fn` would not vectorise
    let mut a = [0.0f32; LANES];
    for l in 0..LANES {
        a[l] = if h[l] > 0.0 { h[l] } else { h[l] * SLOPE };
    }
    a
}

/// A packed network viewed as blocks of `LANES` hidden units, for at most `C` inputs and `O`
/// outputs (exactly `c` and `o` of them in use; the narrow kernels have `c = C`, `o = O`).
pub(super) struct Blocks<'a, const C: usize, const O: usize> {
    /// Inputs in use.
    pub c: usize,
    /// Outputs in use.
    pub o: usize,
    /// `W₁ᵀ`: `c` runs of `nb` blocks.
    pub w1t: &'a [Lane],
    pub w1: [&'a [Lane]; C],
    pub b1: &'a [Lane],
    /// `W₂`: `o` runs of `nb` blocks.
    pub w2flat: &'a [Lane],
    pub w2: [&'a [Lane]; O],
    pub b2: [f32; O],
    /// `W₁ᵀ` in panels for the tiled kernels' tiles of `panel` blocks (empty: none): for each
    /// run of `panel` blocks, every input's `panel` blocks one after the other, so that a tile
    /// reads its weights from one place in memory instead of one row of `W₁ᵀ` per input.
    pub w1p: &'a [Lane],
    /// `W₂` in panels likewise (every output's blocks of a run one after the other).
    pub w2p: &'a [Lane],
    /// Blocks per panel of `w1p` and `w2p`.
    pub panel: usize,
    /// Real hidden units in the last block (the rest is padding, masked to exactly zero so that
    /// infinite inputs cannot turn `0 · ∞` into NaN).
    pub last_valid: usize,
}

/// Views `s` as lane blocks (its length is a multiple of `LANES` by the packing).
#[inline(always)]
fn lanes(s: &[f32]) -> &[Lane] {
    s.as_chunks::<LANES>().0
}

impl<'a, const C: usize, const O: usize> Blocks<'a, C, O> {
    /// The network packed at the start of `p` with `c ≤ C` inputs, `o ≤ O` outputs and `hidden`
    /// units padded to `hp`.
    #[inline(always)]
    pub fn new(p: &'a [f32], c: usize, o: usize, hidden: usize, hp: usize) -> Self {
        let (w1t, rest) = p.split_at(c * hp);
        let (b1, rest) = rest.split_at(hp);
        let (w2, b2) = rest.split_at(o * hp);
        let nb = hp / LANES;
        let (w1t, w2) = (lanes(w1t), lanes(w2));
        Blocks {
            c,
            o,
            w1t,
            w1: std::array::from_fn(|i| if i < c { &w1t[i * nb..(i + 1) * nb] } else { &[] }),
            b1: lanes(b1),
            w2flat: w2,
            w2: std::array::from_fn(|i| if i < o { &w2[i * nb..(i + 1) * nb] } else { &[] }),
            b2: std::array::from_fn(|i| if i < o { b2[i] } else { 0.0 }),
            w1p: &[],
            w2p: &[],
            panel: 0,
            last_valid: hidden - (hp - LANES),
        }
    }

    /// `W₁ᵀ` then `W₂` in panels of `panel` blocks (the layouts of [`Blocks::w1p`] and
    /// [`Blocks::w2p`]; the last blocks, fewer than a panel, are left out); empty for 0.
    pub fn panels(&self, panel: usize) -> Vec<Lane> {
        let nb = self.blocks();
        if panel == 0 {
            return Vec::new();
        }
        let whole = nb / panel * panel;
        let mut out = Vec::with_capacity(whole * (self.c + self.o));
        for (w, rows) in [(self.w1t, self.c), (self.w2flat, self.o)] {
            for b0 in (0..whole).step_by(panel) {
                for row in w.chunks_exact(nb).take(rows) {
                    out.extend_from_slice(&row[b0..b0 + panel]);
                }
            }
        }
        out
    }

    /// This network reading its weights from `panels` ([`Blocks::panels`] of `panel` blocks).
    pub fn with_panels<'b>(&self, panels: &'b [Lane], panel: usize) -> Blocks<'b, C, O>
    where
        'a: 'b,
    {
        let whole = self.blocks().checked_div(panel).map_or(0, |runs| runs * panel);
        debug_assert_eq!(panels.len(), whole * (self.c + self.o), "panels of another network");
        let (w1p, w2p) = panels.split_at(whole * self.c);
        Blocks { w1p, w2p, panel, ..*self }
    }

    /// Hidden blocks.
    #[inline(always)]
    pub fn blocks(&self) -> usize {
        self.b1.len()
    }

    /// Real units of block `b`.
    #[inline(always)]
    pub fn valid(&self, b: usize) -> usize {
        if b + 1 == self.blocks() {
            self.last_valid
        } else {
            LANES
        }
    }
}

/// A network's gradient accumulators viewed as blocks (same layout).
pub(super) struct BlocksMut<'a, const C: usize, const O: usize> {
    pub w1t: &'a mut [Lane],
    pub b1: &'a mut [Lane],
    pub w2: &'a mut [Lane],
    pub b2: &'a mut [f32],
}

impl<'a, const C: usize, const O: usize> BlocksMut<'a, C, O> {
    /// The accumulators packed at the start of `g`, for `c` inputs and `o` outputs.
    #[inline(always)]
    pub fn new(g: &'a mut [f32], c: usize, o: usize, hp: usize) -> Self {
        let (w1t, rest) = g.split_at_mut(c * hp);
        let (b1, rest) = rest.split_at_mut(hp);
        let (w2, b2) = rest.split_at_mut(o * hp);
        BlocksMut {
            w1t: w1t.as_chunks_mut::<LANES>().0,
            b1: b1.as_chunks_mut::<LANES>().0,
            w2: w2.as_chunks_mut::<LANES>().0,
            b2: &mut b2[..o],
        }
    }
}
