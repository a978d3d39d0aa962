//! The field types a pipeline schema may declare (`utf8`, `float64?`, ...) and their Arrow form.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// A declared field type. Timestamps are always microseconds, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Utf8,
    Int64,
    Float64,
    Bool,
    TimestampUs,
    Date32,
}

impl FieldType {
    /// Every type name the YAML accepts, for error messages.
    pub const NAMES: &'static [&'static str] =
        &["utf8", "int64", "float64", "bool", "timestamp_us", "date32"];

    /// Parses a declared type such as `float64?`; returns the type and whether it is nullable.
    pub fn parse_declared(text: &str) -> Result<(FieldType, bool), String> {
        let t = text.trim();
        let (name, nullable) = match t.strip_suffix('?') {
            Some(n) => (n.trim(), true),
            None => (t, false),
        };
        let ty = match name {
            "utf8" | "string" => FieldType::Utf8,
            "int64" => FieldType::Int64,
            "float64" => FieldType::Float64,
            "bool" | "boolean" => FieldType::Bool,
            "timestamp_us" => FieldType::TimestampUs,
            "date32" => FieldType::Date32,
            other => {
                return Err(format!(
                    "unknown type `{other}` (expected one of: {}; add `?` for nullable)",
                    Self::NAMES.join(", ")
                ));
            }
        };
        Ok((ty, nullable))
    }

    /// The Arrow type: timestamps are `Timestamp(Microsecond, "UTC")`.
    pub fn arrow_type(self) -> DataType {
        match self {
            FieldType::Utf8 => DataType::Utf8,
            FieldType::Int64 => DataType::Int64,
            FieldType::Float64 => DataType::Float64,
            FieldType::Bool => DataType::Boolean,
            FieldType::TimestampUs => DataType::Timestamp(TimeUnit::Microsecond, Some(utc())),
            FieldType::Date32 => DataType::Date32,
        }
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            FieldType::Utf8 => "utf8",
            FieldType::Int64 => "int64",
            FieldType::Float64 => "float64",
            FieldType::Bool => "bool",
            FieldType::TimestampUs => "timestamp_us",
            FieldType::Date32 => "date32",
        };
        f.write_str(name)
    }
}

/// The time zone every ymera timestamp carries.
pub fn utc() -> Arc<str> {
    Arc::from("UTC")
}

/// A declared field: name, type, nullability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredField {
    pub name: String,
    pub ty: FieldType,
    pub nullable: bool,
}

/// Builds the Arrow schema of declared fields, in declaration order.
pub fn arrow_schema(fields: &[DeclaredField]) -> SchemaRef {
    Arc::new(Schema::new(
        fields
            .iter()
            .map(|f| Field::new(&f.name, f.ty.arrow_type(), f.nullable))
            .collect::<Vec<_>>(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_types() {
        assert_eq!(
            FieldType::parse_declared("float64?").unwrap(),
            (FieldType::Float64, true)
        );
        assert_eq!(
            FieldType::parse_declared("timestamp_us").unwrap(),
            (FieldType::TimestampUs, false)
        );
        let err = FieldType::parse_declared("float").unwrap_err();
        assert!(err.contains("unknown type `float`"), "{err}");
    }
}
