//! Choosing what to remove: the `k` lowest of a list of scores, with ties broken by
//! position so that the same model and settings always prune the same weights.

/// A mask of `scores.len()` entries, true at the `k` lowest scores (all of them when
/// `k ≥ len`). Equal scores go lowest index first: the order is `(score, index)`, a total
/// order (`f32::total_cmp`), so the result never depends on the sorting algorithm.
pub fn lowest(scores: &[f32], k: usize) -> Vec<bool> {
    let n = scores.len();
    let mut mask = vec![false; n];
    if k == 0 {
        return mask;
    }
    if k >= n {
        return vec![true; n];
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.select_nth_unstable_by(k - 1, |&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    for &i in &order[..k] {
        mask[i] = true;
    }
    mask
}

/// The entries `lowest` leaves: the indices of the `n - k` highest scores, in index order.
pub fn kept(scores: &[f32], k_removed: usize) -> Vec<usize> {
    lowest(scores, k_removed).iter().enumerate().filter(|(_, gone)| !**gone).map(|(i, _)| i).collect()
}

/// `floor(share · n)`, the number of entries a share of `n` removes. A product that lands a
/// rounding error below a whole number (0.29 · 100 = 28.999…) counts as that number.
pub fn share_of(share: f64, n: usize) -> usize {
    ((share * n as f64) + 1e-6).floor().min(n as f64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_breaks_ties_by_index_and_counts_exactly() {
        let s = [3.0, 1.0, 2.0, 1.0, 0.5, 1.0];
        assert_eq!(lowest(&s, 0), vec![false; 6]);
        assert_eq!(lowest(&s, 2), vec![false, true, false, false, true, false]);
        assert_eq!(lowest(&s, 3), vec![false, true, false, true, true, false]);
        assert_eq!(lowest(&s, 9), vec![true; 6]);
        assert_eq!(kept(&s, 4), vec![0, 2]);
        assert_eq!(share_of(0.29, 100), 29);
        assert_eq!(share_of(0.5, 7), 3);
        assert_eq!(share_of(0.0, 7), 0);
    }
}
