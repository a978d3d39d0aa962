//! Time series as users hand them over: NAB-layout CSV (`timestamp,value`, timestamps
//! `YYYY-MM-DD HH:MM:SS` UTC), and the regular grid the forecasters and detectors work on.
//!
//! Bad input is named: a malformed line or a NaN/inf value is an error naming
//! `file:line`; duplicate timestamps and gaps are repaired and *reported* (never a panic).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use chrono::{DateTime, NaiveDateTime, Utc};

/// Why a series could not be read or put on a grid; the message names the input
/// (`file:line`, or `name[index]`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct SeriesError(pub String);

/// The NAB timestamp format.
pub const TS_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// A series as read: timestamps (epoch seconds, UTC) and values, in input order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// Where it came from (a file path or `service/metric`), for messages.
    pub name: String,
    pub ts: Vec<i64>,
    pub values: Vec<f64>,
}

/// Parses `YYYY-MM-DD HH:MM:SS` (also accepts RFC 3339) as UTC epoch seconds.
pub fn parse_ts(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(t) = NaiveDateTime::parse_from_str(s, TS_FORMAT) {
        return Some(t.and_utc().timestamp());
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f") {
        return Some(t.and_utc().timestamp());
    }
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp())
}

/// Formats epoch seconds as `YYYY-MM-DD HH:MM:SS`.
pub fn format_ts(t: i64) -> String {
    DateTime::<Utc>::from_timestamp(t, 0)
        .map(|d| d.format(TS_FORMAT).to_string())
        .unwrap_or_else(|| t.to_string())
}

/// Reads a NAB-layout CSV. Errors name `path:line` (1-based, the header is line 1).
pub fn read_csv(path: &Path) -> Result<Series, SeriesError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SeriesError(format!("{}: {e}", path.display())))?;
    parse_csv(&path.display().to_string(), &text)
}

/// Parses NAB-layout CSV text (the `csv` crate: quoting, CRLF, a BOM); `name` prefixes
/// error messages, with the 1-based line.
pub fn parse_csv(name: &str, text: &str) -> Result<Series, SeriesError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.trim_start_matches('\u{feff}').as_bytes());
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| SeriesError(format!("{name}:1: {e}")))?
        .iter()
        .map(str::to_ascii_lowercase)
        .collect();
    let (ti, vi) = match (
        header.iter().position(|c| c == "timestamp"),
        header.iter().position(|c| c == "value"),
    ) {
        (Some(t), Some(v)) => (t, v),
        _ => {
            return Err(SeriesError(format!(
                "{name}:1: expected the header `timestamp,value`, found `{}`",
                header.join(",")
            )));
        }
    };
    let mut out = Series {
        name: name.to_string(),
        ..Series::default()
    };
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, csv::Position::line);
            SeriesError(format!("{name}:{line}: {e}"))
        })?;
        let n = record.position().map_or(0, csv::Position::line);
        if record.iter().all(str::is_empty) {
            continue;
        }
        let (Some(t), Some(v)) = (record.get(ti), record.get(vi)) else {
            return Err(SeriesError(format!(
                "{name}:{n}: expected {} fields, found {}",
                header.len(),
                record.len()
            )));
        };
        let t = parse_ts(t).ok_or_else(|| {
            SeriesError(format!(
                "{name}:{n}: timestamp `{t}` is not `YYYY-MM-DD HH:MM:SS`"
            ))
        })?;
        let v: f64 = v
            .parse()
            .map_err(|_| SeriesError(format!("{name}:{n}: value `{v}` is not a number")))?;
        if !v.is_finite() {
            return Err(SeriesError(format!(
                "{name}:{n}: value {v} is not finite (row index {})",
                out.values.len()
            )));
        }
        out.ts.push(t);
        out.values.push(v);
    }
    if out.values.is_empty() {
        return Err(SeriesError(format!("{name}: no rows after the header")));
    }
    Ok(out)
}

/// Rejects NaN/inf with the index of the first one (for series sent over HTTP).
pub fn check_finite(values: &[f64], what: &str) -> Result<(), SeriesError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(SeriesError(format!(
            "{what}[{i}] is {}: values must be finite numbers",
            values[i]
        ))),
        None => Ok(()),
    }
}

/// What [`regularize`] repaired.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RepairReport {
    /// Input rows that shared a grid slot with another (averaged together).
    pub duplicates: usize,
    /// Grid slots with no input, filled by linear interpolation.
    pub gaps_filled: usize,
    /// Input rows out of time order (sorted).
    pub out_of_order: usize,
}

impl RepairReport {
    pub fn is_clean(&self) -> bool {
        *self == RepairReport::default()
    }
}

impl fmt::Display for RepairReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_clean() {
            return write!(f, "no gaps or duplicate timestamps");
        }
        let mut parts = Vec::new();
        if self.duplicates > 0 {
            parts.push(format!(
                "{} duplicate timestamp(s) averaged",
                self.duplicates
            ));
        }
        if self.gaps_filled > 0 {
            parts.push(format!("{} missing step(s) interpolated", self.gaps_filled));
        }
        if self.out_of_order > 0 {
            parts.push(format!("{} row(s) out of order sorted", self.out_of_order));
        }
        write!(f, "{}", parts.join(", "))
    }
}

/// A series on a regular grid: `values[i]` is the mean of the inputs in
/// `[start + i·step, start + (i+1)·step)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Regular {
    pub start: i64,
    pub step: i64,
    pub values: Vec<f64>,
    pub report: RepairReport,
}

impl Regular {
    pub fn ts(&self, i: usize) -> i64 {
        self.start + i as i64 * self.step
    }
    pub fn end(&self) -> i64 {
        self.ts(self.values.len())
    }
    /// Points per day (at least 1).
    pub fn per_day(&self) -> usize {
        ((86_400 / self.step.max(1)) as usize).max(1)
    }
}

/// The input's own step: the most common positive difference between sorted timestamps.
pub fn infer_step(ts: &[i64]) -> Option<i64> {
    let mut sorted = ts.to_vec();
    sorted.sort_unstable();
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for w in sorted.windows(2) {
        let d = w[1] - w[0];
        if d > 0 {
            *counts.entry(d).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|&(d, c)| (c, std::cmp::Reverse(d)))
        .map(|(d, _)| d)
}

/// Puts a series on a regular grid of `step` seconds (default: its own step), aligned to
/// the first timestamp. Rows in one slot are averaged (duplicates), empty slots between
/// rows are linearly interpolated (gaps); both are counted in the report.
pub fn regularize(s: &Series, step: Option<i64>) -> Result<Regular, SeriesError> {
    if s.ts.is_empty() {
        return Err(SeriesError(format!("{}: the series is empty", s.name)));
    }
    check_finite(&s.values, &s.name)?;
    let step = match step.or_else(|| infer_step(&s.ts)) {
        Some(st) if st > 0 => st,
        _ => {
            return Err(SeriesError(format!(
                "{}: cannot infer a step from {} timestamp(s); give --step",
                s.name,
                s.ts.len()
            )));
        }
    };
    let out_of_order = s.ts.windows(2).filter(|w| w[1] < w[0]).count();
    // slots are aligned to the first timestamp (rows at :02, :07, … stay at :02, :07)
    let phase = s.ts.iter().min().expect("non-empty").rem_euclid(step);
    let mut slots: BTreeMap<i64, (f64, usize)> = BTreeMap::new();
    for (&t, &v) in s.ts.iter().zip(&s.values) {
        let slot = (t - phase).div_euclid(step);
        let e = slots.entry(slot).or_default();
        e.0 += v;
        e.1 += 1;
    }
    let first = *slots.keys().next().expect("non-empty");
    let last = *slots.keys().next_back().expect("non-empty");
    let n = (last - first + 1) as usize;
    if n > 50_000_000 {
        return Err(SeriesError(format!(
            "{}: {n} steps of {step}s between the first and last timestamp is too many",
            s.name
        )));
    }
    let mut values = vec![f64::NAN; n];
    let mut duplicates = 0;
    for (slot, (sum, count)) in &slots {
        values[(slot - first) as usize] = sum / *count as f64;
        duplicates += count - 1;
    }
    let mut gaps_filled = 0;
    let mut prev = 0usize;
    for i in 1..n {
        if values[i].is_nan() {
            continue;
        }
        if i - prev > 1 {
            let (a, b) = (values[prev], values[i]);
            for (j, v) in values.iter_mut().enumerate().take(i).skip(prev + 1) {
                let f = (j - prev) as f64 / (i - prev) as f64;
                *v = a + (b - a) * f;
                gaps_filled += 1;
            }
        }
        prev = i;
    }
    Ok(Regular {
        start: first * step + phase,
        step,
        values,
        report: RepairReport {
            duplicates,
            gaps_filled,
            out_of_order,
        },
    })
}

/// Every `*.csv` under `dir`, recursively, sorted (symbolic links to directories are
/// followed).
pub fn csv_files(dir: &Path) -> Result<Vec<std::path::PathBuf>, SeriesError> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<(), SeriesError> {
        let entries =
            std::fs::read_dir(dir).map_err(|e| SeriesError(format!("{}: {e}", dir.display())))?;
        for entry in entries {
            let path = entry
                .map_err(|e| SeriesError(format!("{}: {e}", dir.display())))?
                .path();
            if path.is_dir() {
                walk(&path, out)?;
            } else if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
            {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// Writes `header` then one line per row.
pub fn write_csv(path: &Path, header: &str, rows: &[String]) -> Result<(), SeriesError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| SeriesError(format!("{}: {e}", dir.display())))?;
    }
    let mut text = String::with_capacity(rows.len() * 48 + header.len() + 1);
    text.push_str(header);
    text.push('\n');
    for r in rows {
        text.push_str(r);
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|e| SeriesError(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nab_csv_and_names_bad_lines() {
        let s = parse_csv(
            "a.csv",
            "timestamp,value\n2014-02-14 14:30:00,1.5\n2014-02-14 14:35:00,2\n",
        )
        .unwrap();
        assert_eq!(s.values, vec![1.5, 2.0]);
        assert_eq!(format_ts(s.ts[0]), "2014-02-14 14:30:00");
        let e = parse_csv(
            "a.csv",
            "timestamp,value\n2014-02-14 14:30:00,1\n2014-02-14 14:35:00,NaN\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("a.csv:3") && e.contains("row index 1"), "{e}");
        let e = parse_csv("a.csv", "timestamp,value\nyesterday,1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("a.csv:2") && e.contains("yesterday"), "{e}");
        let e = parse_csv("a.csv", "ts,v\n").unwrap_err().to_string();
        assert!(e.contains("a.csv:1"), "{e}");
        // quoted fields, CRLF line ends, a BOM and a blank line are CSV too
        let s = parse_csv(
            "a.csv",
            "\u{feff}\"timestamp\",\"value\"\r\n\"2014-02-14 14:30:00\",\"1.5\"\r\n\r\n2014-02-14 14:35:00,2\r\n",
        )
        .unwrap();
        assert_eq!(s.values, vec![1.5, 2.0]);
        let e = parse_csv(
            "a.csv",
            "timestamp,value\n2014-02-14 14:30:00,1\n2014-02-14 14:35:00\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("a.csv:3: expected 2 fields, found 1"), "{e}");
    }

    #[test]
    fn regularize_averages_duplicates_and_fills_gaps() {
        let s = Series {
            name: "s".into(),
            ts: vec![0, 300, 300, 900, 1200, 600 + 1200],
            values: vec![1.0, 2.0, 4.0, 7.0, 8.0, 10.0],
        };
        let r = regularize(&s, None).unwrap();
        assert_eq!(r.step, 300);
        assert_eq!(r.values, vec![1.0, 3.0, 5.0, 7.0, 8.0, 9.0, 10.0]);
        assert_eq!(
            r.report,
            RepairReport {
                duplicates: 1,
                gaps_filled: 2,
                out_of_order: 0
            }
        );
        assert!(
            check_finite(&[1.0, f64::INFINITY], "values")
                .unwrap_err()
                .to_string()
                .contains("values[1]")
        );
    }
}
