//! Isolation forest (Liu, Ting & Zhou, "Isolation Forest", ICDM 2008) over causal window
//! features of a metric series, and the streaming detector built on it.
//!
//! * [`IsolationForest`]: the forest on arbitrary feature rows. `n_trees` trees, each grown on
//!   `psi` rows drawn without replacement, to height ceil(log2 psi), splitting on a random
//!   feature at a uniform random point between that feature's min and max in the node's rows.
//!   Raw score s(x) = 2^(−E[h(x)]/c(psi)) in (0, 1].
//! * [`window_features`]: the scale-free features of one series position, computed from that
//!   value and the `w` values before it.
//! * [`IForestDetector`]: a forest over the window features of a training history, the last
//!   `w + 1` values, and the distribution of the training scores, so that `score` gives 0.5
//!   at the median ordinary point, 0.9 at its 99th percentile, and approaches 1 for anomalies.
//!
//! Invariants: fitting is deterministic given the seed (ChaCha8, one stream per tree). A JSON
//! round trip reproduces scores bit for bit: floats are written as shortest round-trip decimal
//! strings, because serde_json's default number parser can be one ulp off. Deserialising
//! validates every tree, so scoring a loaded model never indexes out of bounds or loops.

use std::collections::VecDeque;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize, Serializer};
use ymera_common::float_exact as exact;

/// Euler–Mascheroni constant γ, for the harmonic-number approximation H(i) ≈ ln(i) + γ.
const EULER_GAMMA: f64 = 0.577_215_664_9;

/// c(n): the average path length of an unsuccessful search in a binary search tree of `n`
/// rows, 2H(n−1) − 2(n−1)/n with H(i) ≈ ln(i) + γ; c(2) = 1 and c(1) = c(0) = 0.
///
/// It normalises path lengths (the score's denominator c(psi)) and stands in for the subtree
/// that was not grown below a leaf still holding `n` rows.
pub fn average_path_length(n: usize) -> f64 {
    match n {
        0 | 1 => 0.0,
        2 => 1.0,
        _ => {
            let n = n as f64;
            2.0 * ((n - 1.0).ln() + EULER_GAMMA) - 2.0 * (n - 1.0) / n
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The forest
// ---------------------------------------------------------------------------------------------

/// A fitted isolation forest: all trees stored flat, in preorder, in one node vector.
///
/// Serialised as JSON through `ForestRepr` (one node array per tree, child indices relative to
/// the tree); deserialising checks that every tree is well formed.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(try_from = "ForestRepr")]
pub struct IsolationForest {
    n_features: usize,
    /// Rows each tree was grown on: `psi` capped at the number of training rows.
    sample_size: usize,
    /// Index in `nodes` of each tree's root.
    roots: Vec<u32>,
    /// Every tree in preorder, one after the other: a split's left child is the next node.
    nodes: Vec<Node>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Node {
    /// Rows with `x[feature] <= threshold` go left (the next node), the others to `right`.
    Split {
        feature: u32,
        threshold: f64,
        right: u32,
    },
    /// A leaf holding `size` training rows; `path` = depth + c(size) is the path length h(x)
    /// of every row that ends here (derived, not stored in JSON).
    Leaf { size: u32, path: f64 },
}

impl IsolationForest {
    /// Grows `n_trees` trees, each on `psi` rows drawn without replacement (all rows when there
    /// are fewer), to height ceil(log2 psi). Deterministic given `seed`.
    ///
    /// Fails on fewer than 2 rows, rows of different or zero length, a non-finite value (the
    /// error names its row and column), `n_trees == 0` or `psi < 2`.
    ///
    /// A node splits on a feature drawn uniformly among those not constant in its rows (as
    /// scikit-learn does; the paper does not say what to do with a constant one), and becomes
    /// a leaf when every feature is constant there.
    pub fn fit<R: AsRef<[f64]>>(
        rows: &[R],
        n_trees: usize,
        psi: usize,
        seed: u64,
    ) -> Result<Self, String> {
        let data = Columns::new(rows)?;
        Ok(grow_forest(&data, n_trees, psi, seed)?.0)
    }

    /// Number of features a row must have.
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// Number of trees.
    pub fn n_trees(&self) -> usize {
        self.roots.len()
    }

    /// Rows each tree was grown on (`psi` capped at the number of training rows).
    pub fn sample_size(&self) -> usize {
        self.sample_size
    }

    /// Raw anomaly score s(x) = 2^(−E[h(x)]/c(psi)) in (0, 1]: about 0.5 or less for ordinary
    /// rows, approaching 1 for rows that isolate in a split or two. Fails when `x` has the
    /// wrong length or a non-finite value (the error names the column).
    pub fn score(&self, x: &[f64]) -> Result<f64, String> {
        if x.len() != self.n_features {
            return Err(format!(
                "row has {} features, the forest was fitted on {}",
                x.len(),
                self.n_features
            ));
        }
        if let Some(f) = x.iter().position(|v| !v.is_finite()) {
            return Err(format!("column {f} is not finite ({})", x[f]));
        }
        Ok(self.raw_score(x))
    }

    /// `score` without the checks; `x` must have `n_features` values.
    fn raw_score(&self, x: &[f64]) -> f64 {
        self.normalise(self.mean_path(|f| x[f]))
    }

    /// E[h(x)] over all trees, `x` given as feature index → value.
    fn mean_path(&self, x: impl Fn(usize) -> f64 + Copy) -> f64 {
        let total: f64 = self
            .roots
            .iter()
            .map(|&root| self.path(root as usize, x))
            .sum();
        total / self.roots.len() as f64
    }

    /// h(x) in the tree rooted at `root`: a bounded walk (child indices always increase).
    fn path(&self, root: usize, x: impl Fn(usize) -> f64) -> f64 {
        let mut i = root;
        loop {
            match self.nodes[i] {
                Node::Split {
                    feature,
                    threshold,
                    right,
                } => {
                    i = if x(feature as usize) <= threshold {
                        i + 1
                    } else {
                        right as usize
                    };
                }
                Node::Leaf { path, .. } => return path,
            }
        }
    }

    /// 2^(−mean_path/c(sample_size)).
    fn normalise(&self, mean_path: f64) -> f64 {
        (-mean_path / average_path_length(self.sample_size)).exp2()
    }
}

/// Training rows, validated and copied column-major so that a node's min/max scans are
/// contiguous.
struct Columns {
    n_rows: usize,
    n_features: usize,
    values: Vec<f64>,
}

impl Columns {
    fn new<R: AsRef<[f64]>>(rows: &[R]) -> Result<Self, String> {
        let n_rows = rows.len();
        if n_rows < 2 {
            return Err(format!(
                "an isolation forest needs at least 2 rows, got {n_rows}"
            ));
        }
        let n_features = rows[0].as_ref().len();
        if n_features == 0 {
            return Err("rows have no features".into());
        }
        if u32::try_from(n_rows).is_err() || u32::try_from(n_features).is_err() {
            return Err(format!(
                "{n_rows} rows of {n_features} features is too many"
            ));
        }
        let mut values = vec![0.0; n_rows * n_features];
        for (r, row) in rows.iter().enumerate() {
            let row = row.as_ref();
            if row.len() != n_features {
                return Err(format!(
                    "row {r} has {} features, row 0 has {n_features}",
                    row.len()
                ));
            }
            for (f, &v) in row.iter().enumerate() {
                if !v.is_finite() {
                    return Err(format!("row {r}, column {f} is not finite ({v})"));
                }
                values[f * n_rows + r] = v;
            }
        }
        Ok(Self {
            n_rows,
            n_features,
            values,
        })
    }

    fn get(&self, row: u32, feature: usize) -> f64 {
        self.values[feature * self.n_rows + row as usize]
    }
}

/// Grows the forest and also returns each tree's subsample (for out-of-bag scores).
fn grow_forest(
    data: &Columns,
    n_trees: usize,
    psi: usize,
    seed: u64,
) -> Result<(IsolationForest, Vec<Vec<u32>>), String> {
    if n_trees == 0 {
        return Err("n_trees must be at least 1".into());
    }
    if psi < 2 {
        return Err(format!("psi must be at least 2, got {psi}"));
    }
    let sample_size = psi.min(data.n_rows);
    // A tree has at most 2·sample_size − 1 nodes, and node indices are u32.
    if n_trees
        .checked_mul(2 * sample_size)
        .is_none_or(|n| n > u32::MAX as usize)
    {
        return Err(format!(
            "{n_trees} trees of {sample_size} rows overflow the node index"
        ));
    }
    let mut builder = TreeBuilder {
        data,
        height_limit: sample_size.next_power_of_two().trailing_zeros(),
        nodes: Vec::with_capacity(n_trees * sample_size),
        candidates: Vec::with_capacity(data.n_features),
    };
    let mut roots = Vec::with_capacity(n_trees);
    let mut samples = Vec::with_capacity(n_trees);
    for tree in 0..n_trees {
        // One ChaCha stream per tree: a tree depends only on (seed, its index).
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(tree as u64);
        let mut rows: Vec<u32> = rand::seq::index::sample(&mut rng, data.n_rows, sample_size)
            .into_iter()
            .map(|r| r as u32) // n_rows fits u32 (checked in Columns::new)
            .collect();
        roots.push(builder.nodes.len() as u32);
        builder.grow(&mut rows, 0, &mut rng);
        samples.push(rows);
    }
    let forest = IsolationForest {
        n_features: data.n_features,
        sample_size,
        roots,
        nodes: builder.nodes,
    };
    Ok((forest, samples))
}

struct TreeBuilder<'a> {
    data: &'a Columns,
    height_limit: u32,
    nodes: Vec<Node>,
    /// (feature, min, max) of the features not constant in the current node's rows.
    candidates: Vec<(usize, f64, f64)>,
}

impl TreeBuilder<'_> {
    /// Appends the subtree over `rows` in preorder (reorders `rows`).
    fn grow(&mut self, rows: &mut [u32], depth: u32, rng: &mut ChaCha8Rng) {
        let split = if depth < self.height_limit && rows.len() > 1 {
            self.pick_split(rows, rng)
        } else {
            None
        };
        let Some((feature, threshold)) = split else {
            self.nodes.push(Node::Leaf {
                size: rows.len() as u32,
                path: f64::from(depth) + average_path_length(rows.len()),
            });
            return;
        };
        let data = self.data;
        let mut n_left = 0;
        for j in 0..rows.len() {
            if data.get(rows[j], feature) <= threshold {
                rows.swap(n_left, j);
                n_left += 1;
            }
        }
        let at = self.nodes.len();
        let feature = feature as u32;
        self.nodes.push(Node::Split {
            feature,
            threshold,
            right: 0,
        });
        let (left, right_rows) = rows.split_at_mut(n_left);
        self.grow(left, depth + 1, rng);
        let right = self.nodes.len() as u32;
        self.nodes[at] = Node::Split {
            feature,
            threshold,
            right,
        };
        self.grow(right_rows, depth + 1, rng);
    }

    /// A random non-constant feature and a uniform random threshold in [min, max) of it, so
    /// that both sides get at least one row; `None` when every feature is constant.
    fn pick_split(&mut self, rows: &[u32], rng: &mut ChaCha8Rng) -> Option<(usize, f64)> {
        self.candidates.clear();
        for f in 0..self.data.n_features {
            let (lo, hi) = rows
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &r| {
                    let v = self.data.get(r, f);
                    (lo.min(v), hi.max(v))
                });
            if lo < hi {
                self.candidates.push((f, lo, hi));
            }
        }
        if self.candidates.is_empty() {
            return None;
        }
        let (feature, lo, hi) = self.candidates[rng.random_range(0..self.candidates.len())];
        let u: f64 = rng.random();
        // Written so that hi − lo cannot overflow; rounding may land on hi (every row would go
        // left), and then lo still splits.
        let t = lo * (1.0 - u) + hi * u;
        Some((feature, if lo <= t && t < hi { t } else { lo }))
    }
}

/// Each training row's score over the trees whose subsample did not contain it, which is how
/// the forest sees new rows; rows in every subsample (fewer rows than psi) get their
/// in-sample score.
fn out_of_bag_scores(forest: &IsolationForest, data: &Columns, samples: &[Vec<u32>]) -> Vec<f64> {
    let n = data.n_rows;
    let mut sum = vec![0.0; n];
    let mut count = vec![0u32; n];
    let mut in_bag = vec![false; n];
    for (&root, sample) in forest.roots.iter().zip(samples) {
        sample.iter().for_each(|&r| in_bag[r as usize] = true);
        for r in 0..n {
            if !in_bag[r] {
                sum[r] += forest.path(root as usize, |f| data.get(r as u32, f));
                count[r] += 1;
            }
        }
        sample.iter().for_each(|&r| in_bag[r as usize] = false);
    }
    (0..n)
        .map(|r| {
            let mean_path = if count[r] > 0 {
                sum[r] / f64::from(count[r])
            } else {
                forest.mean_path(|f| data.get(r as u32, f))
            };
            forest.normalise(mean_path)
        })
        .collect()
}

/// The forest as stored: one node array per tree.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ForestRepr {
    /// Number of features a row must have.
    n_features: usize,
    /// Rows each tree was grown on (psi capped at the number of training rows).
    sample_size: usize,
    /// Each tree's nodes in preorder; node 0 is the root.
    trees: Vec<Vec<NodeRepr>>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum NodeRepr {
    /// `[feature, threshold, right]`: rows with `x[feature] <= threshold` go to the next node,
    /// the others to node `right` of the same tree.
    Split(u32, #[serde(with = "exact")] f64, u32),
    /// Number of training rows that reached this leaf.
    Leaf(u32),
}

impl Serialize for IsolationForest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let ends = self
            .roots
            .iter()
            .skip(1)
            .map(|&r| r as usize)
            .chain([self.nodes.len()]);
        let trees = self
            .roots
            .iter()
            .zip(ends)
            .map(|(&start, end)| {
                self.nodes[start as usize..end]
                    .iter()
                    .map(|node| match *node {
                        Node::Split {
                            feature,
                            threshold,
                            right,
                        } => NodeRepr::Split(feature, threshold, right - start),
                        Node::Leaf { size, .. } => NodeRepr::Leaf(size),
                    })
                    .collect()
            })
            .collect();
        ForestRepr {
            n_features: self.n_features,
            sample_size: self.sample_size,
            trees,
        }
        .serialize(serializer)
    }
}

impl TryFrom<ForestRepr> for IsolationForest {
    type Error = String;

    fn try_from(repr: ForestRepr) -> Result<Self, String> {
        let ForestRepr {
            n_features,
            sample_size,
            trees,
        } = repr;
        if n_features == 0 || sample_size < 2 || trees.is_empty() {
            return Err(format!(
                "isolation forest needs features, a sample size of at least 2 and trees; got \
                 {n_features} features, sample size {sample_size}, {} trees",
                trees.len()
            ));
        }
        if trees.iter().map(Vec::len).sum::<usize>() > u32::MAX as usize {
            return Err("isolation forest has more nodes than a u32 indexes".into());
        }
        let mut nodes = Vec::with_capacity(trees.iter().map(Vec::len).sum());
        let mut roots = Vec::with_capacity(trees.len());
        let (mut seen, mut stack) = (Vec::new(), Vec::new());
        for (t, tree) in trees.iter().enumerate() {
            let bad = |j: usize, what: &str| format!("isolation forest tree {t}, node {j}: {what}");
            if tree.is_empty() {
                return Err(format!("isolation forest tree {t} has no nodes"));
            }
            let start = nodes.len();
            roots.push(start as u32);
            for (j, node) in tree.iter().enumerate() {
                nodes.push(match *node {
                    NodeRepr::Split(feature, threshold, right) => {
                        if feature as usize >= n_features {
                            return Err(bad(j, &format!("feature {feature} of {n_features}")));
                        }
                        if !threshold.is_finite() {
                            return Err(bad(j, &format!("threshold {threshold}")));
                        }
                        let right = right as usize;
                        if right <= j + 1 || right >= tree.len() {
                            return Err(bad(
                                j,
                                &format!("right child {right} not in {}..{}", j + 2, tree.len()),
                            ));
                        }
                        Node::Split {
                            feature,
                            threshold,
                            right: (start + right) as u32,
                        }
                    }
                    NodeRepr::Leaf(size) => {
                        if size == 0 || size as usize > sample_size {
                            return Err(bad(
                                j,
                                &format!("leaf size {size} not in 1..={sample_size}"),
                            ));
                        }
                        Node::Leaf { size, path: 0.0 }
                    }
                });
            }
            // Every node reached exactly once from the root (a tree: no sharing, no orphans);
            // the walk also gives each leaf its depth.
            seen.clear();
            seen.resize(tree.len(), false);
            stack.push((0usize, 0u32));
            while let Some((j, depth)) = stack.pop() {
                if std::mem::replace(&mut seen[j], true) {
                    return Err(bad(j, "reached twice from the root"));
                }
                match &mut nodes[start + j] {
                    Node::Split { right, .. } => {
                        stack.push((*right as usize - start, depth + 1));
                        stack.push((j + 1, depth + 1));
                    }
                    Node::Leaf { size, path } => {
                        *path = f64::from(depth) + average_path_length(*size as usize);
                    }
                }
            }
            if let Some(j) = seen.iter().position(|s| !s) {
                return Err(bad(j, "unreachable from the root"));
            }
        }
        Ok(Self {
            n_features,
            sample_size,
            roots,
            nodes,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Window features
// ---------------------------------------------------------------------------------------------

/// Number of values [`window_features`] returns.
pub const N_FEATURES: usize = 4;

/// Names of the window features, in order.
pub const FEATURE_NAMES: [&str; N_FEATURES] = ["level", "residual", "step", "volatility"];

/// Smallest window: the reference part needs 3 differences for a location and a scale.
pub const MIN_WINDOW: usize = 4;

/// Version of the feature definitions; a stored detector computed with another one is refused.
const FEATURE_VERSION: u32 = 1;

/// The robust scale is the mean of the smallest 80% of absolute deviations from the median,
/// times this (≈ σ for normal data): more efficient than the MAD on 11 or 12 values, which
/// gives ordinary points heavy-tailed z-values, and still robust to a spike in the window.
const TRIMMED_AD_TO_SIGMA: f64 = 1.7902;
/// √(π/2) · mean absolute deviation ≈ σ (fallback when 80% of the values are equal).
const MEAN_AD_TO_SIGMA: f64 = 1.253_314_137_315_500_3;
/// z-values are linear within ±KNEE and logarithmic beyond: KNEE·asinh(z/KNEE).
const KNEE: f64 = 3.0;
/// Ratios below this count as a flat line (ln 1e-6 ≈ −13.8).
const VOLATILITY_FLOOR: f64 = 1e-6;
/// Bound on a ratio before asinh/ln, so that a division by a floored scale stays finite.
const RATIO_BOUND: f64 = 1e300;

/// The features of position `i` of `values` with window `w`, from `values[i − w ..= i]` only
/// (causal): `None` until `i ≥ w`, or when `w < MIN_WINDOW` or `i` is out of range.
///
/// With x = `values[i]`, the reference R = the `w` values before it, D = the `w − 1`
/// differences within R, m(·) the median and σ(·) a robust scale (see `TRIMMED_AD_TO_SIGMA`;
/// never below ε·max|window|), and the z-values passed through 3·asinh(z/3):
///
/// 0. `level` = (x − m(R)) / σ(R): distance from the recent level in units of the recent
///    spread. Spikes, and level shifts and ramps for about w/2 points.
/// 1. `residual` = (x − ŷ) / σ(r): error of the least-squares line through R extrapolated one
///    step (ŷ), against the spread of R's residuals r about that line. Like `level`, but not
///    fooled by a local trend (a seasonal slope), so much sharper on smooth series.
/// 2. `step` = (Δx − m(D)) / σ(D), Δx = x − `values[i−1]`: the last change against the usual
///    change. Spikes (both edges) and the onset of a level shift.
/// 3. `volatility` = ln(rms over the last k = max(2, w/2) differences of (Δ − m(D)) / σ(D)),
///    floored at ln 1e-6: recent roughness against the reference's. Variance increases
///    (positive) and flat lines (very negative).
///
/// Each is unchanged by x ↦ a·x + b (a > 0), so one forest design suits series of any unit or
/// offset. The asinh knee keeps ordinary z-values linear and compresses the tails, so that
/// one huge training outlier does not stretch every split range; a rolling slope was tried
/// as a fifth feature and dropped: it diluted the splits (spikes, shifts and variance changes
/// ranked lower among ordinary points) and `level` already reacts to ramps. Non-finite values
/// give non-finite features.
pub fn window_features(values: &[f64], i: usize, w: usize) -> Option<Vec<f64>> {
    if w < MIN_WINDOW || i < w || i >= values.len() {
        return None;
    }
    let mut out = [0.0; N_FEATURES];
    features_into(&values[i - w..=i], &mut Vec::with_capacity(w), &mut out);
    Some(out.to_vec())
}

/// The features of the last value of `window` (`w + 1` values, `w ≥ MIN_WINDOW`); `scratch`
/// is reused so that streaming does not allocate.
fn features_into(window: &[f64], scratch: &mut Vec<f64>, out: &mut [f64; N_FEATURES]) {
    let w = window.len() - 1;
    let (reference, x) = (&window[..w], window[w]);
    let floor =
        (window.iter().fold(0.0, |m: f64, v| m.max(v.abs())) * f64::EPSILON).max(f64::MIN_POSITIVE);
    let (level_mid, level_scale) = location_scale(reference.iter().copied(), scratch, floor);
    let (diff_mid, diff_scale) =
        location_scale(reference.windows(2).map(|p| p[1] - p[0]), scratch, floor);

    // Least-squares line through R at t = 0..w, centred at t_mid.
    let n = w as f64;
    let t_mid = (n - 1.0) / 2.0;
    let mean = reference.iter().sum::<f64>() / n;
    let sxy: f64 = reference
        .iter()
        .enumerate()
        .map(|(t, &y)| (t as f64 - t_mid) * (y - mean))
        .sum();
    let slope = sxy / (n * (n * n - 1.0) / 12.0);
    let residuals = reference
        .iter()
        .enumerate()
        .map(|(t, &y)| y - mean - slope * (t as f64 - t_mid));
    let (_, residual_scale) = location_scale(residuals, scratch, floor);
    let predicted = mean + slope * (n - t_mid);

    let k = (w / 2).max(2);
    let mean_square = window[w - k..]
        .windows(2)
        .map(|p| (p[1] - p[0] - diff_mid).powi(2))
        .sum::<f64>()
        / k as f64;

    out[0] = squash((x - level_mid) / level_scale);
    out[1] = squash((x - predicted) / residual_scale);
    out[2] = squash((x - window[w - 1] - diff_mid) / diff_scale);
    out[3] = (mean_square.sqrt() / diff_scale)
        .clamp(VOLATILITY_FLOOR, RATIO_BOUND)
        .ln();
}

/// Median and robust scale of `values` (at least 3), the scale never below `floor`.
fn location_scale(
    values: impl Iterator<Item = f64>,
    scratch: &mut Vec<f64>,
    floor: f64,
) -> (f64, f64) {
    scratch.clear();
    scratch.extend(values);
    let mid = median(scratch);
    scratch.iter_mut().for_each(|v| *v = (*v - mid).abs());
    let n = scratch.len();
    let keep = n - n.div_ceil(5);
    scratch.select_nth_unstable_by(keep - 1, f64::total_cmp);
    let trimmed = TRIMMED_AD_TO_SIGMA * scratch[..keep].iter().sum::<f64>() / keep as f64;
    let scale = if trimmed > 0.0 {
        trimmed
    } else {
        MEAN_AD_TO_SIGMA * scratch.iter().sum::<f64>() / n as f64
    };
    (mid, scale.max(floor))
}

/// Median by selection (reorders `values`, which is not empty).
fn median(values: &mut [f64]) -> f64 {
    let n = values.len();
    let (lower, upper, _) = values.select_nth_unstable_by(n / 2, f64::total_cmp);
    if n % 2 == 1 {
        *upper
    } else {
        (lower.iter().copied().fold(f64::NEG_INFINITY, f64::max) + *upper) / 2.0
    }
}

/// KNEE·asinh(z/KNEE), with z bounded first so that the result is finite.
fn squash(z: f64) -> f64 {
    KNEE * (z.clamp(-RATIO_BOUND, RATIO_BOUND) / KNEE).asinh()
}

// ---------------------------------------------------------------------------------------------
// Streaming detector
// ---------------------------------------------------------------------------------------------

/// Parameters of [`IForestDetector::train`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IForestParams {
    /// Number of isolation trees (default 100). More trees give steadier scores; scoring time
    /// grows linearly with it.
    pub n_trees: usize,
    /// Rows subsampled without replacement for each tree, ψ in the paper (default 256, at
    /// least 2); capped at the number of training rows. Trees grow to height ceil(log2 ψ).
    pub psi: usize,
    /// Values before the scored one that its features compare it with (default 12, at least
    /// 4). Scoring starts once `window` values have been seen.
    pub window: usize,
}

impl Default for IForestParams {
    fn default() -> Self {
        Self {
            n_trees: 100,
            psi: 256,
            window: 12,
        }
    }
}

impl IForestParams {
    /// Every problem with the parameters, in one message.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.n_trees == 0 {
            problems.push("n_trees must be at least 1".to_string());
        }
        if self.psi < 2 {
            problems.push(format!("psi must be at least 2, got {}", self.psi));
        }
        if self.window < MIN_WINDOW {
            problems.push(format!(
                "window must be at least {MIN_WINDOW}, got {}",
                self.window
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// Streaming isolation-forest detector for one metric series: the forest over the window
/// features of a training history, the score calibration, and the last `window + 1` values.
///
/// `score` is called once per new value, in order; the state (JSON through serde) can be stored
/// between calls and restored to continue exactly where it stopped.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(try_from = "DetectorRepr")]
pub struct IForestDetector {
    /// Version of the feature definitions the forest was trained on.
    feature_version: u32,
    /// Values before the scored one used by its features.
    window: usize,
    forest: IsolationForest,
    calibration: Calibration,
    /// The last `window + 1` finite values, oldest first.
    #[serde(serialize_with = "exact::seq::serialize")]
    recent: VecDeque<f64>,
    /// Reused by the feature computation, so that scoring does not allocate.
    #[serde(skip)]
    scratch: Vec<f64>,
}

impl IForestDetector {
    /// Fits the forest on the window features of every position of `history` that has
    /// `window` values before it, and calibrates scores against those positions' out-of-bag
    /// raw scores. The detector then continues from the end of `history` (its last `window`
    /// values are kept); call [`reset`](Self::reset) to start a series from scratch instead.
    ///
    /// Fails on invalid `params`, a non-finite history value (the error names its index), a
    /// history shorter than `window + 2` values, or one whose features are all identical.
    pub fn train(history: &[f64], params: &IForestParams, seed: u64) -> Result<Self, String> {
        params.validate()?;
        if let Some(i) = history.iter().position(|v| !v.is_finite()) {
            return Err(format!("history value {i} is not finite ({})", history[i]));
        }
        let w = params.window;
        if history.len() < w + 2 {
            return Err(format!(
                "history has {} values; a window of {w} needs at least {}",
                history.len(),
                w + 2
            ));
        }
        let mut scratch = Vec::with_capacity(w);
        let mut rows = Vec::with_capacity(history.len() - w);
        for i in w..history.len() {
            let mut x = [0.0; N_FEATURES];
            features_into(&history[i - w..=i], &mut scratch, &mut x);
            if let Some(f) = x.iter().position(|v| !v.is_finite()) {
                return Err(format!(
                    "feature {} of history value {i} is not finite ({}): values too large",
                    FEATURE_NAMES[f], x[f]
                ));
            }
            rows.push(x);
        }
        if rows.iter().all(|x| *x == rows[0]) {
            return Err(format!(
                "all {} window features of the history are identical (a constant series?): \
                 nothing to isolate anomalies from",
                rows.len()
            ));
        }
        let data = Columns::new(&rows)?;
        let (forest, samples) = grow_forest(&data, params.n_trees, params.psi, seed)?;
        let calibration = Calibration::new(out_of_bag_scores(&forest, &data, &samples));
        let mut recent = VecDeque::with_capacity(w + 1);
        recent.extend(&history[history.len() - w..]);
        Ok(Self {
            feature_version: FEATURE_VERSION,
            window: w,
            forest,
            calibration,
            recent,
            scratch,
        })
    }

    /// Pushes `value` and returns its anomaly score in [0, 1]: 0 until `window` earlier values
    /// have been seen, then the forest's raw score mapped against the training scores (0.5 at
    /// their median, 0.9 at their 99th percentile, → 1 beyond; a threshold t flags about
    /// ½(2(1 − t))^2.43 of ordinary points, see `Calibration`). A non-finite value is skipped
    /// (not pushed) and scores 0: gaps are for the caller to handle.
    pub fn score(&mut self, value: f64) -> f64 {
        if !value.is_finite() {
            return 0.0;
        }
        if self.recent.len() > self.window {
            self.recent.pop_front();
        }
        self.recent.push_back(value);
        if self.recent.len() <= self.window {
            return 0.0;
        }
        let mut x = [0.0; N_FEATURES];
        features_into(self.recent.make_contiguous(), &mut self.scratch, &mut x);
        self.calibration.map(self.forest.raw_score(&x))
    }

    /// Forgets the recent values: the next `window` scores are 0.
    pub fn reset(&mut self) {
        self.recent.clear();
    }

    /// Values before the scored one that its features use.
    pub fn window(&self) -> usize {
        self.window
    }

    /// The fitted forest (over [`window_features`] rows).
    pub fn forest(&self) -> &IsolationForest {
        &self.forest
    }
}

/// Quantile of the training scores where the exponential tail takes over from the table.
const TAIL_START: f64 = 0.9;
/// Quantile step of the table: percentiles 0 to 90.
const QUANTILE_STEP: f64 = 0.01;
const N_QUANTILES: usize = 91;
/// κ = ln 5 / ln 50 in score = 1 − ½(2p)^κ, so that p = 1% gives 0.9.
const TAIL_EXPONENT: f64 = 0.411_408_089_932_221;

/// Maps raw isolation scores to detector scores through p, the estimated fraction of
/// ordinary points whose raw score is at least as high (from the training scores).
///
/// p: up to the training 90th percentile u, the training percentiles interpolated; above u,
/// p = 0.1·exp(−(s − u)/β), an exponential tail with β the training scores' mean excess over
/// u, so that scores beyond the training maximum keep ranking instead of saturating as an
/// empirical CDF would. Training scores are out-of-bag, as new points are scored (in-sample
/// scores are biased low).
///
/// Score: 1 − p below the median; above it 1 − ½(2p)^κ, κ = ln 5/ln 50 ≈ 0.411: 0.5 at the
/// median, 0.74 at the 90th percentile, 0.9 at the 99th, 0.961 at p = 10⁻³, 0.985 at 10⁻⁴,
/// → 1. So a threshold t flags a fraction ½(2(1 − t))^(1/κ) of ordinary points (0.95 →
/// 0.19%), and the tail is spread out instead of crowded just under 1 as 1 − p would be.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Calibration {
    /// Training raw scores at quantiles 0, 0.01, …, 0.90 (91 values, non-decreasing).
    #[serde(
        serialize_with = "exact::seq::serialize",
        deserialize_with = "exact::seq::deserialize"
    )]
    quantiles: Vec<f64>,
    /// β: mean excess of the training raw scores over their 90th percentile.
    #[serde(with = "exact")]
    tail_scale: f64,
}

impl Calibration {
    /// From the training raw scores (not empty).
    fn new(mut training: Vec<f64>) -> Self {
        training.sort_by(f64::total_cmp);
        let last = (training.len() - 1) as f64;
        let quantiles: Vec<f64> = (0..N_QUANTILES)
            .map(|k| {
                let pos = k as f64 * QUANTILE_STEP * last;
                let (lo, hi) = (
                    training[pos.floor() as usize],
                    training[pos.ceil() as usize],
                );
                lo + (hi - lo) * pos.fract()
            })
            .collect();
        let u = quantiles[N_QUANTILES - 1];
        let excess: Vec<f64> = training.iter().filter(|&&s| s > u).map(|s| s - u).collect();
        // No training score above u (a tie at the top): any higher score is off the chart.
        let tail_scale = if excess.is_empty() {
            1e-9
        } else {
            (excess.iter().sum::<f64>() / excess.len() as f64).max(1e-9)
        };
        Self {
            quantiles,
            tail_scale,
        }
    }

    fn map(&self, raw: f64) -> f64 {
        let p = self.exceedance(raw);
        if p >= 0.5 {
            1.0 - p
        } else {
            1.0 - 0.5 * (2.0 * p).powf(TAIL_EXPONENT)
        }
    }

    /// p: the estimated fraction of ordinary points scoring at least `raw`.
    fn exceedance(&self, raw: f64) -> f64 {
        let q = &self.quantiles;
        let u = q[N_QUANTILES - 1];
        if raw > u {
            return (1.0 - TAIL_START) * (-(raw - u) / self.tail_scale).exp();
        }
        // q[below - 1] < raw ≤ … ≤ raw < q[upto]; a tie takes the middle of its run.
        let below = q.partition_point(|&v| v < raw);
        let upto = q.partition_point(|&v| v <= raw);
        let position = if below < upto {
            (below + upto - 1) as f64 / 2.0
        } else if below == 0 {
            return 1.0;
        } else {
            let (lo, hi) = (q[below - 1], q[below]);
            (below - 1) as f64 + (raw - lo) / (hi - lo)
        };
        1.0 - position * QUANTILE_STEP
    }

    fn validate(&self) -> Result<(), String> {
        let q = &self.quantiles;
        let ordered = q.iter().all(|v| v.is_finite() && *v > 0.0 && *v <= 1.0)
            && q.windows(2).all(|p| p[0] <= p[1]);
        if q.len() != N_QUANTILES || !ordered {
            return Err(format!(
                "calibration needs {N_QUANTILES} non-decreasing quantiles in (0, 1], got {q:?}"
            ));
        }
        if !(self.tail_scale.is_finite() && self.tail_scale > 0.0) {
            return Err(format!(
                "calibration tail scale {} is not positive",
                self.tail_scale
            ));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DetectorRepr {
    /// Version of the feature definitions the forest was trained on.
    feature_version: u32,
    /// Values before the scored one used by its features.
    window: usize,
    /// The forest over window-feature rows.
    forest: IsolationForest,
    /// Training raw-score distribution for the score mapping.
    calibration: Calibration,
    /// The last `window + 1` values at most, oldest first.
    #[serde(deserialize_with = "exact::seq::deserialize")]
    recent: Vec<f64>,
}

impl TryFrom<DetectorRepr> for IForestDetector {
    type Error = String;

    fn try_from(repr: DetectorRepr) -> Result<Self, String> {
        let DetectorRepr {
            feature_version,
            window,
            forest,
            calibration,
            recent,
        } = repr;
        if feature_version != FEATURE_VERSION {
            return Err(format!(
                "detector was trained on window features v{feature_version}, this build \
                 computes v{FEATURE_VERSION}: retrain it"
            ));
        }
        if window < MIN_WINDOW {
            return Err(format!(
                "window must be at least {MIN_WINDOW}, got {window}"
            ));
        }
        if forest.n_features != N_FEATURES {
            return Err(format!(
                "forest has {} features, window features are {N_FEATURES}",
                forest.n_features
            ));
        }
        calibration.validate()?;
        if recent.len() > window + 1 || recent.iter().any(|v| !v.is_finite()) {
            return Err(format!(
                "recent values must be at most {} finite values, got {recent:?}",
                window + 1
            ));
        }
        let mut buffer = VecDeque::with_capacity(window + 1);
        buffer.extend(recent);
        Ok(Self {
            feature_version,
            window,
            forest,
            calibration,
            recent: buffer,
            scratch: Vec::with_capacity(window),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A standard normal draw (Box–Muller).
    fn normal(rng: &mut ChaCha8Rng) -> f64 {
        let (u1, u2): (f64, f64) = (rng.random(), rng.random());
        (-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// 10 + sin(2πt/48) + N(0, 0.2²).
    fn noisy_sine(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|t| {
                10.0 + (std::f64::consts::TAU * t as f64 / 48.0).sin() + 0.2 * normal(&mut rng)
            })
            .collect()
    }

    fn blob_with_outliers() -> (Vec<[f64; 2]>, usize) {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut rows: Vec<[f64; 2]> = (0..500)
            .map(|_| [normal(&mut rng), normal(&mut rng)])
            .collect();
        rows.extend([
            [6.0, 6.0],
            [-7.0, 0.5],
            [0.5, -8.0],
            [-5.0, 5.5],
            [7.5, -2.0],
        ]);
        (rows, 500)
    }

    fn max_in(scores: &[f64], ranges: &[std::ops::Range<usize>]) -> f64 {
        ranges
            .iter()
            .flat_map(|r| scores[r.clone()].iter().copied())
            .fold(0.0, f64::max)
    }

    #[test]
    fn c_of_n_by_hand() {
        assert_eq!(average_path_length(0), 0.0);
        assert_eq!(average_path_length(1), 0.0);
        assert_eq!(average_path_length(2), 1.0);
        // 2(ln 2 + γ) − 2·2/3
        assert!((average_path_length(3) - 1.207_392_357_586_557).abs() < 1e-12);
        // 2(ln 255 + γ) − 2·255/256
        assert!((average_path_length(256) - 10.244_770_920_116_85).abs() < 1e-12);
    }

    #[test]
    fn forest_ranks_far_outliers_above_a_gaussian_blob() {
        let (rows, n_inliers) = blob_with_outliers();
        let forest = IsolationForest::fit(&rows, 100, 256, 42).unwrap();
        assert_eq!(
            (forest.n_trees(), forest.sample_size(), forest.n_features()),
            (100, 256, 2)
        );
        let scores: Vec<f64> = rows.iter().map(|r| forest.score(r).unwrap()).collect();
        let (inliers, outliers) = scores.split_at(n_inliers);
        let pairs_ranked_right: usize = outliers
            .iter()
            .map(|o| inliers.iter().filter(|i| o > i).count())
            .sum();
        let auc = pairs_ranked_right as f64 / (inliers.len() * outliers.len()) as f64;
        assert_eq!(auc, 1.0, "outliers {outliers:?}");
        assert!(outliers.iter().all(|&s| s > 0.65), "outliers {outliers:?}");
        let mut sorted = inliers.to_vec();
        sorted.sort_by(f64::total_cmp);
        assert!(
            sorted[n_inliers / 2] < 0.5,
            "inlier median {}",
            sorted[n_inliers / 2]
        );
        // Every path is at least 1, so no score exceeds 2^(−1/c(psi)).
        let ceiling = (-1.0 / average_path_length(256)).exp2();
        assert!(scores.iter().all(|&s| s > 0.0 && s <= ceiling));
    }

    #[test]
    fn same_seed_same_forest_and_json_round_trip_is_exact() {
        let (rows, _) = blob_with_outliers();
        let a = IsolationForest::fit(&rows, 50, 128, 3).unwrap();
        let b = IsolationForest::fit(&rows, 50, 128, 3).unwrap();
        assert_eq!(a, b);
        assert_ne!(
            a,
            IsolationForest::fit(&rows, 50, 128, 4).unwrap(),
            "seed is ignored"
        );

        let json = serde_json::to_string(&a).unwrap();
        let back: IsolationForest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for _ in 0..1000 {
            let x = [3.0 * normal(&mut rng), 3.0 * normal(&mut rng)];
            assert_eq!(
                a.score(&x).unwrap().to_bits(),
                back.score(&x).unwrap().to_bits()
            );
        }
    }

    #[test]
    fn hand_written_forest_scores_and_corrupt_ones_are_refused() {
        // One split at 0.5 into two single-row leaves: every path is 1 + c(1) = 1, and
        // s = 2^(−1/c(2)) = 0.5. Thresholds may be JSON numbers too.
        let tree = r#"{"n_features":1,"sample_size":2,"trees":[[{"split":[0,0.5,2]},{"leaf":1},{"leaf":1}]]}"#;
        let forest: IsolationForest = serde_json::from_str(tree).unwrap();
        assert_eq!(forest.score(&[0.0]).unwrap(), 0.5);
        assert_eq!(forest.score(&[1.0]).unwrap(), 0.5);
        assert!(
            forest
                .score(&[0.0, 1.0])
                .unwrap_err()
                .contains("2 features")
        );

        for (json, needle) in [
            (
                tree.replace("[0,0.5,2]", "[0,0.5,7]"),
                "node 0: right child 7",
            ),
            (
                tree.replace("[0,0.5,2]", "[0,0.5,1]"),
                "node 0: right child 1",
            ),
            (tree.replace("[0,0.5,2]", "[3,0.5,2]"), "node 0: feature 3"),
            (
                tree.replace(r#"{"leaf":1}]"#, r#"{"leaf":1},{"leaf":1}]"#),
                "node 3: unreachable",
            ),
            (
                tree.replace(r#"{"leaf":1}]"#, r#"{"leaf":9}]"#),
                "node 2: leaf size 9",
            ),
            (
                tree.replace("[0,0.5,2]", r#"[0,"NaN",2]"#),
                "node 0: threshold NaN",
            ),
            (tree.replace("]]}", "],[]]}"), "tree 1 has no nodes"),
        ] {
            let err = serde_json::from_str::<IsolationForest>(&json)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn non_finite_input_is_refused_with_its_index() {
        let mut rows = vec![[0.0, 1.0]; 10];
        rows[3][1] = f64::NAN;
        let err = IsolationForest::fit(&rows, 10, 8, 0).unwrap_err();
        assert!(err.contains("row 3, column 1"), "{err}");

        let forest = IsolationForest::fit(&[[0.0, 1.0], [1.0, 0.0]], 10, 8, 0).unwrap();
        let err = forest.score(&[0.0, f64::INFINITY]).unwrap_err();
        assert!(err.contains("column 1"), "{err}");

        let mut history = noisy_sine(200, 1);
        history[17] = f64::NEG_INFINITY;
        let err = IForestDetector::train(&history, &IForestParams::default(), 0).unwrap_err();
        assert!(err.contains("history value 17"), "{err}");
    }

    #[test]
    fn params_are_validated_all_at_once_and_default_per_field() {
        let bad = IForestParams {
            n_trees: 0,
            psi: 1,
            window: 3,
        };
        let err = IForestDetector::train(&noisy_sine(100, 1), &bad, 0).unwrap_err();
        assert!(
            err.contains("n_trees") && err.contains("psi") && err.contains("window"),
            "{err}"
        );
        let params: IForestParams = serde_json::from_str(r#"{"window": 24}"#).unwrap();
        assert_eq!(
            params,
            IForestParams {
                window: 24,
                ..IForestParams::default()
            }
        );
        assert!(serde_json::from_str::<IForestParams>(r#"{"windw": 24}"#).is_err());
        let err = IForestDetector::train(&noisy_sine(13, 1), &IForestParams::default(), 0);
        assert!(err.unwrap_err().contains("at least 14"));
        let err = IForestDetector::train(&[5.0; 100], &IForestParams::default(), 0);
        assert!(err.unwrap_err().contains("constant series"));
    }

    #[test]
    fn window_features_are_causal_and_scale_free() {
        let values = noisy_sine(100, 2);
        assert_eq!(window_features(&values, 11, 12), None);
        assert_eq!(window_features(&values, 100, 12), None);
        assert_eq!(window_features(&values, 50, 3), None);
        let x = window_features(&values, 12, 12).unwrap();
        assert_eq!(x.len(), N_FEATURES);

        // Only values[..=i] matter.
        let mut future_changed = values.clone();
        future_changed[51] = 1e6;
        assert_eq!(
            window_features(&future_changed, 50, 12),
            window_features(&values, 50, 12)
        );

        // Unchanged by x ↦ a·x + b with a > 0.
        let scaled: Vec<f64> = values.iter().map(|v| 250.0 * v - 3000.0).collect();
        for i in 12..100 {
            let (a, b) = (
                window_features(&values, i, 12),
                window_features(&scaled, i, 12),
            );
            for (a, b) in a.unwrap().iter().zip(b.unwrap()) {
                assert!((a - b).abs() < 1e-9, "position {i}: {a} vs {b}");
            }
        }

        // A spike: far from the level and the trend, a big step; a flat line: very low
        // volatility.
        let mut spiked = values.clone();
        spiked[60] += 4.0;
        let x = window_features(&spiked, 60, 12).unwrap();
        assert!(x[0] > 5.0 && x[1] > 5.0 && x[2] > 5.0, "{x:?}");
        let mut flat = values[..40].to_vec();
        flat.extend([10.0; 10]);
        let x = window_features(&flat, 49, 12).unwrap();
        assert!(x[3] < -10.0, "{x:?}");

        // A noisy ramp that stops: the residual is ordinary along the ramp and far off at the
        // break, where the value is still inside the window's range (level is moderate).
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut ramp: Vec<f64> = (0..60).map(|t| t as f64 + 0.1 * normal(&mut rng)).collect();
        ramp[50] = ramp[49];
        let mut along: Vec<f64> = (12..50)
            .map(|i| window_features(&ramp, i, 12).unwrap()[1].abs())
            .collect();
        along.sort_by(f64::total_cmp);
        assert!(along[along.len() / 2] < 1.5, "{along:?}");
        let x = window_features(&ramp, 50, 12).unwrap();
        assert!(x[1] < -5.0 && x[0] < 3.0, "{x:?}");
    }

    #[test]
    fn detector_scores_spike_level_shift_and_variance_change_above_ordinary_points() {
        let mut series = noisy_sine(1100, 11);
        let mut detector =
            IForestDetector::train(&series[..600], &IForestParams::default(), 5).unwrap();
        series[700] += 2.0; // spike of 10 noise σ
        for v in &mut series[850..] {
            *v += 1.5; // level shift
        }
        for v in &mut series[1000..] {
            *v = 11.5 + 4.0 * (*v - 11.5); // variance (and amplitude) ×4
        }
        // Index t − 600 of `scores` is series[t]'s score.
        let scores: Vec<f64> = series[600..].iter().map(|&v| detector.score(v)).collect();
        let at = |t: usize| scores[t - 600];
        // Ordinary points: everything before each event except the spike's after-window.
        let ordinary = [20..100, 113..250, 270..400];

        let before_spike = max_in(&scores, &ordinary[..2]);
        assert!(
            at(700) > before_spike,
            "spike {} vs ordinary {before_spike}",
            at(700)
        );
        assert!(at(700) > 0.92, "spike {}", at(700));

        let before_shift = max_in(&scores, &ordinary[..2]);
        assert!(
            at(850) > before_shift,
            "shift {} vs ordinary {before_shift}",
            at(850)
        );
        assert!(at(850) > 0.92, "shift {}", at(850));

        let before_variance = max_in(&scores, &ordinary);
        let variance = scores[400..412].iter().copied().fold(0.0, f64::max);
        assert!(
            variance > before_variance,
            "variance {variance} vs ordinary {before_variance}"
        );
        assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)));
    }

    #[test]
    fn calibration_maps_training_percentiles_to_the_documented_scores() {
        // Training raw scores 0.001, 0.002, …, 1.000: the percentiles are exact.
        let calibration = Calibration::new((1..=1000).map(|k| k as f64 / 1000.0).collect());
        let close = |raw: f64, want: f64| {
            let got = calibration.map(raw);
            assert!((got - want).abs() < 1e-3, "raw {raw}: {got}, want {want}");
        };
        close(0.0005, 0.0);
        close(0.2505, 0.25);
        close(0.5005, 0.5);
        close(0.9001, 0.742);
        // Above the 90th percentile the exponential tail (β = 0.05 here) takes over: the 99th
        // training percentile is estimated at u + β·ln 10.
        close(0.9001 + 0.05 * 10f64.ln(), 0.9);
        let far = [1.0, 1.5, 3.0].map(|raw| calibration.map(raw));
        assert!(
            far[0] < far[1] && far[1] < far[2] && far[2] < 1.0,
            "{far:?}"
        );
    }

    #[test]
    fn detector_scores_of_ordinary_points_are_calibrated() {
        // Trained on one stretch, scored on a later one of the same process: about half the
        // scores above 0.5, a tenth above 0.742, a hundredth above 0.9.
        let series = noisy_sine(5000, 21);
        let mut detector =
            IForestDetector::train(&series[..2000], &IForestParams::default(), 2).unwrap();
        let scores: Vec<f64> = series[2000..].iter().map(|&v| detector.score(v)).collect();
        let above = |t: f64| scores.iter().filter(|&&s| s > t).count() as f64 / scores.len() as f64;
        let (half, tenth, hundredth) = (above(0.5), above(0.742), above(0.9));
        assert!((0.4..0.6).contains(&half), "{half}");
        assert!((0.06..0.14).contains(&tenth), "{tenth}");
        assert!((0.003..0.02).contains(&hundredth), "{hundredth}");
    }

    #[test]
    fn detector_is_deterministic_and_resumes_exactly_from_json() {
        let series = noisy_sine(900, 4);
        let params = IForestParams {
            n_trees: 60,
            ..IForestParams::default()
        };
        let mut a = IForestDetector::train(&series[..500], &params, 8).unwrap();
        let mut b = IForestDetector::train(&series[..500], &params, 8).unwrap();
        let head: Vec<f64> = series[500..600].iter().map(|&v| a.score(v)).collect();
        let head_b: Vec<f64> = series[500..600].iter().map(|&v| b.score(v)).collect();
        assert_eq!(head, head_b);

        let json = serde_json::to_string(&a).unwrap();
        let mut restored: IForestDetector = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&restored).unwrap(), json);
        let tail: Vec<f64> = series[600..].iter().map(|&v| a.score(v)).collect();
        let tail_restored: Vec<f64> = series[600..].iter().map(|&v| restored.score(v)).collect();
        assert_eq!(tail, tail_restored);

        let stale = json.replace(r#""feature_version":1"#, r#""feature_version":0"#);
        let err = serde_json::from_str::<IForestDetector>(&stale)
            .unwrap_err()
            .to_string();
        assert!(err.contains("retrain"), "{err}");
    }

    #[test]
    fn detector_warms_up_after_reset_and_skips_non_finite_values() {
        let series = noisy_sine(400, 6);
        let params = IForestParams {
            n_trees: 30,
            window: 8,
            ..IForestParams::default()
        };
        let mut detector = IForestDetector::train(&series[..300], &params, 1).unwrap();
        assert!(
            detector.score(series[300]) > 0.0,
            "continues from the history"
        );
        detector.reset();
        let warm_up: Vec<f64> = series[301..309]
            .iter()
            .map(|&v| detector.score(v))
            .collect();
        assert_eq!(warm_up, vec![0.0; 8]);
        assert!(detector.score(series[309]) > 0.0);

        let mut with_gap = detector.clone();
        assert_eq!(with_gap.score(f64::NAN), 0.0);
        for &v in &series[310..330] {
            assert_eq!(with_gap.score(v), detector.score(v));
        }
    }
}
