//! Axis ticks for charts, shared by the CLI's SVG plots and the browser's live charts.

/// "Nice" tick positions covering [lo, hi]: steps of 1, 2 or 5 times a power of ten.
pub fn ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    if !(hi > lo) {
        return vec![lo];
    }
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 100.0, 5), vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        assert_eq!(ticks(1.3, 2.9, 4), vec![1.5, 2.0, 2.5]);
        assert_eq!(ticks(3.0, 3.0, 4), vec![3.0]);
    }
}
