//! Order statistics of samples, for the benchmarks and the capture checks:
//! one median, one nearest-rank percentile.

/// The median of `v` (the upper middle for an even count); `None` if empty.
pub fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// min, p50, p99, max of unsorted values; `None` when empty.
pub fn summary(values: &[f64]) -> Option<[f64; 4]> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let (first, last) = (*v.first()?, *v.last()?);
    Some([first, percentile(&v, 50.0), percentile(&v, 99.0), last])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(3.0));
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=30).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 15.0);
        assert_eq!(percentile(&v, 99.0), 30.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        let h: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&h, 99.0), 198.0);
        assert_eq!(summary(&[3.0, 1.0, 2.0]), Some([1.0, 2.0, 3.0, 3.0]));
        assert_eq!(summary(&[]), None);
    }
}
