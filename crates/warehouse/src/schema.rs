//! Table descriptions read from the database, their Arrow form, and the check that a
//! pipeline's output fits a table.

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::utils::datafusion_strsim::levenshtein;
use sqlx::Row;

use crate::{
    API_KEYS_TABLE, AUDIT_TABLE, OFFSETS_TABLE, Pool, Result, Warehouse, WarehouseError, ident,
    quote,
};

/// The value family of a column, from its declared SQL type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlKind {
    Text,
    Int,
    Float,
    Bool,
    /// `tz` false: PostgreSQL `timestamp without time zone` (values are UTC).
    Timestamp {
        tz: bool,
    },
    Date,
    /// Anything else (JSON, UUID, NUMERIC on PostgreSQL...): read as text.
    Other,
}

impl SqlKind {
    /// SQLite's affinity rules, extended with the PostgreSQL type names.
    pub fn from_declared(declared: &str) -> SqlKind {
        let t = declared.to_ascii_uppercase();
        if t.contains("INT") || t.contains("SERIAL") {
            SqlKind::Int
        } else if t.contains("CHAR") || t.contains("TEXT") || t.contains("CLOB") {
            SqlKind::Text
        } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
            SqlKind::Float
        } else if t.contains("BOOL") {
            SqlKind::Bool
        } else if t.contains("TIMESTAMP") || t.contains("DATETIME") {
            let tz = !t.contains("WITHOUT");
            SqlKind::Timestamp { tz }
        } else if t == "DATE" {
            SqlKind::Date
        } else {
            SqlKind::Other
        }
    }

    pub fn arrow_type(self) -> DataType {
        match self {
            SqlKind::Text | SqlKind::Other => DataType::Utf8,
            SqlKind::Int => DataType::Int64,
            SqlKind::Float => DataType::Float64,
            SqlKind::Bool => DataType::Boolean,
            SqlKind::Timestamp { .. } => {
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
            }
            SqlKind::Date => DataType::Date32,
        }
    }

    /// The family of an Arrow type, if the warehouse can store it.
    pub fn of_arrow(t: &DataType) -> Option<SqlKind> {
        Some(match t {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => SqlKind::Text,
            DataType::Dictionary(_, v) if SqlKind::of_arrow(v) == Some(SqlKind::Text) => {
                SqlKind::Text
            }
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32 => SqlKind::Int,
            DataType::Float16 | DataType::Float32 | DataType::Float64 => SqlKind::Float,
            DataType::Decimal128(..) | DataType::Decimal256(..) => SqlKind::Float,
            DataType::Boolean => SqlKind::Bool,
            DataType::Timestamp(..) => SqlKind::Timestamp { tz: true },
            DataType::Date32 | DataType::Date64 => SqlKind::Date,
            DataType::Null => SqlKind::Other,
            _ => return None,
        })
    }

    fn accepts(self, from: SqlKind) -> bool {
        match (self, from) {
            (SqlKind::Other, _) => true,
            (SqlKind::Timestamp { .. }, SqlKind::Timestamp { .. }) => true,
            (SqlKind::Float, SqlKind::Int) => true,
            (a, b) => a == b,
        }
    }
}

/// One column of a warehouse table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// The declared type as the database reports it.
    pub declared: String,
    pub kind: SqlKind,
    pub not_null: bool,
    pub has_default: bool,
}

/// A table: its columns in order and its unique keys (primary key included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub name: String,
    pub columns: Vec<Column>,
    pub unique_keys: Vec<Vec<String>>,
}

impl TableInfo {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The Arrow schema the table is read as.
    pub fn arrow_schema(&self) -> SchemaRef {
        std::sync::Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(&c.name, c.kind.arrow_type(), !c.not_null))
                .collect::<Vec<_>>(),
        ))
    }
}

/// The candidate closest to `name` by edit distance, if it is close enough to be a likely
/// typo.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (levenshtein(&name.to_lowercase(), &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= (c.len().max(name.len()) / 2).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    closest(name, candidates)
        .map(|c| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

/// Checks that rows of `output` can be written to `table` with `mode`/`key`. Returns the
/// warnings, or every error.
pub fn fit(
    table: &TableInfo,
    output: &Schema,
    upsert_key: Option<&[String]>,
) -> std::result::Result<Vec<String>, Vec<String>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let t = &table.name;
    let names = || table.columns.iter().map(|c| c.name.as_str());
    for f in output.fields() {
        let Some(col) = table.column(f.name()) else {
            // the table's columns are listed once, with the first unknown one
            let listed = errors.iter().any(|e: &String| e.contains("(columns: "));
            errors.push(format!(
                "column `{}` of the sink's input is not a column of warehouse table `{t}`{}{}",
                f.name(),
                did_you_mean(f.name(), names()),
                if listed {
                    String::new()
                } else {
                    format!(" (columns: {})", names().collect::<Vec<_>>().join(", "))
                }
            ));
            continue;
        };
        match SqlKind::of_arrow(f.data_type()) {
            None => errors.push(format!(
                "column `{}` is {} in the pipeline, which the warehouse cannot store",
                f.name(),
                f.data_type()
            )),
            Some(k) if !col.kind.accepts(k) => errors.push(format!(
                "column `{}` is {} in the pipeline but {} in warehouse table `{t}`",
                f.name(),
                f.data_type(),
                col.declared
            )),
            Some(_) => {}
        }
        if f.is_nullable() && col.not_null {
            warnings.push(format!(
                "column `{}` may be null in the pipeline but is NOT NULL in warehouse table `{t}`: such rows go to the DLQ",
                f.name()
            ));
        }
    }
    for col in &table.columns {
        if col.not_null && !col.has_default && output.field_with_name(&col.name).is_err() {
            errors.push(format!(
                "warehouse table `{t}` column `{}` is NOT NULL without a default, and the sink's input has no such column",
                col.name
            ));
        }
    }
    if let Some(key) = upsert_key {
        for k in key {
            if output.field_with_name(k).is_err() {
                errors.push(format!(
                    "upsert key column `{k}` is not a column of the sink's input"
                ));
            }
        }
        let mut want: Vec<&str> = key.iter().map(String::as_str).collect();
        want.sort_unstable();
        let unique = table.unique_keys.iter().any(|u| {
            let mut have: Vec<&str> = u.iter().map(String::as_str).collect();
            have.sort_unstable();
            have == want
        });
        if !unique {
            errors.push(format!(
                "upsert key ({}) is not the primary key or a unique constraint of warehouse table `{t}` (unique keys: {})",
                key.join(", "),
                if table.unique_keys.is_empty() {
                    "none".to_string()
                } else {
                    table
                        .unique_keys
                        .iter()
                        .map(|u| format!("({})", u.join(", ")))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ));
        }
    }
    if errors.is_empty() {
        Ok(warnings)
    } else {
        Err(errors)
    }
}

impl Warehouse {
    /// User tables (not ymera's ledger, API keys or audit log, not sqlx's migration table),
    /// sorted. Analyst SQL sees only these: key hashes and the audit log stay out of it.
    pub async fn tables(&self) -> Result<Vec<String>> {
        let rows: Vec<String> = match &self.pool {
            Pool::Sqlite(p) => {
                sqlx::query_scalar(
                    "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' ORDER BY name",
                )
                .fetch_all(p)
                .await
            }
            Pool::Postgres(p) => {
                sqlx::query_scalar(
                    "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema() ORDER BY 1",
                )
                .fetch_all(p)
                .await
            }
        }
        .map_err(|e| WarehouseError::from_sqlx(e, &self.shown))?;
        Ok(rows
            .into_iter()
            .filter(|t| {
                ![
                    OFFSETS_TABLE,
                    API_KEYS_TABLE,
                    AUDIT_TABLE,
                    "_sqlx_migrations",
                ]
                .contains(&t.as_str())
                    && ident(t).is_ok()
            })
            .collect())
    }

    /// A table's columns and unique keys, or `None` when it does not exist.
    pub async fn describe(&self, table: &str) -> Result<Option<TableInfo>> {
        ident(table)?;
        let err = |e| WarehouseError::from_sqlx(e, &self.shown);
        let (columns, unique_keys) = match &self.pool {
            Pool::Sqlite(p) => {
                let rows = sqlx::query(
                    "SELECT name, type, \"notnull\", dflt_value IS NOT NULL, pk FROM pragma_table_info(?1) ORDER BY cid",
                )
                .bind(table)
                .fetch_all(p)
                .await
                .map_err(err)?;
                let mut pk: Vec<(i64, String)> = Vec::new();
                let mut columns = Vec::new();
                for r in rows {
                    let name: String = r.get(0);
                    let declared: String = r.get(1);
                    let pk_pos: i64 = r.get(4);
                    if pk_pos > 0 {
                        pk.push((pk_pos, name.clone()));
                    }
                    columns.push(Column {
                        kind: SqlKind::from_declared(&declared),
                        not_null: r.get::<i64, _>(2) != 0,
                        // an INTEGER PRIMARY KEY is the rowid: it gets a value by itself
                        has_default: r.get::<bool, _>(3)
                            || (pk_pos > 0 && declared.eq_ignore_ascii_case("INTEGER")),
                        declared,
                        name,
                    });
                }
                pk.sort();
                let mut keys: Vec<Vec<String>> = Vec::new();
                if !pk.is_empty() {
                    keys.push(pk.into_iter().map(|(_, n)| n).collect());
                }
                let indexes: Vec<String> = sqlx::query_scalar(
                    "SELECT name FROM pragma_index_list(?1) WHERE \"unique\" AND partial = 0",
                )
                .bind(table)
                .fetch_all(p)
                .await
                .map_err(err)?;
                for ix in indexes {
                    let cols: Vec<String> =
                        sqlx::query_scalar("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")
                            .bind(&ix)
                            .fetch_all(p)
                            .await
                            .map_err(err)?;
                    if !keys.contains(&cols) {
                        keys.push(cols);
                    }
                }
                (columns, keys)
            }
            Pool::Postgres(p) => {
                let rows = sqlx::query(
                    "SELECT column_name::text, data_type::text, is_nullable = 'NO', column_default IS NOT NULL OR is_identity = 'YES'
                     FROM information_schema.columns
                     WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
                )
                .bind(table)
                .fetch_all(p)
                .await
                .map_err(err)?;
                let columns = rows
                    .into_iter()
                    .map(|r| {
                        let declared: String = r.get(1);
                        Column {
                            name: r.get(0),
                            kind: SqlKind::from_declared(&declared),
                            declared,
                            not_null: r.get(2),
                            has_default: r.get(3),
                        }
                    })
                    .collect();
                let keys: Vec<Vec<String>> = sqlx::query_scalar(
                    "SELECT array_agg(a.attname::text ORDER BY k.ord)
                     FROM pg_index i
                     CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                     WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indpred IS NULL
                     GROUP BY i.indexrelid ORDER BY bool_or(i.indisprimary) DESC, i.indexrelid",
                )
                .bind(quote(table))
                .fetch_all(p)
                .await
                .map_err(err)?;
                (columns, keys)
            }
        };
        if columns.is_empty() {
            return Ok(None);
        }
        Ok(Some(TableInfo {
            name: table.to_string(),
            columns,
            unique_keys,
        }))
    }

    /// `describe`, with an error naming the closest existing table when it is missing.
    pub async fn require(&self, table: &str) -> Result<TableInfo> {
        if let Some(t) = self.describe(table).await? {
            return Ok(t);
        }
        let tables = self.tables().await?;
        Err(WarehouseError::User(format!(
            "warehouse table `{table}` does not exist in {}{}; tables are declared in sql/migrations/ and created by `ymera warehouse migrate` (tables: {})",
            self.shown,
            did_you_mean(table, tables.iter().map(String::as_str)),
            if tables.is_empty() {
                "none".into()
            } else {
                tables.join(", ")
            }
        )))
    }
}
