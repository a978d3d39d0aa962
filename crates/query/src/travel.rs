//! Time travel: `FROM tasks VERSION AS OF 12` and `FROM tasks TIMESTAMP AS OF '2026-12-01
//! 10:00:00'` (Delta's syntax, as Spark and Databricks write it) read a lake table as of
//! an older version. DataFusion's parser does not keep these clauses (its generic dialect
//! rejects them; dialects that parse them hand them to a planner that drops them), so they
//! are found here in the statement's tokens, before parsing: each `<table> VERSION AS OF n` is
//! replaced by a name under which the table's snapshot at `n` is registered in a session
//! made for the query. A timestamp names the newest version committed at or before it.

use std::ops::Range;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

use crate::{QueryError, Source, Table};

/// The point in a table's history a query asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum At {
    Version(u64),
    Time(DateTime<Utc>),
}

/// One `<table> VERSION|TIMESTAMP AS OF …` of a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Travel {
    /// Bytes of the statement from the table name to the end of the clause.
    pub range: Range<usize>,
    /// The lake table (its SQL name).
    pub table: String,
    pub at: At,
}

const FORMS: &str = "write `FROM t VERSION AS OF 12` or `FROM t TIMESTAMP AS OF '2026-12-01 10:00:00'` (UTC; also RFC 3339 or a date)";

/// Finds the time-travel clauses of `sql` on `tables`.
pub(crate) fn find(sql: &str, tables: &[Table]) -> Result<Vec<Travel>, QueryError> {
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize_with_location() else {
        // the parser reports the statement's syntax error
        return Ok(Vec::new());
    };
    let significant: Vec<&TokenWithSpan> = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .collect();
    let offsets = Offsets::new(sql);
    let word = |i: usize, kw: Keyword| matches!(significant.get(i), Some(TokenWithSpan { token: Token::Word(w), .. }) if w.quote_style.is_none() && w.keyword == kw);
    let mut found = Vec::new();
    for i in 1..significant.len() {
        let (is_version, is_time) = (word(i, Keyword::VERSION), word(i, Keyword::TIMESTAMP));
        if !(is_version || is_time) || !word(i + 1, Keyword::AS) || !word(i + 2, Keyword::OF) {
            continue;
        }
        let Token::Word(name) = &significant[i - 1].token else {
            continue;
        };
        let ident = match name.quote_style {
            None => name.value.to_lowercase(),
            Some(_) => name.value.clone(),
        };
        let table = tables.iter().find(|t| t.name == ident);
        match table {
            Some(t) if t.source == Source::Lake => {}
            Some(t) => {
                return Err(QueryError::Invalid(format!(
                    "`{}` is a warehouse table: only lake (Delta) tables have versions to travel to",
                    t.name
                )));
            }
            // `CAST(x AS TIMESTAMP) AS of` and the like: not ours
            None if is_time => continue,
            None => {
                return Err(QueryError::Invalid(format!(
                    "`{}` before VERSION AS OF is not a lake table",
                    name.value
                )));
            }
        }
        let (at, next) = if is_version {
            match significant.get(i + 3).map(|t| &t.token) {
                Some(Token::Number(n, false)) => match n.parse::<u64>() {
                    Ok(v) => (At::Version(v), i + 4),
                    Err(_) => return Err(bad_clause(&ident, n)),
                },
                other => return Err(bad_clause(&ident, &describe(other))),
            }
        } else {
            // `'…'` or `TIMESTAMP '…'`
            let literal = if word(i + 3, Keyword::TIMESTAMP) {
                i + 4
            } else {
                i + 3
            };
            match significant.get(literal).map(|t| &t.token) {
                Some(Token::SingleQuotedString(s)) => match parse_time(s) {
                    Some(t) => (At::Time(t), literal + 1),
                    None => return Err(bad_clause(&ident, &format!("'{s}'"))),
                },
                other => return Err(bad_clause(&ident, &describe(other))),
            }
        };
        let start = offsets.of(significant[i - 1].span.start);
        let end = significant
            .get(next)
            .map_or(sql.len(), |t| offsets.of(t.span.start));
        found.push(Travel {
            range: start..end,
            table: ident,
            at,
        });
    }
    Ok(found)
}

fn describe(token: Option<&Token>) -> String {
    token.map_or_else(|| "the end of the statement".to_string(), |t| t.to_string())
}

fn bad_clause(table: &str, what: &str) -> QueryError {
    QueryError::Invalid(format!(
        "time travel on `{table}`: `{what}` is not a version or a time; {FORMS}"
    ))
}

/// `2026-12-01 10:00:00[.fff]` (UTC; also with `T` or without seconds), RFC 3339, or a date
/// (its midnight, UTC): the times time travel and `train --as-of` accept.
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, format) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// Byte offsets of the tokenizer's (line, column) locations (1-based, columns in chars).
struct Offsets<'a> {
    sql: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> Offsets<'a> {
    fn new(sql: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(sql.match_indices('\n').map(|(i, _)| i + 1));
        Offsets { sql, line_starts }
    }

    fn of(&self, at: Location) -> usize {
        let line_start = self
            .line_starts
            .get((at.line as usize).saturating_sub(1))
            .copied()
            .unwrap_or(self.sql.len());
        self.sql[line_start..]
            .char_indices()
            .nth((at.column as usize).saturating_sub(1))
            .map_or(self.sql.len(), |(i, _)| line_start + i)
    }
}

/// `sql` with each travel's range replaced by the quoted name its snapshot is registered
/// under (`names[i]` for `travels[i]`).
pub(crate) fn rewrite(sql: &str, travels: &[Travel], names: &[String]) -> String {
    let mut out = String::with_capacity(sql.len() + 16 * travels.len());
    let mut at = 0;
    for (t, name) in travels.iter().zip(names) {
        out.push_str(&sql[at..t.range.start]);
        out.push('"');
        out.push_str(&name.replace('"', "\"\""));
        out.push('"');
        if t.range.end < sql.len() {
            out.push(' ');
        }
        at = t.range.end;
    }
    out.push_str(&sql[at..]);
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::Schema;

    use super::*;

    fn table(name: &str, source: Source) -> Table {
        Table {
            name: name.into(),
            source,
            partitions: Vec::new(),
            schema: Arc::new(Schema::empty()),
            delta: None,
        }
    }

    fn tables() -> Vec<Table> {
        vec![
            table("tasks", Source::Lake),
            table("Mixed", Source::Lake),
            table("accounts", Source::Warehouse),
        ]
    }

    fn rewritten(sql: &str) -> String {
        let found = find(sql, &tables()).unwrap();
        let names: Vec<String> = found
            .iter()
            .map(|t| match &t.at {
                At::Version(v) => format!("{}@v{v}", t.table),
                At::Time(ts) => format!("{}@{}", t.table, ts.timestamp()),
            })
            .collect();
        rewrite(sql, &found, &names)
    }

    #[test]
    fn clauses_become_names_of_snapshots_and_the_rest_is_untouched() {
        assert_eq!(
            rewritten("SELECT count(*) FROM tasks VERSION AS OF 3 WHERE x = 'VERSION AS OF 4'"),
            r#"SELECT count(*) FROM "tasks@v3" WHERE x = 'VERSION AS OF 4'"#
        );
        assert_eq!(
            rewritten("select *\nfrom  tasks version as of 7"),
            "select *\nfrom  \"tasks@v7\""
        );
        assert_eq!(
            rewritten(
                "SELECT é.a FROM tasks TIMESTAMP AS OF '1970-01-01 00:01:40' é JOIN tasks t2 ON true"
            ),
            r#"SELECT é.a FROM "tasks@100" é JOIN tasks t2 ON true"#
        );
        assert_eq!(
            rewritten(r#"SELECT * FROM "Mixed" TIMESTAMP AS OF TIMESTAMP '1970-01-02'"#),
            r#"SELECT * FROM "Mixed@86400""#
        );
        // a cast to TIMESTAMP aliased `of` is not time travel
        let cast = "SELECT CAST(a AS TIMESTAMP) AS of FROM tasks";
        assert_eq!(rewritten(cast), cast);
    }

    #[test]
    fn what_cannot_travel_says_why() {
        let err = |sql: &str| find(sql, &tables()).unwrap_err().to_string();
        assert!(err("SELECT * FROM accounts VERSION AS OF 1").contains("warehouse table"));
        assert!(
            err("SELECT * FROM taks VERSION AS OF 1")
                .contains("`taks` before VERSION AS OF is not a lake table")
        );
        let e = err("SELECT * FROM tasks VERSION AS OF -1");
        assert!(e.contains("is not a version or a time"), "{e}");
        let e = err("SELECT * FROM tasks TIMESTAMP AS OF now()");
        assert!(e.contains("TIMESTAMP AS OF '2026-12-01 10:00:00'"), "{e}");
        let e = err("SELECT * FROM tasks TIMESTAMP AS OF 'yesterday'");
        assert!(e.contains("'yesterday'"), "{e}");
    }
}
