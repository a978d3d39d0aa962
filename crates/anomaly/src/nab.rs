//! The Numenta Anomaly Benchmark's scoring, reproduced from NAB's reference code: the
//! per-point sweep scores of `nab/sweeper.py` (`Sweeper.calcSweepScore`), the score at a
//! threshold (`calcScoreByThreshold` + `scoreDataSet`), the corpus threshold optimiser
//! (`nab/optimizer.py` `optimizeThreshold`) and the null/perfect normalisation
//! (`nab/runner.py` `Runner.normalize`).
//!
//! How NAB scores one file, and so how this module does:
//!
//! * The first [`probationary_length`] rows (15 % of the file, at most 750) are dropped:
//!   neither their detections nor their window membership count.
//! * Every other row gets a *sweep score* from its position. Inside a window `[l, r]` of
//!   width `W = r - l + 1`, row `i` scores `σ(-(r - i + 1) / W) · A_TP / σ(-1)` with `σ`
//!   the [`scaled_sigmoid`]: `A_TP` at the window's first row, falling towards 0 at its
//!   end. Outside windows, row `i` scores `σ(|i - r_prev| / (W_prev - 1)) · A_FP` against
//!   the last window that ended before it (near 0 just after it, −A_FP far after it), or
//!   `−A_FP` when no window has ended yet.
//! * At a threshold, a row is a detection when its anomaly score is `>= threshold`
//!   (`util.convertAnomalyScoresToDetections`). The file's raw score is the sum of the
//!   sweep scores of all detections outside windows, plus for each window the best sweep
//!   score of a detection in it (its earliest detection, since sweep scores fall through
//!   a window), or `−A_FN` when nothing in it was detected.
//! * The counts (`tp`, `fp`, `fn_`, `tn`) are NAB's: *rows*, not windows — a row in a
//!   window that is detected is a tp, one that is not is a fn, and so on.
//!
//! Where NAB's code would crash or refuses the input, this module picks a defined answer
//! instead (documented on each function); [`validate`] reports the inputs NAB refuses.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use ymera_common::series::parse_ts;

/// A NAB application profile: the weights of the cost matrix (`config/profiles.json`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    /// Weight of a detected window (`tpWeight`): the score of a detection at its start.
    pub a_tp: f64,
    /// Weight of a false positive (`fpWeight`): the cost of one far from any window.
    pub a_fp: f64,
    /// Weight of a missed window (`fnWeight`).
    pub a_fn: f64,
    /// Weight of a true negative (`tnWeight`); NAB's scorer never reads it.
    pub a_tn: f64,
}

impl Profile {
    /// NAB's "standard" profile.
    pub const STANDARD: Profile = Profile {
        a_tp: 1.0,
        a_fp: 0.11,
        a_fn: 1.0,
        a_tn: 1.0,
    };
}

/// Share of each file that is probationary (`Runner.probationaryPercent`).
pub const PROBATIONARY_PERCENT: f64 = 0.15;

/// The threshold NAB's sweep starts from: above every score in [0, 1], so nothing is
/// detected (`Sweeper.calcScoreByThreshold`'s `curThreshold = 1.1`). The optimiser
/// returns it when detecting nothing scores best.
pub const NO_DETECTION_THRESHOLD: f64 = 1.1;

/// Number of leading rows NAB ignores in a file of `rows` rows:
/// `min(floor(0.15 · rows), 0.15 · 5000)` (`util.getProbationPeriod`,
/// `Sweeper._getProbationaryLength`), computed in the same floating-point steps.
pub fn probationary_length(rows: usize) -> usize {
    let length = (PROBATIONARY_PERCENT * rows as f64)
        .floor()
        .min(PROBATIONARY_PERCENT * 5000.0);
    // Both operands of the min are whole numbers, and NAB compares `i >= length`.
    length.ceil() as usize
}

/// NAB's scaled sigmoid (`sweeper.scaledSigmoid`): `2 / (1 + e^(5x)) − 1`, and exactly −1
/// beyond `x > 3`. Maps −1 (a window's first row) to 0.98661, 0 to 0, 1 to −0.98661.
pub fn scaled_sigmoid(x: f64) -> f64 {
    if x > 3.0 {
        -1.0
    } else {
        2.0 * sigmoid(-5.0 * x) - 1.0
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Reads NAB's `labels/combined_windows.json`: relative data path → windows as inclusive
/// `(start, end)` epoch seconds, UTC, in file order.
///
/// Bounds are `YYYY-MM-DD HH:MM:SS.ffffff`. NAB's bounds are whole seconds; a bound with a
/// fraction keeps exactly the whole-second rows inside it (start rounds up, end down).
pub fn load_windows(path: &Path) -> Result<BTreeMap<String, Vec<(i64, i64)>>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let raw: BTreeMap<String, Vec<[String; 2]>> = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{}: expected {{\"dir/file.csv\": [[start, end], ...]}}: {e}",
            path.display()
        )
    })?;
    let mut out = BTreeMap::new();
    for (name, pairs) in raw {
        let mut windows = Vec::with_capacity(pairs.len());
        for [start, end] in &pairs {
            let bound = |s: &str| {
                parse_bound(s).ok_or_else(|| {
                    format!(
                        "{}: {name}: window bound `{s}` is not `YYYY-MM-DD HH:MM:SS[.ffffff]`",
                        path.display()
                    )
                })
            };
            let (start_s, start_frac) = bound(start)?;
            let (end_s, _) = bound(end)?;
            let start_s = start_s + i64::from(start_frac);
            if start_s > end_s {
                return Err(format!(
                    "{}: {name}: window [{start}, {end}] ends before it starts",
                    path.display()
                ));
            }
            windows.push((start_s, end_s));
        }
        out.insert(name, windows);
    }
    Ok(out)
}

/// Whole epoch seconds of a bound, and whether it had a non-zero fraction.
fn parse_bound(s: &str) -> Option<(i64, bool)> {
    let s = s.trim();
    if let Some((whole, frac)) = s.split_once('.')
        && !frac.is_empty()
        && frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Some((parse_ts(whole)?, frac.bytes().any(|b| b != b'0')));
    }
    Some((parse_ts(s)?, false))
}

/// One data file to score: its rows (timestamps in order, one anomaly score per
/// timestamp, scores in [0, 1] as NAB expects) and its windows from [`load_windows`].
#[derive(Debug, Clone, Copy)]
pub struct FileInput<'a> {
    /// Relative path, e.g. `realAWSCloudwatch/ec2_cpu_utilization_5f5533.csv`.
    pub name: &'a str,
    /// Epoch seconds, not decreasing (NAB's data repeats a few).
    pub ts: &'a [i64],
    /// The detector's anomaly score per row; NaN is never a detection.
    pub scores: &'a [f64],
    /// Inclusive `(start, end)` epoch seconds, ordered and disjoint.
    pub windows: &'a [(i64, i64)],
}

/// One file's score at one threshold.
#[derive(Debug, Clone, Serialize)]
pub struct FileScore {
    pub name: String,
    /// NAB's raw score.
    pub raw: f64,
    /// The null detector's raw score (nothing detected): −A_FN per window that has a
    /// row after the probationary period.
    pub null: f64,
    /// The perfect detector's score: A_TP per window (`Runner.normalize`).
    pub perfect: f64,
    /// Detected rows inside windows.
    pub tp: usize,
    /// Detected rows outside windows.
    pub fp: usize,
    /// Undetected rows inside windows.
    pub fn_: usize,
    /// Undetected rows outside windows.
    pub tn: usize,
}

/// A corpus's score at one threshold.
#[derive(Debug, Clone, Serialize)]
pub struct CorpusScore {
    pub threshold: f64,
    /// Sum of the files' raw scores.
    pub raw: f64,
    /// Sum of the files' null scores (see [`score_corpus`]).
    pub null: f64,
    /// Sum of the files' perfect scores.
    pub perfect: f64,
    /// `100 · (raw − null) / (perfect − null)`; NaN when `perfect == null` (no windows).
    pub normalised: f64,
    pub files: Vec<FileScore>,
}

/// Reports what NAB refuses or cannot score: `ts` and `scores` of different lengths
/// (`calcSweepScore` asserts), windows out of order or overlapping
/// (`CorpusLabel.validateLabels`), and window bounds that are not the timestamp of
/// exactly one row (`CorpusLabel.getWindows`). Also decreasing timestamps, which this
/// module needs sorted (NAB's data is; it repeats a few timestamps, which is fine).
/// The scoring functions do not call this; on such input they still give a defined
/// answer (see [`score_file`]).
pub fn validate(input: &FileInput) -> Result<(), String> {
    let name = input.name;
    if input.ts.len() != input.scores.len() {
        return Err(format!(
            "{name}: {} timestamps but {} scores",
            input.ts.len(),
            input.scores.len()
        ));
    }
    if let Some(i) = input.ts.windows(2).position(|p| p[0] > p[1]) {
        return Err(format!("{name}: timestamps decrease at row {}", i + 1));
    }
    let mut prev_end = None;
    for &(start, end) in input.windows {
        if start > end || prev_end.is_some_and(|p| start < p) {
            return Err(format!(
                "{name}: window [{start}, {end}] is inverted, out of order or overlaps the previous one"
            ));
        }
        for bound in [start, end] {
            let first = input.ts.partition_point(|&t| t < bound);
            let past = input.ts.partition_point(|&t| t <= bound);
            if past - first != 1 {
                return Err(format!(
                    "{name}: window bound {bound} is the timestamp of {} rows, not exactly one",
                    past - first
                ));
            }
        }
        prev_end = Some(end);
    }
    Ok(())
}

/// A row that counts (after the probationary period), as the sweep sees it.
#[derive(Debug, Clone, Copy)]
struct Row {
    score: f64,
    /// NAB's per-row `sweepScore`.
    sweep: f64,
    /// Index into [`Swept::scorable`] when the row lies in a window.
    window: Option<usize>,
}

/// One file after `Sweeper.calcSweepScore`, probationary rows dropped.
#[derive(Debug)]
struct Swept {
    rows: Vec<Row>,
    /// Per window: whether any of its rows is after the probationary period. Only those
    /// windows get a `−A_FN` part (`_prepareScoreByThresholdParts`).
    scorable: Vec<bool>,
}

/// `Sweeper.calcSweepScore` over row indices. NAB finds a window's rows by exact
/// timestamp equality (`timestamps.index(...)`); this takes the rows with
/// `start <= ts <= end`, which is the same rows when [`validate`] passes. Windows that
/// hold no row are skipped (NAB raises).
fn sweep(input: &FileInput, profile: &Profile) -> Swept {
    let n = input.ts.len().min(input.scores.len());
    let ts = &input.ts[..n];
    let mut limits = input.windows.to_vec();
    limits.sort_unstable();
    // Inclusive row ranges [left, right] of the windows that hold rows.
    let ranges: Vec<(usize, usize)> = limits
        .iter()
        .filter_map(|&(start, end)| {
            let left = ts.partition_point(|&t| t < start);
            let past = ts.partition_point(|&t| t <= end);
            (left < past).then(|| (left, past - 1))
        })
        .collect();

    let max_tp = scaled_sigmoid(-1.0);
    let probation = probationary_length(n);
    let mut rows = Vec::with_capacity(n.saturating_sub(probation));
    let mut scorable = vec![false; ranges.len()];
    let mut next = 0;
    // (window id, right index, width) of the window we are in.
    let mut current: Option<(usize, usize, f64)> = None;
    // (right index, width) of the last window we left.
    let mut previous: Option<(usize, f64)> = None;
    for i in 0..n {
        // As NAB, a window is entered at its first row, even while inside another. (A
        // window starting on the same row as an earlier one is passed over; NAB would
        // never enter it nor any window after it.)
        let mut entered = false;
        while let Some(&(left, right)) = ranges.get(next)
            && left == i
        {
            if !entered {
                current = Some((next, right, (right - left + 1) as f64));
                entered = true;
            }
            next += 1;
        }
        let (sweep, window) = match current {
            Some((id, right, width)) => {
                let position = -((right - i + 1) as f64) / width;
                (scaled_sigmoid(position) * profile.a_tp / max_tp, Some(id))
            }
            None => {
                let unweighted = match previous {
                    None => -1.0,
                    // A one-row window divides by zero here; NAB raises, this gives
                    // +inf, so −1 (the farthest false positive).
                    Some((right, width)) => {
                        scaled_sigmoid(right.abs_diff(i) as f64 / (width - 1.0))
                    }
                };
                (unweighted * profile.a_fp, None)
            }
        };
        if i >= probation {
            if let Some(id) = window {
                scorable[id] = true;
            }
            rows.push(Row {
                score: input.scores[i],
                sweep,
                window,
            });
        }
        if let Some((_, right, width)) = current
            && i == right
        {
            previous = Some((right, width));
            current = None;
        }
    }
    Swept { rows, scorable }
}

/// Raw score and counts `[tp, fp, fn, tn]` of a swept file at `threshold`.
fn tally(swept: &Swept, profile: &Profile, threshold: f64) -> (f64, [usize; 4]) {
    let mut parts: Vec<f64> = swept
        .scorable
        .iter()
        .map(|&s| if s { -profile.a_fn } else { 0.0 })
        .collect();
    let mut fp_sum = 0.0;
    let [mut tp, mut fp, mut fn_, mut tn] = [0; 4];
    for row in &swept.rows {
        match (row.window, row.score >= threshold) {
            (Some(w), true) => {
                tp += 1;
                parts[w] = parts[w].max(row.sweep);
            }
            (Some(_), false) => fn_ += 1,
            (None, true) => {
                fp += 1;
                fp_sum += row.sweep;
            }
            (None, false) => tn += 1,
        }
    }
    (fp_sum + parts.iter().sum::<f64>(), [tp, fp, fn_, tn])
}

fn null_raw(swept: &Swept, profile: &Profile) -> f64 {
    swept.scorable.iter().filter(|&&s| s).count() as f64 * -profile.a_fn
}

/// Scores one file at `threshold`: a row is a detection when `score >= threshold`.
///
/// This is `Sweeper.scoreDataSet`, with two differences where NAB has no answer: NAB
/// returns no row (and `scorer.scoreDataSet` then raises) for a threshold below every
/// score or above 1.1; here such thresholds mean "everything" and "nothing" detected.
///
/// On input [`validate`] rejects, where NAB asserts or raises: rows beyond the shorter of
/// `ts` and `scores` are ignored; a window holds the rows with `start <= ts <= end`
/// (NAB's rows when its bounds are rows) and one holding no row is skipped; overlapping
/// windows are entered as NAB's loop enters them; and a false positive after a one-row
/// window (NAB divides by zero) costs −A_FP.
pub fn score_file(input: &FileInput, threshold: f64, profile: &Profile) -> FileScore {
    let swept = sweep(input, profile);
    let (raw, [tp, fp, fn_, tn]) = tally(&swept, profile, threshold);
    FileScore {
        name: input.name.to_string(),
        raw,
        null: null_raw(&swept, profile),
        perfect: input.windows.len() as f64 * profile.a_tp,
        tp,
        fp,
        fn_,
        tn,
    }
}

/// Scores a corpus at one threshold (`scorer.scoreCorpus`) and normalises it
/// (`Runner.normalize`): `100 · (raw − null) / (perfect − null)`.
///
/// `perfect` is A_TP per window of the files given (NAB counts the windows of the whole
/// labels file, which is the same when the whole corpus is scored). `null` is what NAB's
/// null detector scores: it emits a constant 0.5 and is scored at its threshold in
/// `config/thresholds.json` (0.625, above its scores), so it detects nothing: −A_FN per
/// window with a row after the probationary period (−116 on the standard profile).
pub fn score_corpus(files: &[FileInput], threshold: f64, profile: &Profile) -> CorpusScore {
    let scores = files
        .iter()
        .map(|f| score_file(f, threshold, profile))
        .collect();
    corpus(threshold, scores)
}

fn corpus(threshold: f64, files: Vec<FileScore>) -> CorpusScore {
    let raw = files.iter().map(|f| f.raw).sum();
    let null = files.iter().map(|f| f.null).sum();
    let perfect = files.iter().map(|f| f.perfect).sum();
    let normalised = normalise(raw, null, perfect);
    CorpusScore {
        threshold,
        raw,
        null,
        perfect,
        normalised,
        files,
    }
}

/// `100 · (raw − null) / (perfect − null)`, NaN when `perfect == null`.
pub fn normalise(raw: f64, null: f64, perfect: f64) -> f64 {
    let span = perfect - null;
    if span == 0.0 {
        f64::NAN
    } else {
        100.0 * (raw - null) / span
    }
}

/// Finds the threshold that maximises the corpus's raw score, as NAB's optimiser does
/// (`optimizer.optimizeThreshold` over `Sweeper.calcScoreByThreshold`), and scores the
/// corpus there.
///
/// The candidates are [`NO_DETECTION_THRESHOLD`] and every distinct anomaly score of a
/// row after the probationary period, across all files. All rows are sorted once by
/// score, highest first, and swept down, keeping the score of each candidate; the best
/// is the first maximum in that order, so on ties the *highest* threshold wins (NAB
/// sorts the candidates by score with a stable sort and takes the first). Cost:
/// O(n log n) for n rows.
///
/// When a score is 1.1 or more (outside NAB's [0, 1]) the "nothing detected" candidate
/// is the next float above the largest score instead of 1.1, so that it still means
/// nothing detected under [`score_file`]'s `>=`.
pub fn optimise_threshold(files: &[FileInput], profile: &Profile) -> CorpusScore {
    let mut rows: Vec<Row> = Vec::new();
    let mut parts: Vec<f64> = Vec::new();
    for file in files {
        let swept = sweep(file, profile);
        let offset = parts.len();
        parts.extend(
            swept
                .scorable
                .iter()
                .map(|&s| if s { -profile.a_fn } else { 0.0 }),
        );
        rows.extend(
            swept
                .rows
                .into_iter()
                .filter(|r| !r.score.is_nan())
                .map(|r| Row {
                    window: r.window.map(|w| w + offset),
                    ..r
                }),
        );
    }
    // Stable, highest score first (`prepAnomalyListForScoring`).
    rows.sort_by(|a, b| b.score.total_cmp(&a.score));

    let start = match rows.first() {
        Some(r) if r.score >= NO_DETECTION_THRESHOLD => r.score.next_up(),
        _ => NO_DETECTION_THRESHOLD,
    };
    let mut window_sum: f64 = parts.iter().sum();
    let mut fp_sum = 0.0;
    let mut threshold = start;
    let mut best: Option<(f64, f64)> = None;
    let mut keep = |threshold: f64, score: f64| {
        if best.is_none_or(|(_, b)| score > b) {
            best = Some((threshold, score));
        }
    };
    for row in &rows {
        if row.score != threshold {
            keep(threshold, fp_sum + window_sum);
            threshold = row.score;
        }
        match row.window {
            Some(w) => {
                if row.sweep > parts[w] {
                    window_sum += row.sweep - parts[w];
                    parts[w] = row.sweep;
                }
            }
            None => fp_sum += row.sweep,
        }
    }
    keep(threshold, fp_sum + window_sum);
    let best_threshold = best.map_or(start, |(t, _)| t);
    score_corpus(files, best_threshold, profile)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// σ(x) as written below: `scaled_sigmoid(x) = 2/(1 + e^(5x)) − 1 = −tanh(2.5x)`.
    /// max_tp = σ(−1) = tanh(2.5) = 0.98661429815143.
    const MAX_TP: f64 = 0.986_614_298_151_430_3;
    const T0: i64 = 1_396_310_400; // 2014-04-01 00:00:00

    /// An owned file: `n` rows a minute apart, windows given as inclusive row ranges,
    /// every score 0 except `hits` (row, score).
    struct Case {
        ts: Vec<i64>,
        scores: Vec<f64>,
        windows: Vec<(i64, i64)>,
    }

    impl Case {
        fn new(n: usize, windows: &[(usize, usize)], hits: &[(usize, f64)]) -> Case {
            let ts: Vec<i64> = (0..n as i64).map(|i| T0 + 60 * i).collect();
            let mut scores = vec![0.0; n];
            for &(i, s) in hits {
                scores[i] = s;
            }
            let windows = windows.iter().map(|&(l, r)| (ts[l], ts[r])).collect();
            Case {
                ts,
                scores,
                windows,
            }
        }

        fn input(&self) -> FileInput<'_> {
            FileInput {
                name: "case.csv",
                ts: &self.ts,
                scores: &self.scores,
                windows: &self.windows,
            }
        }

        /// Score at threshold 0.5 under the standard profile.
        fn score(&self) -> FileScore {
            score_file(&self.input(), 0.5, &Profile::STANDARD)
        }
    }

    fn close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() < 1e-12,
            "expected {expected}, got {actual}"
        );
    }

    // Most cases: 40 rows, so probationary_length = floor(0.15 · 40) = 6 (rows 0..=5
    // ignored); one window on rows 10..=13, width W = 4.
    const N: usize = 40;
    const WINDOW: (usize, usize) = (10, 13);

    #[test]
    fn probationary_length_is_15_percent_capped_at_750() {
        assert_eq!(probationary_length(40), 6);
        assert_eq!(probationary_length(100), 15);
        assert_eq!(probationary_length(5000), 750);
        // 0.15 · 6000 = 900, capped at 0.15 · 5000 = 750.
        assert_eq!(probationary_length(6000), 750);
        assert_eq!(probationary_length(6), 0); // floor(0.9)
    }

    #[test]
    fn scaled_sigmoid_matches_nab_docstring() {
        close(scaled_sigmoid(-1.0), MAX_TP);
        close(scaled_sigmoid(-0.5), 0.848_283_639_957_512_6); // tanh(1.25)
        close(scaled_sigmoid(0.0), 0.0);
        close(scaled_sigmoid(1.0), -MAX_TP);
        // At 3 exactly still the curve (−tanh(7.5)), beyond 3 exactly −1.
        close(scaled_sigmoid(3.0), -(7.5f64).tanh());
        assert_eq!(scaled_sigmoid(3.000_001), -1.0);
    }

    #[test]
    fn detection_at_first_row_of_window_scores_a_tp() {
        // Row 10: position −(13 − 10 + 1)/4 = −1, σ(−1)·A_TP/max_tp = 1.
        let s = Case::new(N, &[WINDOW], &[(10, 1.0)]).score();
        close(s.raw, 1.0);
        // Counts are rows: 1 detected in the window, 3 not; 40 − 6 − 4 = 30 outside.
        assert_eq!((s.tp, s.fn_, s.fp, s.tn), (1, 3, 0, 30));
    }

    #[test]
    fn detection_at_last_row_of_window_scores_least() {
        // Row 13: position −(13 − 13 + 1)/4 = −0.25, σ(−0.25) = tanh(0.625)
        // = 0.5545997223493823; / max_tp = 0.5621241486044829.
        let s = Case::new(N, &[WINDOW], &[(13, 1.0)]).score();
        close(s.raw, 0.562_124_148_604_482_9);
    }

    #[test]
    fn missed_window_scores_minus_a_fn() {
        let s = Case::new(N, &[WINDOW], &[]).score();
        close(s.raw, -1.0);
        assert_eq!((s.tp, s.fn_, s.fp, s.tn), (0, 4, 0, 30));
    }

    #[test]
    fn false_positive_before_any_window_costs_a_fp() {
        // Row 7 is after probation (≥ 6) and before the window: −1 · 0.11; window missed: −1.
        let s = Case::new(N, &[WINDOW], &[(7, 1.0)]).score();
        close(s.raw, -0.11 - 1.0);
        assert_eq!((s.tp, s.fn_, s.fp, s.tn), (0, 4, 1, 29));
    }

    #[test]
    fn false_positive_just_after_window_costs_little() {
        // Row 14: position |13 − 14|/(4 − 1) = 1/3, σ(1/3) = −tanh(5/6) = −0.6822…;
        // · 0.11 = −0.07504879692619867; plus the missed window −1.
        let s = Case::new(N, &[WINDOW], &[(14, 1.0)]).score();
        close(s.raw, -0.075_048_796_926_198_67 - 1.0);
    }

    #[test]
    fn false_positive_far_after_window_costs_a_fp() {
        // Row 30: position 17/3 > 3, so σ = −1 exactly: −0.11; plus the missed window −1.
        let s = Case::new(N, &[WINDOW], &[(30, 1.0)]).score();
        close(s.raw, -0.11 - 1.0);
        // Row 22: position 9/3 = 3, not > 3: σ(3) = −tanh(7.5) = −0.99999938…
        let s = Case::new(N, &[WINDOW], &[(22, 1.0)]).score();
        close(s.raw, -(7.5f64).tanh() * 0.11 - 1.0);
    }

    #[test]
    fn only_the_first_detection_in_a_window_counts() {
        // Rows 11 and 12 detected: row 11 scores σ(−3/4)/max_tp = tanh(1.875)/tanh(2.5)
        // = 0.9669890878000608, row 12 less; the window keeps the best (earliest) one.
        let s = Case::new(N, &[WINDOW], &[(11, 1.0), (12, 1.0)]).score();
        close(s.raw, 0.966_989_087_800_060_8);
        // Both rows still count as tp rows.
        assert_eq!((s.tp, s.fn_), (2, 2));
    }

    #[test]
    fn probationary_detections_and_windows_are_ignored() {
        // Row 3 is probationary (< 6): its detection neither costs nor counts.
        let s = Case::new(N, &[WINDOW], &[(3, 1.0)]).score();
        close(s.raw, -1.0);
        assert_eq!(s.fp + s.tp + s.fn_ + s.tn, N - 6);
        // A window on rows 2..=4 lies wholly in the probationary period: it gives no
        // −A_FN part (so null and raw ignore it) but the perfect score counts it.
        let s = Case::new(N, &[(2, 4), WINDOW], &[(3, 1.0)]).score();
        close(s.raw, -1.0);
        close(s.null, -1.0);
        close(s.perfect, 2.0);
        // Rows after it are false positives against it: row 8 has position
        // |4 − 8|/(3 − 1) = 2, σ(2) = −tanh(5) = −0.9999092…; · 0.11.
        let s = Case::new(N, &[(2, 4), WINDOW], &[(8, 1.0)]).score();
        close(s.raw, -(5f64).tanh() * 0.11 - 1.0);
    }

    #[test]
    fn null_and_perfect_baselines() {
        // Two windows, nothing detected: null = raw = −2 · A_FN; perfect = 2 · A_TP.
        let s = Case::new(N, &[WINDOW, (25, 28)], &[]).score();
        close(s.raw, -2.0);
        close(s.null, -2.0);
        close(s.perfect, 2.0);
        // The perfect detector, one detection at each window's first row, scores
        // 1 + 1 = perfect, which normalises to 100: 100 · (2 + 2)/(2 + 2).
        let perfect = Case::new(N, &[WINDOW, (25, 28)], &[(10, 1.0), (25, 1.0)]);
        let c = score_corpus(&[perfect.input()], 0.5, &Profile::STANDARD);
        close(c.raw, 2.0);
        close(c.normalised, 100.0);
        // And the null detector normalises to 0.
        let null = Case::new(N, &[WINDOW, (25, 28)], &[]);
        close(
            score_corpus(&[null.input()], 0.5, &Profile::STANDARD).normalised,
            0.0,
        );
    }

    #[test]
    fn normalised_score_over_a_corpus() {
        // File a: window detected at its first row (+1) and a far false positive (−0.11).
        // File b: window missed (−1). Corpus raw = 1 − 0.11 − 1 = −0.11; null = −2;
        // perfect = 2. Normalised = 100 · (−0.11 + 2)/(2 + 2) = 47.25.
        let a = Case::new(N, &[WINDOW], &[(10, 1.0), (30, 1.0)]);
        let b = Case::new(N, &[WINDOW], &[]);
        let c = score_corpus(&[a.input(), b.input()], 0.5, &Profile::STANDARD);
        close(c.raw, -0.11);
        close(c.null, -2.0);
        close(c.perfect, 2.0);
        close(c.normalised, 47.25);
        // No windows at all: nothing to normalise against.
        let none = Case::new(N, &[], &[]);
        assert!(
            score_corpus(&[none.input()], 0.5, &Profile::STANDARD)
                .normalised
                .is_nan()
        );
    }

    /// File a: window 10..=13; row 10 scores 0.8 (tp, +1), row 30 scores 0.9 (far fp,
    /// −0.11). File b: window 20..=23; row 25 scores 0.7 (fp 2 rows after: position 2/3,
    /// −tanh(5/3) · 0.11 = −0.10242205695343354), row 21 scores 0.5 (tp at position
    /// −3/4: 0.9669890878000608), row 22 scores 0.4 (a second tp: changes nothing).
    /// All other rows score 0.
    ///
    /// The corpus score as the threshold sweeps down:
    ///   1.1: −1 − 1                                   = −2
    ///   0.9: −2 − 0.11                                = −2.11
    ///   0.8: +1 − 0.11 − 1                            = −0.11
    ///   0.7: −0.11 − 0.10242205695343354              = −0.21242205695343354
    ///   0.5: + 1 + 0.9669890878000608 (b's tp)        =  1.7545670308466273
    ///   0.4: unchanged (second detection in b's window) = 1.7545670308466273
    ///   0.0: every other row is an fp                 ≪ 0
    /// Best 1.7545670308466273 at 0.5 and 0.4; NAB keeps the first, 0.5.
    fn optimiser_corpus() -> (Case, Case) {
        let a = Case::new(N, &[WINDOW], &[(10, 0.8), (30, 0.9)]);
        let b = Case::new(N, &[(20, 23)], &[(25, 0.7), (21, 0.5), (22, 0.4)]);
        (a, b)
    }

    #[test]
    fn optimiser_picks_best_threshold_and_highest_on_ties() {
        let (a, b) = optimiser_corpus();
        let c = optimise_threshold(&[a.input(), b.input()], &Profile::STANDARD);
        assert_eq!(c.threshold, 0.5);
        close(
            c.raw,
            1.0 - 0.11 - 0.102_422_056_953_433_54 + 0.966_989_087_800_060_8,
        );
        close(c.null, -2.0);
        // Each listed threshold of the sweep, scored directly, matches the table above.
        let at = |t| score_corpus(&[a.input(), b.input()], t, &Profile::STANDARD).raw;
        close(at(1.1), -2.0);
        close(at(0.9), -2.11);
        close(at(0.8), -0.11);
        close(at(0.7), -0.11 - 0.102_422_056_953_433_54);
        close(at(0.4), at(0.5));
    }

    #[test]
    fn optimiser_returns_no_detection_threshold_when_nothing_helps() {
        // Only a false positive: detecting nothing (−1) beats 0.9 (−1.11); NAB reports 1.1.
        let a = Case::new(N, &[WINDOW], &[(30, 0.9)]);
        let c = optimise_threshold(&[a.input()], &Profile::STANDARD);
        assert_eq!(c.threshold, NO_DETECTION_THRESHOLD);
        close(c.raw, -1.0);
        // Scores above NAB's range still leave a "nothing" candidate that means nothing.
        let b = Case::new(N, &[WINDOW], &[(30, 2.0)]);
        let c = optimise_threshold(&[b.input()], &Profile::STANDARD);
        assert!(c.threshold > 2.0);
        close(c.raw, -1.0);
    }

    /// A small deterministic generator (xorshift64*), so the test needs no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn optimiser_agrees_with_scoring_every_candidate() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..30 {
            let cases: Vec<Case> = (0..3)
                .map(|_| {
                    let n = 20 + rng.below(60) as usize;
                    let mut windows = Vec::new();
                    let mut at = rng.below(n as u64 / 2) as usize;
                    while at + 3 < n && windows.len() < 3 {
                        let width = 2 + rng.below(6) as usize;
                        let end = (at + width - 1).min(n - 1);
                        windows.push((at, end));
                        at = end + 2 + rng.below(15) as usize;
                    }
                    // Coarse scores so that ties between rows are common.
                    let hits: Vec<(usize, f64)> =
                        (0..n).map(|i| (i, rng.below(11) as f64 / 10.0)).collect();
                    Case::new(n, &windows, &hits)
                })
                .collect();
            let inputs: Vec<FileInput> = cases.iter().map(Case::input).collect();
            let best = optimise_threshold(&inputs, &Profile::STANDARD);
            // Brute force: every candidate, highest first, the first maximum wins.
            let mut candidates: Vec<f64> = cases
                .iter()
                .flat_map(|c| c.scores[probationary_length(c.ts.len())..].to_vec())
                .collect();
            candidates.push(NO_DETECTION_THRESHOLD);
            candidates.sort_by(|a, b| b.total_cmp(a));
            candidates.dedup();
            let mut expected = (f64::NAN, f64::NEG_INFINITY);
            for t in candidates {
                let raw = score_corpus(&inputs, t, &Profile::STANDARD).raw;
                if raw > expected.1 + 1e-9 {
                    expected = (t, raw);
                }
            }
            assert_eq!(best.threshold, expected.0);
            close(best.raw, expected.1);
        }
    }

    #[test]
    fn windows_file_bounds_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("combined_windows.json");
        std::fs::write(
            &path,
            r#"{"a/x.csv": [["2014-04-01 00:01:00.000000", "2014-04-01 00:03:00.000000"]],
                "a/none.csv": [],
                "a/frac.csv": [["2014-04-01 00:01:00.500000", "2014-04-01 00:03:00.900000"]]}"#,
        )
        .unwrap();
        let w = load_windows(&path).unwrap();
        assert_eq!(w["a/x.csv"], vec![(T0 + 60, T0 + 180)]);
        assert!(w["a/none.csv"].is_empty());
        // A fractional start rounds up, a fractional end down: the same whole-second rows.
        assert_eq!(w["a/frac.csv"], vec![(T0 + 61, T0 + 180)]);

        std::fs::write(&path, r#"{"a/x.csv": [["2014-04-01", "x"]]}"#).unwrap();
        let err = load_windows(&path).unwrap_err();
        assert!(
            err.contains("a/x.csv") && err.contains("2014-04-01"),
            "{err}"
        );
        std::fs::write(&path, r#"{"a/x.csv": [["2014-04-01 00:00:00"]]}"#).unwrap();
        assert!(load_windows(&path).is_err());
    }

    #[test]
    fn validate_reports_what_nab_refuses() {
        let case = Case::new(N, &[WINDOW], &[]);
        assert_eq!(validate(&case.input()), Ok(()));
        let off_grid = [(T0 + 30, T0 + 600)];
        let input = FileInput {
            windows: &off_grid,
            ..case.input()
        };
        assert!(validate(&input).unwrap_err().contains("of 0 rows"));
        let short = FileInput {
            scores: &case.scores[..3],
            ..case.input()
        };
        assert!(validate(&short).is_err());
    }

    /// The real NAB labels, when present: every window bound must be a row of its data
    /// file (NAB's own check), and the perfect detector must score 100 over the corpus.
    #[test]
    fn real_nab_corpus_when_present() {
        let root = Path::new("/work/shared/data/nab");
        let labels = root.join("labels/combined_windows.json");
        if !labels.exists() {
            eprintln!("skipped: {} not found", labels.display());
            return;
        }
        let windows = load_windows(&labels).unwrap();
        assert!(!windows.is_empty());
        let mut files = Vec::new();
        for (name, w) in &windows {
            let Ok(series) = ymera_common::series::read_csv(&root.join("data").join(name)) else {
                continue;
            };
            let mut perfect = vec![0.0; series.ts.len()];
            for &(start, _) in w {
                perfect[series.ts.partition_point(|&t| t < start)] = 1.0;
            }
            files.push((name.clone(), series.ts, perfect, w.clone()));
        }
        if files.is_empty() {
            eprintln!("skipped: no data files under {}", root.display());
            return;
        }
        let inputs: Vec<FileInput> = files
            .iter()
            .map(|(name, ts, scores, windows)| FileInput {
                name,
                ts,
                scores,
                windows,
            })
            .collect();
        for input in &inputs {
            validate(input).unwrap();
        }
        let c = optimise_threshold(&inputs, &Profile::STANDARD);
        close(c.raw, c.perfect);
        close(c.normalised, 100.0);
        close(c.null, -c.perfect);
    }
}
