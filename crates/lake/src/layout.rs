//! Names in the lake: segment file names and Hive partition directories.

use std::fmt;

/// Width of the zero-padded offsets in file names: enough for any i64 offset, so that
/// lexicographic order is offset order.
pub const OFFSET_WIDTH: usize = 20;

/// The source range a set of files was made from: one Kafka partition, an inclusive
/// offset range. Its name is the file name of every table file made from that range.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentId {
    pub topic: String,
    pub partition: i32,
    pub first: i64,
    pub last: i64,
}

impl SegmentId {
    /// `<topic>+<partition>+<first>-<last>` with zero-padded offsets.
    pub fn name(&self) -> String {
        format!(
            "{}+{}+{:0w$}-{:0w$}",
            self.topic,
            self.partition,
            self.first,
            self.last,
            w = OFFSET_WIDTH
        )
    }

    /// The Parquet file name of this segment.
    pub fn file_name(&self) -> String {
        format!("{}.parquet", self.name())
    }

    /// Parses a name made by [`SegmentId::name`], with or without an extension.
    /// Topics may themselves contain `+` (Kafka allows only `[a-zA-Z0-9._-]`, so they don't).
    pub fn parse(file_name: &str) -> Option<SegmentId> {
        let stem = file_name
            .strip_suffix(".parquet")
            .or_else(|| file_name.strip_suffix(".json"))
            .unwrap_or(file_name);
        let (rest, range) = stem.rsplit_once('+')?;
        let (topic, partition) = rest.rsplit_once('+')?;
        let (first, last) = range.split_once('-')?;
        let seg = SegmentId {
            topic: topic.to_string(),
            partition: partition.parse().ok()?,
            first: first.parse().ok()?,
            last: last.parse().ok()?,
        };
        (!seg.topic.is_empty() && seg.first <= seg.last && seg.first >= 0).then_some(seg)
    }
}

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}@{}..={}",
            self.topic, self.partition, self.first, self.last
        )
    }
}

/// The value Hive writes for a null partition value.
pub const HIVE_NULL: &str = "__HIVE_DEFAULT_PARTITION__";

/// Escapes a partition value the way Hive does, so `/`, `=` and friends cannot break the path.
pub fn escape_partition_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        let needs = c.is_control()
            || matches!(
                c,
                '"' | '#'
                    | '%'
                    | '\''
                    | '*'
                    | '/'
                    | ':'
                    | '='
                    | '?'
                    | '\\'
                    | '\x7F'
                    | '{'
                    | '['
                    | ']'
                    | '^'
            );
        if needs {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    if out.is_empty() {
        HIVE_NULL.to_string()
    } else {
        out
    }
}

/// True for lake paths that are not table data (commit log, staging, models).
pub fn is_internal(top_level: &str) -> bool {
    top_level.starts_with('_') || top_level.starts_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        let s = SegmentId {
            topic: "task-events".into(),
            partition: 3,
            first: 7,
            last: 1234,
        };
        assert_eq!(
            s.file_name(),
            "task-events+3+00000000000000000007-00000000000000001234.parquet"
        );
        assert_eq!(SegmentId::parse(&s.file_name()), Some(s.clone()));
        assert_eq!(SegmentId::parse(&format!("{}.json", s.name())), Some(s));
        for bad in [
            "x.parquet",
            "t+1+5-4.parquet",
            "t+a+1-2.parquet",
            "+1+1-2.parquet",
        ] {
            assert_eq!(SegmentId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn partition_values_are_escaped() {
        assert_eq!(escape_partition_value("a/b=c"), "a%2Fb%3Dc");
        assert_eq!(escape_partition_value("api"), "api");
        assert_eq!(escape_partition_value(""), HIVE_NULL);
    }
}
