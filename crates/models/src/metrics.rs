//! Evaluation metrics on held-out rows.

/// Area under the ROC curve (Mann–Whitney U; tied scores count one half). `None` when one
/// class is absent.
pub fn auc(p: &[f64], y: &[f64]) -> Option<f64> {
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    // average ranks over ties
    let mut ranks = vec![0.0; p.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && p[idx[j + 1]] == p[idx[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            ranks[idx[k]] = r;
        }
        i = j + 1;
    }
    let pos = y.iter().filter(|v| **v > 0.5).count() as f64;
    let neg = y.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return None;
    }
    let rank_sum: f64 = ranks
        .iter()
        .zip(y)
        .filter(|(_, v)| **v > 0.5)
        .map(|(r, _)| r)
        .sum();
    Some((rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg))
}

/// Mean squared error of probabilities.
pub fn brier(p: &[f64], y: &[f64]) -> f64 {
    mean(p.iter().zip(y).map(|(p, y)| (p - y).powi(2)))
}

/// Expected calibration error over `bins` equal-width probability bins:
/// Σ (n_b / N) · |mean(p_b) − mean(y_b)|.
pub fn ece(p: &[f64], y: &[f64], bins: usize) -> f64 {
    let mut sum_p = vec![0.0; bins];
    let mut sum_y = vec![0.0; bins];
    let mut n = vec![0usize; bins];
    for (p, y) in p.iter().zip(y) {
        let b = ((p * bins as f64) as usize).min(bins - 1);
        sum_p[b] += p;
        sum_y[b] += y;
        n[b] += 1;
    }
    let total = p.len().max(1) as f64;
    (0..bins)
        .filter(|&b| n[b] > 0)
        .map(|b| n[b] as f64 / total * ((sum_p[b] - sum_y[b]) / n[b] as f64).abs())
        .sum()
}

/// Mean negative log-likelihood (probabilities clipped to [1e-15, 1 − 1e-15]).
pub fn log_loss(p: &[f64], y: &[f64]) -> f64 {
    mean(p.iter().zip(y).map(|(p, y)| {
        let p = p.clamp(1e-15, 1.0 - 1e-15);
        -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
    }))
}

/// Share of rows whose `p ≥ 0.5` agrees with the label.
pub fn accuracy(p: &[f64], y: &[f64]) -> f64 {
    mean(
        p.iter()
            .zip(y)
            .map(|(p, y)| f64::from(u8::from((*p >= 0.5) == (*y > 0.5)))),
    )
}

pub fn mae(pred: &[f64], y: &[f64]) -> f64 {
    mean(pred.iter().zip(y).map(|(p, y)| (p - y).abs()))
}

pub fn rmse(pred: &[f64], y: &[f64]) -> f64 {
    mean(pred.iter().zip(y).map(|(p, y)| (p - y).powi(2))).sqrt()
}

/// Coefficient of determination.
pub fn r2(pred: &[f64], y: &[f64]) -> f64 {
    let m = mean(y.iter().copied());
    let ss_tot: f64 = y.iter().map(|v| (v - m).powi(2)).sum();
    let ss_res: f64 = pred.iter().zip(y).map(|(p, y)| (p - y).powi(2)).sum();
    if ss_tot == 0.0 {
        0.0
    } else {
        1.0 - ss_res / ss_tot
    }
}

/// Share of labels inside their interval.
pub fn coverage(lo: &[f64], hi: &[f64], y: &[f64]) -> f64 {
    mean(
        y.iter()
            .zip(lo.iter().zip(hi))
            .map(|(y, (l, h))| f64::from(u8::from(*l <= *y && *y <= *h))),
    )
}

/// The conformal quantile: the ⌈(n+1)·level⌉-th smallest of `scores` (split conformal
/// prediction), or the largest when that rank exceeds n.
pub fn conformal_quantile(scores: &[f64], level: f64) -> f64 {
    let mut s = scores.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::INFINITY;
    }
    let rank = ((s.len() + 1) as f64 * level).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// Mean silhouette of `x` (rows) under `labels`, on at most `max_rows` evenly spaced rows.
pub fn silhouette(x: &[Vec<f64>], labels: &[usize], k: usize, max_rows: usize) -> f64 {
    let step = (x.len() / max_rows.max(1)).max(1);
    let idx: Vec<usize> = (0..x.len()).step_by(step).collect();
    let mut total = 0.0;
    let mut counted = 0usize;
    for &i in &idx {
        let mut sum = vec![0.0; k];
        let mut n = vec![0usize; k];
        for &j in &idx {
            if i == j {
                continue;
            }
            sum[labels[j]] += dist(&x[i], &x[j]);
            n[labels[j]] += 1;
        }
        let own = labels[i];
        if n[own] == 0 {
            continue;
        }
        let a = sum[own] / n[own] as f64;
        let b = (0..k)
            .filter(|&c| c != own && n[c] > 0)
            .map(|c| sum[c] / n[c] as f64)
            .fold(f64::INFINITY, f64::min);
        if b.is_finite() {
            total += (b - a) / a.max(b).max(1e-12);
            counted += 1;
        }
    }
    if counted == 0 {
        0.0
    } else {
        total / counted as f64
    }
}

pub fn dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

fn mean(it: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = it.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { f64::NAN } else { s / n as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_on_hand_computed_cases() {
        assert_eq!(
            auc(&[0.1, 0.4, 0.35, 0.8], &[0.0, 0.0, 1.0, 1.0]),
            Some(0.75)
        );
        assert_eq!(auc(&[0.5, 0.5], &[0.0, 1.0]), Some(0.5));
        assert_eq!(auc(&[0.2, 0.9], &[1.0, 1.0]), None);
    }

    #[test]
    fn calibration_metrics_on_hand_computed_cases() {
        // bin [0.2,0.3): p 0.2,0.2 y 0,1 -> |0.2-0.5| = 0.3, weight 1/2
        // bin [0.9,1.0]: p 0.9,0.9 y 1,1 -> |0.9-1| = 0.1, weight 1/2
        let p = [0.2, 0.2, 0.9, 0.9];
        let y = [0.0, 1.0, 1.0, 1.0];
        assert!((ece(&p, &y, 10) - 0.2).abs() < 1e-12);
        assert!((brier(&p, &y) - (0.04 + 0.64 + 0.01 + 0.01) / 4.0).abs() < 1e-12);
        assert_eq!(accuracy(&p, &y), 0.75);
    }

    #[test]
    fn conformal_quantile_takes_the_n_plus_one_rank() {
        let s: Vec<f64> = (1..=9).map(f64::from).collect();
        // n = 9, level 0.8: ceil(10 * 0.8) = 8th smallest
        assert_eq!(conformal_quantile(&s, 0.8), 8.0);
        assert_eq!(conformal_quantile(&s, 0.99), 9.0);
        assert_eq!(coverage(&[0.0, 0.0], &[1.0, 1.0], &[0.5, 2.0]), 0.5);
    }
}
