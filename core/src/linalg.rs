//! The singular value decomposition, on the host in f64, for PiSSA's initialisation and the
//! LoRA-rank lesson's spectra. One-sided Jacobi (Hestenes): rotate pairs of columns until
//! all are orthogonal; their norms are then the singular values. Simple, accurate to
//! working precision, and fast enough for the matrices these need (up to a few hundred on
//! the short side); `top` switches to randomized subspace iteration beyond that.

/// `A = U·diag(S)·Vᵀ` for an `m × n` matrix, with `k = min(m, n)` singular values in
/// decreasing order. `u` is `m × k` and `vt` is `k × n`, both row-major.
#[derive(Clone, Debug)]
pub struct Svd {
    pub m: usize,
    pub n: usize,
    pub u: Vec<f64>,
    pub s: Vec<f64>,
    pub vt: Vec<f64>,
}

impl Svd {
    pub fn k(&self) -> usize {
        self.s.len()
    }

    /// `Σ_{i<r} σ_i·u_i·v_iᵀ`, row-major `m × n`: the best rank-r approximation (Eckart–Young).
    pub fn truncated(&self, r: usize) -> Vec<f64> {
        let (m, n, k) = (self.m, self.n, self.k());
        let mut out = vec![0.0; m * n];
        for i in 0..r.min(k) {
            for row in 0..m {
                let a = self.u[row * k + i] * self.s[i];
                if a == 0.0 {
                    continue;
                }
                let dst = &mut out[row * n..(row + 1) * n];
                for (d, v) in dst.iter_mut().zip(&self.vt[i * n..(i + 1) * n]) {
                    *d += a * v;
                }
            }
        }
        out
    }
}

/// The SVD of row-major `a` (`m × n`).
pub fn svd(a: &[f32], m: usize, n: usize) -> Svd {
    assert_eq!(a.len(), m * n, "svd: {} values for a {m}×{n} matrix", a.len());
    let a64: Vec<f64> = a.iter().map(|&x| x as f64).collect();
    if m >= n { jacobi(&a64, m, n) } else { transpose_svd(jacobi(&transpose(&a64, m, n), n, m)) }
}

fn transpose(a: &[f64], m: usize, n: usize) -> Vec<f64> {
    let mut t = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            t[j * m + i] = a[i * n + j];
        }
    }
    t
}

/// The SVD of Aᵀ turned into A's: swap U and V.
fn transpose_svd(t: Svd) -> Svd {
    let k = t.k();
    Svd { m: t.n, n: t.m, u: transpose(&t.vt, k, t.n), s: t.s, vt: transpose(&t.u, t.m, k) }
}

/// One-sided Jacobi for `m ≥ n`.
fn jacobi(a: &[f64], m: usize, n: usize) -> Svd {
    // Columns of A (rotated in place into U·Σ) and of V (starting at the identity).
    let mut cols: Vec<Vec<f64>> = (0..n).map(|j| (0..m).map(|i| a[i * n + j]).collect()).collect();
    let mut v: Vec<Vec<f64>> = (0..n).map(|j| (0..n).map(|i| if i == j { 1.0 } else { 0.0 }).collect()).collect();
    let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(a, b)| a * b).sum::<f64>();
    for _sweep in 0..60 {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let alpha = dot(&cols[p], &cols[p]);
                let beta = dot(&cols[q], &cols[q]);
                let gamma = dot(&cols[p], &cols[q]);
                if gamma == 0.0 || gamma.abs() <= 1e-15 * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                rotate(&mut cols, p, q, c, s);
                rotate(&mut v, p, q, c, s);
            }
        }
        if !rotated {
            break;
        }
    }
    let mut order: Vec<(f64, usize)> = cols.iter().enumerate().map(|(j, c)| (dot(c, c).sqrt(), j)).collect();
    order.sort_by(|a, b| b.0.total_cmp(&a.0));
    let k = n;
    let (mut u, mut s, mut vt) = (vec![0.0; m * k], vec![0.0; k], vec![0.0; k * n]);
    for (i, &(sigma, j)) in order.iter().enumerate() {
        s[i] = sigma;
        for row in 0..m {
            u[row * k + i] = if sigma > 0.0 { cols[j][row] / sigma } else { 0.0 };
        }
        vt[i * n..(i + 1) * n].copy_from_slice(&v[j]);
    }
    Svd { m, n, u, s, vt }
}

fn rotate(cols: &mut [Vec<f64>], p: usize, q: usize, c: f64, s: f64) {
    let (left, right) = cols.split_at_mut(q);
    for (x, y) in left[p].iter_mut().zip(right[0].iter_mut()) {
        let (a, b) = (*x, *y);
        *x = c * a - s * b;
        *y = s * a + c * b;
    }
}

/// The top `r` singular triplets of row-major `a` (`m × n`): exact Jacobi when the short
/// side is at most 256, else randomized subspace iteration (Halko, Martinsson & Tropp,
/// 2011) with 8 oversampling columns and `iters` power iterations, seeded.
pub fn top(a: &[f32], m: usize, n: usize, r: usize, iters: usize, seed: u64) -> Svd {
    let r = r.min(m.min(n));
    let keep = |full: Svd| {
        let k = full.k();
        Svd {
            m: full.m,
            n: full.n,
            u: (0..full.m).flat_map(|row| full.u[row * k..row * k + r].to_vec()).collect(),
            s: full.s[..r].to_vec(),
            vt: full.vt[..r * full.n].to_vec(),
        }
    };
    if m.min(n) <= 256 {
        return keep(svd(a, m, n));
    }
    let a64: Vec<f64> = a.iter().map(|&x| x as f64).collect();
    let l = (r + 8).min(m.min(n));
    let mut rng = crate::data::rng::Rng::derive(seed, "svd-top");
    // Q: an orthonormal basis of A·Ω, sharpened by (A·Aᵀ)^iters.
    let omega: Vec<f64> = crate::init::normal(&mut rng, n * l, 1.0).into_iter().map(f64::from).collect();
    let mut q = orthonormal(matmul(&a64, &omega, m, n, l), m, l);
    let at = transpose(&a64, m, n);
    for _ in 0..iters {
        let z = orthonormal(matmul(&at, &q, n, m, l), n, l);
        q = orthonormal(matmul(&a64, &z, m, n, l), m, l);
    }
    // B = Qᵀ·A is l × n; its SVD gives A's: U = Q·U_B.
    let b = matmul(&transpose(&q, m, l), &a64, l, m, n);
    let small = svd(&b.iter().map(|&x| x as f32).collect::<Vec<_>>(), l, n);
    let kb = small.k();
    let u = matmul(&q, &small.u, m, l, kb);
    keep(Svd { m, n, u, s: small.s, vt: small.vt })
}

fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for p in 0..k {
            let x = a[i * k + p];
            if x == 0.0 {
                continue;
            }
            let row = &mut out[i * n..(i + 1) * n];
            for (o, y) in row.iter_mut().zip(&b[p * n..(p + 1) * n]) {
                *o += x * y;
            }
        }
    }
    out
}

/// Modified Gram–Schmidt on the `l` columns of row-major `m × l` `a`.
fn orthonormal(a: Vec<f64>, m: usize, l: usize) -> Vec<f64> {
    let mut cols: Vec<Vec<f64>> = (0..l).map(|j| (0..m).map(|i| a[i * l + j]).collect()).collect();
    for j in 0..l {
        for p in 0..j {
            let d: f64 = cols[p].iter().zip(&cols[j]).map(|(x, y)| x * y).sum();
            let (left, right) = cols.split_at_mut(j);
            for (y, x) in right[0].iter_mut().zip(&left[p]) {
                *y -= d * x;
            }
        }
        let norm = cols[j].iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm > 0.0 {
            cols[j].iter_mut().for_each(|x| *x /= norm);
        }
    }
    (0..m).flat_map(|i| cols.iter().map(move |c| c[i]).collect::<Vec<_>>()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(m: usize, n: usize, seed: u64) -> Vec<f32> {
        crate::init::normal(&mut crate::data::rng::Rng::new(seed), m * n, 1.0)
    }

    fn check_reconstructs(m: usize, n: usize) {
        let a = random(m, n, m as u64 * 31 + n as u64);
        let d = svd(&a, m, n);
        assert_eq!(d.k(), m.min(n));
        assert!(d.s.windows(2).all(|w| w[0] >= w[1]), "{m}×{n}: not sorted");
        let back = d.truncated(d.k());
        let err = a.iter().zip(&back).map(|(&x, y)| (x as f64 - y).abs()).fold(0.0, f64::max);
        assert!(err < 1e-9, "{m}×{n}: reconstruction error {err}");
        // U's columns are orthonormal.
        let k = d.k();
        for i in 0..k {
            for j in 0..k {
                let dot: f64 = (0..m).map(|r| d.u[r * k + i] * d.u[r * k + j]).sum();
                assert!((dot - if i == j { 1.0 } else { 0.0 }).abs() < 1e-9, "{m}×{n}: UᵀU[{i},{j}] = {dot}");
            }
        }
    }

    #[test]
    fn reconstructs_tall_wide_and_square() {
        check_reconstructs(12, 5);
        check_reconstructs(5, 12);
        check_reconstructs(9, 9);
    }

    #[test]
    fn a_known_spectrum_comes_back() {
        // diag(3, 2, 1) in a rotated basis has singular values 3, 2, 1 and rank-1 error 2.
        let (c, s) = (0.6f32, 0.8f32);
        let rot = [c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0];
        let diag = [3.0f32, 2.0, 1.0];
        let a: Vec<f32> = (0..9).map(|ij| rot[(ij / 3) * 3 + ij % 3] * diag[ij % 3]).collect();
        let d = svd(&a, 3, 3);
        for (got, want) in d.s.iter().zip([3.0, 2.0, 1.0]) {
            assert!((got - want).abs() < 1e-6, "{:?}", d.s);
        }
    }

    #[test]
    fn randomized_top_matches_jacobi_on_a_low_rank_matrix() {
        // A rank-6 300×280 matrix plus a little noise: the top 4 triplets agree.
        let (m, n, rank) = (300, 280, 6);
        let u = random(m, rank, 1);
        let v = random(rank, n, 2);
        let noise = random(m, n, 3);
        let a: Vec<f32> = (0..m * n).map(|ij| (0..rank).map(|p| u[(ij / n) * rank + p] * v[p * n + ij % n]).sum::<f32>() + 1e-3 * noise[ij]).collect();
        let fast = top(&a, m, n, 4, 4, 0);
        let exact = svd(&a, m, n);
        for i in 0..4 {
            assert!((fast.s[i] - exact.s[i]).abs() / exact.s[i] < 1e-6, "σ{i}: {} vs {}", fast.s[i], exact.s[i]);
        }
    }
}
