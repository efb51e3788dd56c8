//! A network's passes for a few rows when its widths are compile-time constants (`c`, `o` ≤
//! [`MAX_WIDTH`](super::MAX_WIDTH)): the rows' hidden units and every output's accumulator stay in
//! SIMD registers, and no activation is stored.
// The lane loops index several arrays in step; written as index loops they vectorise predictably.
#![allow(clippy::needless_range_loop)]

use super::net::{fma, hsum, leaky, Blocks, BlocksMut, Lane, LANES, SLOPE};

/// The network's outputs for `R` rows of inputs.
#[inline(always)]
pub(super) fn net_forward<const R: usize, const C: usize, const O: usize, const F: bool>(
    net: &Blocks<'_, C, O>,
    x: &[[f32; C]; R],
) -> [[f32; O]; R] {
    let mut acc = [[[0.0f32; LANES]; O]; R];
    let nb = net.blocks();
    // the last block apart, so that only it pays for masking the padded units
    for b in 0..nb - 1 {
        forward_block::<R, C, O, F>(net, b, LANES, x, &mut acc);
    }
    forward_block::<R, C, O, F>(net, nb - 1, net.last_valid, x, &mut acc);
    std::array::from_fn(|r| std::array::from_fn(|o| hsum(&acc[r][o]) + net.b2[o]))
}

/// Hidden block `b` of the forward pass; lanes from `valid` on are padding.
#[inline(always)]
fn forward_block<const R: usize, const C: usize, const O: usize, const F: bool>(
    net: &Blocks<'_, C, O>,
    b: usize,
    valid: usize,
    x: &[[f32; C]; R],
    acc: &mut [[Lane; O]; R],
) {
    let b1 = &net.b1[b];
    let w1: [&Lane; C] = std::array::from_fn(|c| &net.w1[c][b]);
    let w2: [&Lane; O] = std::array::from_fn(|o| &net.w2[o][b]);
    for r in 0..R {
        let mut h = *b1;
        for c in 0..C {
            for l in 0..LANES {
                h[l] = fma::<F>(w1[c][l], x[r][c], h[l]);
            }
        }
        let mut h = leaky(&h);
        if valid < LANES {
            h[valid..].fill(0.0);
        }
        for o in 0..O {
            for l in 0..LANES {
                acc[r][o][l] = fma::<F>(w2[o][l], h[l], acc[r][o][l]);
            }
        }
    }
}

/// Backpropagates `gout` (∂loss/∂output) of `R` rows through the network: adds the weight
/// gradients to `g` and returns ∂loss/∂input.
#[inline(always)]
pub(super) fn net_backward<const R: usize, const C: usize, const O: usize, const F: bool>(
    net: &Blocks<'_, C, O>,
    g: &mut BlocksMut<'_, C, O>,
    x: &[[f32; C]; R],
    gout: &[[f32; O]; R],
) -> [[f32; C]; R] {
    let mut dx = [[[0.0f32; LANES]; C]; R];
    let nb = net.blocks();
    for b in 0..nb - 1 {
        backward_block::<R, C, O, F>(net, g, b, LANES, x, gout, &mut dx);
    }
    backward_block::<R, C, O, F>(net, g, nb - 1, net.last_valid, x, gout, &mut dx);
    for row in gout {
        for o in 0..O {
            g.b2[o] += row[o];
        }
    }
    std::array::from_fn(|r| std::array::from_fn(|c| hsum(&dx[r][c])))
}

/// Hidden block `b` of the backward pass; lanes from `valid` on are padding.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn backward_block<const R: usize, const C: usize, const O: usize, const F: bool>(
    net: &Blocks<'_, C, O>,
    g: &mut BlocksMut<'_, C, O>,
    b: usize,
    valid: usize,
    x: &[[f32; C]; R],
    gout: &[[f32; O]; R],
    dx: &mut [[Lane; C]; R],
) {
    let b1 = &net.b1[b];
    let w1: [&Lane; C] = std::array::from_fn(|c| &net.w1[c][b]);
    let w2: [&Lane; O] = std::array::from_fn(|o| &net.w2[o][b]);
    let mut gw1 = [[0.0f32; LANES]; C];
    let mut gb1 = [0.0f32; LANES];
    let mut gw2 = [[0.0f32; LANES]; O];
    for r in 0..R {
        let mut h = *b1;
        for c in 0..C {
            for l in 0..LANES {
                h[l] = fma::<F>(w1[c][l], x[r][c], h[l]);
            }
        }
        let mut da = [0.0f32; LANES];
        for o in 0..O {
            for l in 0..LANES {
                da[l] = fma::<F>(w2[o][l], gout[r][o], da[l]);
            }
        }
        let mut a = [0.0f32; LANES];
        let mut dh = [0.0f32; LANES];
        for l in 0..LANES {
            let pos = h[l] > 0.0;
            a[l] = if pos { h[l] } else { h[l] * SLOPE };
            dh[l] = if pos { da[l] } else { da[l] * SLOPE };
        }
        if valid < LANES {
            a[valid..].fill(0.0);
            dh[valid..].fill(0.0);
        }
        for o in 0..O {
            for l in 0..LANES {
                gw2[o][l] = fma::<F>(a[l], gout[r][o], gw2[o][l]);
            }
        }
        for l in 0..LANES {
            gb1[l] += dh[l];
        }
        for c in 0..C {
            for l in 0..LANES {
                gw1[c][l] = fma::<F>(dh[l], x[r][c], gw1[c][l]);
                dx[r][c][l] = fma::<F>(dh[l], w1[c][l], dx[r][c][l]);
            }
        }
    }
    let nb = net.blocks();
    for l in 0..LANES {
        g.b1[b][l] += gb1[l];
    }
    for c in 0..C {
        for l in 0..LANES {
            g.w1t[c * nb + b][l] += gw1[c][l];
        }
    }
    for o in 0..O {
        for l in 0..LANES {
            g.w2[o * nb + b][l] += gw2[o][l];
        }
    }
}
