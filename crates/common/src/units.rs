//! Durations (`30s`, `5m`, `1d`, ISO 8601 `PT30M`) and byte sizes (`128MiB`, `64MB`, `4096`).

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Parses `500ms`, `30s`, `5m`, `2h`, `1d`, `1w`, sums such as `1h30m`, and ISO 8601
/// durations (`PT30M`, `P1DT2H`, `PT0.5S`). Months and years are refused: their length varies.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s.starts_with('P') || s.starts_with('p') {
        return parse_iso8601(s).ok_or_else(|| {
            format!("invalid ISO 8601 duration `{text}` (expected e.g. PT30M or P1DT2H)")
        });
    }
    parse_human(s).ok_or_else(|| {
        format!("invalid duration `{text}` (expected e.g. 500ms, 30s, 5m, 1d or PT30M)")
    })
}

fn parse_human(s: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        if num_end == 0 {
            return None;
        }
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds = match rest[..unit_end].trim() {
            "ms" => 0.001,
            "s" | "sec" | "secs" => 1.0,
            "m" | "min" | "mins" => 60.0,
            "h" | "hr" | "hrs" => 3600.0,
            "d" | "day" | "days" => 86_400.0,
            "w" | "week" | "weeks" => 604_800.0,
            _ => return None,
        };
        total += value * seconds;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).ok()
}

fn parse_iso8601(s: &str) -> Option<Duration> {
    let body = &s[1..];
    let (date, time) = match body.split_once(['T', 't']) {
        Some((d, t)) => (d, Some(t)),
        None => (body, None),
    };
    let mut total = 0f64;
    let mut any = false;
    let mut take = |part: &str, units: &[(char, f64)]| -> Option<()> {
        let mut rest = part;
        let mut allowed = units;
        while !rest.is_empty() {
            let idx = rest.find(|c: char| c.is_ascii_alphabetic())?;
            let value: f64 = rest[..idx].replace(',', ".").parse().ok()?;
            let unit = rest[idx..].chars().next()?.to_ascii_uppercase();
            let pos = allowed.iter().position(|(u, _)| *u == unit)?;
            total += value * allowed[pos].1;
            allowed = &allowed[pos + 1..];
            rest = &rest[idx + 1..];
            any = true;
        }
        Some(())
    };
    take(date, &[('W', 604_800.0), ('D', 86_400.0)])?;
    if let Some(t) = time {
        if t.is_empty() {
            return None;
        }
        take(t, &[('H', 3600.0), ('M', 60.0), ('S', 1.0)])?;
    }
    if !any {
        return None;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// Parses `4096`, `64KB`, `64KiB`, `128MiB`, `1GB` (decimal and binary units).
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let value: f64 = s[..split]
        .parse()
        .map_err(|_| format!("invalid byte size `{text}` (expected e.g. 4096, 64KB or 128MiB)"))?;
    let factor: f64 = match s[split..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "invalid byte size unit in `{text}` (use B, KB, MB, GB, KiB, MiB or GiB)"
            ));
        }
    };
    Ok((value * factor) as u64)
}

/// A byte size read from config as a number or a string such as `128MiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Ok(ByteSize(n)),
            Raw::Text(t) => parse_byte_size(&t)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Serde adapter for `Duration` fields: `#[serde(with = "ymera_common::units::duration")]`.
pub mod duration {
    use super::*;

    /// Deserializes a duration written as `30s`, `5m` or `PT30M`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("30s", 30.0),
            ("5m", 300.0),
            ("1d", 86_400.0),
            ("500ms", 0.5),
            ("1h30m", 5400.0),
            ("PT30M", 1800.0),
            ("P1DT2H", 93_600.0),
            ("PT0.5S", 0.5),
            ("P1W", 604_800.0),
        ];
        for (text, secs) in ok {
            assert_eq!(parse_duration(text).unwrap().as_secs_f64(), secs, "{text}");
        }
        for bad in ["", "5", "5x", "P", "PT", "P1M", "PT1H1H", "m5"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("128MiB").unwrap(), 128 * 1024 * 1024);
        assert_eq!(parse_byte_size("64KB").unwrap(), 64_000);
        assert_eq!(parse_byte_size("4096").unwrap(), 4096);
        assert!(parse_byte_size("12 parsecs").is_err());
    }
}
