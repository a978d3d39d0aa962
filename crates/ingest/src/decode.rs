//! Strict, per-record JSON to Arrow decoding against a declared schema.
//!
//! Every Kafka record value is decoded on its own: it must be one JSON object whose keys are the
//! declared fields (unknown keys are either skipped or rejected), whose values have exactly the
//! declared type (never coerced: `"3.5"` is not a float64, `1.0` is not an int64) and in which every
//! non-nullable field is present and not null. A record is staged in full and validated before
//! anything is appended to the Arrow builders, so a rejected record leaves no trace in the batch;
//! the caller routes it to the dead-letter queue with the [`DecodeError`].
//!
//! The decoder is a serde [`Visitor`] driven directly by `serde_json`'s deserializer: no
//! `serde_json::Value` is built, keys are borrowed from the input and matched against the declared
//! names, and unknown values are skipped with [`IgnoredAny`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use chrono::{DateTime, Datelike, NaiveDate};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use ymera_common::schema::{self, DeclaredField, FieldType};

/// What to do with a top-level key that the schema does not declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownFields {
    /// Skip the key and its value (counted in [`JsonDecoder::unknown_fields_ignored`]).
    Ignore,
    /// Reject the record.
    Dlq,
}

/// Why one record was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The field concerned, or `None` when the record as a whole is at fault (invalid JSON, not
    /// an object).
    pub field: Option<String>,
    /// A complete, human-readable message (lowercase, no trailing period) that names the field.
    pub message: String,
}

impl DecodeError {
    fn record(message: impl Into<String>) -> Self {
        DecodeError {
            field: None,
            message: message.into(),
        }
    }

    fn field(field: &str, message: impl Into<String>) -> Self {
        DecodeError {
            field: Some(field.to_owned()),
            message: message.into(),
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DecodeError {}

/// Longest excerpt of an offending value quoted in an error message, in characters.
const MAX_EXCERPT_CHARS: usize = 40;

/// Up to this many declared fields are looked up by a linear scan, beyond it by a hash map.
const LINEAR_LOOKUP_MAX: usize = 16;

/// `NaiveDate::num_days_from_ce()` of 1970-01-01.
const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// Decodes JSON object records into Arrow columns of a declared schema, strictly and one record
/// at a time.
#[derive(Debug)]
pub struct JsonDecoder {
    schema: SchemaRef,
    lookup: Lookup,
    columns: Vec<Column>,
    scratch: Scratch,
    unknown: UnknownFields,
    rows: usize,
    unknown_ignored: u64,
}

impl JsonDecoder {
    /// A decoder for records of the declared `fields`, in declaration order.
    pub fn new(fields: &[DeclaredField], unknown: UnknownFields) -> Self {
        JsonDecoder {
            schema: schema::arrow_schema(fields),
            lookup: Lookup::new(fields),
            columns: fields.iter().map(Column::new).collect(),
            scratch: Scratch::default(),
            unknown,
            rows: 0,
            unknown_ignored: 0,
        }
    }

    /// The Arrow schema of the batches [`finish`](Self::finish) returns.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Appends one record. On error nothing is appended and the decoder stays usable.
    pub fn push(&mut self, value: &[u8]) -> Result<(), DecodeError> {
        let text = std::str::from_utf8(value).map_err(|e| {
            DecodeError::record(format!("invalid UTF-8 at byte {}", e.valid_up_to()))
        })?;
        self.begin_record();
        self.parse(text)?;
        self.check_required()?;
        for column in &mut self.columns {
            column.commit();
        }
        self.rows += 1;
        if self.scratch.had_unknown {
            self.unknown_ignored += 1;
        }
        Ok(())
    }

    /// Number of rows pushed since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no row was pushed since the last [`finish`](Self::finish).
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Returns the rows pushed so far as one `RecordBatch` (see [`schema`](Self::schema)) and
    /// resets the decoder to empty.
    pub fn finish(&mut self) -> RecordBatch {
        let arrays: Vec<ArrayRef> = self.columns.iter_mut().map(Column::finish).collect();
        let rows = std::mem::take(&mut self.rows);
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        RecordBatch::try_new_with_options(self.schema.clone(), arrays, &options)
            .expect("decoded columns match the declared schema by construction")
    }

    /// Number of successfully decoded records that carried unknown fields that were ignored.
    pub fn unknown_fields_ignored(&self) -> u64 {
        self.unknown_ignored
    }

    fn begin_record(&mut self) {
        for column in &mut self.columns {
            column.state = State::Absent;
        }
        self.scratch.clear();
    }

    /// Parses `text` into the staging row, checking the JSON is one object and nothing follows it.
    fn parse(&mut self, text: &str) -> Result<(), DecodeError> {
        let first = text
            .bytes()
            .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
        if first.is_some_and(|b| b != b'{') {
            return Err(not_an_object(text));
        }
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let visitor = RecordVisitor {
            lookup: &self.lookup,
            columns: &mut self.columns,
            scratch: &mut self.scratch,
            unknown: self.unknown,
        };
        de::Deserializer::deserialize_map(&mut deserializer, visitor)
            .and_then(|()| deserializer.end())
            .map_err(|e| {
                // Our own rejections travel through serde as a placeholder error; the real one
                // is stashed in the scratch space.
                self.scratch
                    .error
                    .take()
                    .unwrap_or_else(|| invalid_json(&e))
            })
    }

    fn check_required(&self) -> Result<(), DecodeError> {
        for column in &self.columns {
            match column.state {
                State::Absent if !column.nullable => {
                    return Err(DecodeError::field(
                        &column.name,
                        format!("missing required field `{}`", column.name),
                    ));
                }
                State::Null if !column.nullable => return Err(column.null_error()),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Maps a declared name to its column index.
#[derive(Debug)]
struct Lookup {
    names: Vec<Box<str>>,
    /// Only built for wide schemas; narrow ones are scanned linearly.
    index: Option<HashMap<Box<str>, usize>>,
}

impl Lookup {
    fn new(fields: &[DeclaredField]) -> Self {
        let names: Vec<Box<str>> = fields.iter().map(|f| Box::from(f.name.as_str())).collect();
        let index = (names.len() > LINEAR_LOOKUP_MAX).then(|| {
            let mut map = HashMap::with_capacity(names.len());
            for (i, name) in names.iter().enumerate() {
                // The first declaration of a name wins, as in the linear scan.
                map.entry(name.clone()).or_insert(i);
            }
            map
        });
        Lookup { names, index }
    }

    /// Finds `key`, trying `hint` (the field after the previous key) first: producers usually
    /// write fields in declaration order.
    fn find(&self, key: &str, hint: usize) -> Option<usize> {
        if self.names.get(hint).is_some_and(|name| **name == *key) {
            return Some(hint);
        }
        match &self.index {
            Some(map) => map.get(key).copied(),
            None => self.names.iter().position(|name| **name == *key),
        }
    }
}

/// Per-record scratch space, reused across records.
#[derive(Debug, Default)]
struct Scratch {
    /// The rejection of the current record, if any.
    error: Option<DecodeError>,
    /// Whether the current record had ignored unknown keys.
    had_unknown: bool,
    /// The unknown keys of the current record, concatenated (to detect duplicates among them).
    unknown_names: String,
    /// End offset of each name in `unknown_names`.
    unknown_ends: Vec<usize>,
}

impl Scratch {
    fn clear(&mut self) {
        self.error = None;
        self.had_unknown = false;
        self.unknown_names.clear();
        self.unknown_ends.clear();
    }

    /// Records an unknown key; returns `false` if it was already seen in this record.
    fn note_unknown(&mut self, name: &str) -> bool {
        let mut start = 0;
        for &end in &self.unknown_ends {
            if self.unknown_names.get(start..end) == Some(name) {
                return false;
            }
            start = end;
        }
        self.unknown_names.push_str(name);
        self.unknown_ends.push(self.unknown_names.len());
        self.had_unknown = true;
        true
    }
}

/// Whether the current record set a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Absent,
    Null,
    Set,
}

/// One declared field: its staged value for the current record and its Arrow builder.
#[derive(Debug)]
struct Column {
    name: String,
    ty: FieldType,
    nullable: bool,
    state: State,
    kind: Kind,
}

/// The staged value (valid when the column's state is `Set`) and builder, by type.
#[derive(Debug)]
enum Kind {
    Utf8 {
        staged: String,
        builder: StringBuilder,
    },
    Int64 {
        staged: i64,
        builder: Int64Builder,
    },
    Float64 {
        staged: f64,
        builder: Float64Builder,
    },
    Bool {
        staged: bool,
        builder: BooleanBuilder,
    },
    TimestampUs {
        staged: i64,
        builder: TimestampMicrosecondBuilder,
    },
    Date32 {
        staged: i32,
        builder: Date32Builder,
    },
}

/// A JSON value as the parser reported it.
#[derive(Debug, Clone, Copy)]
enum Found<'a> {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(&'a str),
    Array,
    Object,
}

impl fmt::Display for Found<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::Null => f.write_str("null"),
            Found::Bool(b) => write!(f, "bool {b}"),
            Found::I64(v) => write!(f, "integer {v}"),
            Found::U64(v) => write!(f, "integer {v}"),
            Found::F64(v) => write!(f, "float {v:?}"),
            Found::Str(s) => write!(f, "string {}", Excerpt(s)),
            Found::Array => f.write_str("an array"),
            Found::Object => f.write_str("an object"),
        }
    }
}

/// A quoted, escaped and truncated excerpt of a string for error messages.
struct Excerpt<'a>(&'a str);

impl fmt::Display for Excerpt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (head, cut) = match self.0.char_indices().nth(MAX_EXCERPT_CHARS) {
            Some((at, _)) => (&self.0[..at], "..."),
            None => (self.0, ""),
        };
        write!(f, "\"{}{cut}\"", head.escape_debug())
    }
}

impl Column {
    fn new(field: &DeclaredField) -> Self {
        let kind = match field.ty {
            FieldType::Utf8 => Kind::Utf8 {
                staged: String::new(),
                builder: StringBuilder::new(),
            },
            FieldType::Int64 => Kind::Int64 {
                staged: 0,
                builder: Int64Builder::new(),
            },
            FieldType::Float64 => Kind::Float64 {
                staged: 0.0,
                builder: Float64Builder::new(),
            },
            FieldType::Bool => Kind::Bool {
                staged: false,
                builder: BooleanBuilder::new(),
            },
            FieldType::TimestampUs => Kind::TimestampUs {
                staged: 0,
                builder: TimestampMicrosecondBuilder::new().with_timezone(schema::utc()),
            },
            FieldType::Date32 => Kind::Date32 {
                staged: 0,
                builder: Date32Builder::new(),
            },
        };
        Column {
            name: field.name.clone(),
            ty: field.ty,
            nullable: field.nullable,
            state: State::Absent,
            kind,
        }
    }

    fn null_error(&self) -> DecodeError {
        DecodeError::field(
            &self.name,
            format!("field `{}` is null but not nullable", self.name),
        )
    }

    /// Stages one JSON value for this column, or explains why it does not fit.
    fn accept(&mut self, found: Found<'_>) -> Result<(), DecodeError> {
        if let Found::Null = found {
            if !self.nullable {
                return Err(self.null_error());
            }
            self.state = State::Null;
            return Ok(());
        }
        let Column { name, ty, kind, .. } = self;
        let mismatch = || {
            DecodeError::field(
                name,
                format!("field `{name}`: expected {ty}, found {found}"),
            )
        };
        let out_of_range = |v: u64| {
            DecodeError::field(
                name,
                format!("field `{name}`: integer {v} out of {ty} range"),
            )
        };
        match (kind, found) {
            (Kind::Utf8 { staged, .. }, Found::Str(s)) => {
                staged.clear();
                staged.push_str(s);
            }
            (Kind::Int64 { staged, .. } | Kind::TimestampUs { staged, .. }, Found::I64(v)) => {
                *staged = v;
            }
            (Kind::Int64 { staged, .. } | Kind::TimestampUs { staged, .. }, Found::U64(v)) => {
                *staged = i64::try_from(v).map_err(|_| out_of_range(v))?;
            }
            (Kind::Float64 { staged, .. }, Found::F64(v)) => *staged = v,
            // Any JSON number is a float64; integers beyond 2^53 round to the nearest float.
            (Kind::Float64 { staged, .. }, Found::I64(v)) => *staged = v as f64,
            (Kind::Float64 { staged, .. }, Found::U64(v)) => *staged = v as f64,
            (Kind::Bool { staged, .. }, Found::Bool(b)) => *staged = b,
            (Kind::TimestampUs { staged, .. }, Found::Str(s)) => {
                *staged = parse_timestamp_us(s).map_err(|why| {
                    DecodeError::field(
                        name,
                        format!(
                            "field `{name}`: invalid RFC 3339 timestamp {}: {why}",
                            Excerpt(s)
                        ),
                    )
                })?;
            }
            (Kind::Date32 { staged, .. }, Found::Str(s)) => {
                *staged = parse_date32(s).ok_or_else(|| {
                    DecodeError::field(
                        name,
                        format!(
                            "field `{name}`: invalid date {} (expected YYYY-MM-DD)",
                            Excerpt(s)
                        ),
                    )
                })?;
            }
            _ => return Err(mismatch()),
        }
        self.state = State::Set;
        Ok(())
    }

    /// Appends the staged value (or a null) to the builder.
    fn commit(&mut self) {
        let set = self.state == State::Set;
        match &mut self.kind {
            Kind::Utf8 { staged, builder } => {
                if set {
                    builder.append_value(staged.as_str());
                } else {
                    builder.append_null();
                }
            }
            Kind::Int64 { staged, builder } => builder.append_option(set.then_some(*staged)),
            Kind::Float64 { staged, builder } => builder.append_option(set.then_some(*staged)),
            Kind::Bool { staged, builder } => builder.append_option(set.then_some(*staged)),
            Kind::TimestampUs { staged, builder } => {
                builder.append_option(set.then_some(*staged));
            }
            Kind::Date32 { staged, builder } => builder.append_option(set.then_some(*staged)),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match &mut self.kind {
            Kind::Utf8 { builder, .. } => Arc::new(builder.finish()),
            Kind::Int64 { builder, .. } => Arc::new(builder.finish()),
            Kind::Float64 { builder, .. } => Arc::new(builder.finish()),
            Kind::Bool { builder, .. } => Arc::new(builder.finish()),
            Kind::TimestampUs { builder, .. } => Arc::new(builder.finish()),
            Kind::Date32 { builder, .. } => Arc::new(builder.finish()),
        }
    }
}

/// Parses an RFC 3339 timestamp (any offset) to UTC epoch microseconds. Sub-microsecond digits
/// are only accepted when they are zero: dropping them would silently change the value.
fn parse_timestamp_us(s: &str) -> Result<i64, String> {
    let parsed = DateTime::parse_from_rfc3339(s).map_err(|e| e.to_string())?;
    // In RFC 3339 the only `.` introduces the fractional seconds.
    if let Some(dot) = s.find('.') {
        let fraction = s[dot + 1..].bytes().take_while(u8::is_ascii_digit);
        if fraction.skip(6).any(|b| b != b'0') {
            return Err("more than microsecond precision".to_owned());
        }
    }
    Ok(parsed.timestamp_micros())
}

/// Parses exactly `YYYY-MM-DD` to days since 1970-01-01.
fn parse_date32(s: &str) -> Option<i32> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let number = |digits: &[u8]| {
        digits.iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let year = i32::try_from(number(&b[0..4])?).ok()?;
    let date = NaiveDate::from_ymd_opt(year, number(&b[5..7])?, number(&b[8..10])?)?;
    Some(date.num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE)
}

/// The error for a top-level value that is not an object: invalid JSON if it is not even JSON.
fn not_an_object(text: &str) -> DecodeError {
    let kind = match serde_json::from_str::<Shape>(text) {
        Ok(kind) => kind.0,
        Err(e) => return invalid_json(&e),
    };
    DecodeError::record(format!("expected a JSON object, found {kind}"))
}

fn invalid_json(e: &serde_json::Error) -> DecodeError {
    let full = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    let reason = full.strip_suffix(&position).unwrap_or(&full);
    DecodeError::record(format!(
        "invalid JSON at line {} column {}: {reason}",
        e.line(),
        e.column()
    ))
}

/// Stashes our own rejection and returns serde's placeholder error that stops the parse.
fn reject<E: de::Error>(stash: &mut Option<DecodeError>, error: DecodeError) -> E {
    *stash = Some(error);
    E::custom("record rejected")
}

/// Drives one record: a JSON object of declared (and possibly unknown) keys.
struct RecordVisitor<'a> {
    lookup: &'a Lookup,
    columns: &'a mut [Column],
    scratch: &'a mut Scratch,
    unknown: UnknownFields,
}

impl<'de> Visitor<'de> for RecordVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let RecordVisitor {
            lookup,
            columns,
            scratch,
            unknown,
        } = self;
        let mut hint = 0;
        while let Some(key) = map.next_key_seed(KeySeed { lookup, hint })? {
            match key {
                Key::Known(i) => {
                    let column = &mut columns[i];
                    if column.state != State::Absent {
                        let error = DecodeError::field(
                            &column.name,
                            format!("duplicate field `{}`", column.name),
                        );
                        return Err(reject(&mut scratch.error, error));
                    }
                    map.next_value_seed(ValueSeed {
                        column,
                        stash: &mut scratch.error,
                    })?;
                    hint = i + 1;
                }
                Key::Unknown(name) => {
                    let message = match unknown {
                        UnknownFields::Dlq => "unknown field",
                        UnknownFields::Ignore if scratch.note_unknown(&name) => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                        UnknownFields::Ignore => "duplicate field",
                    };
                    let shown = Excerpt(&name).to_string();
                    let shown = &shown[1..shown.len() - 1];
                    let error = DecodeError::field(&name, format!("{message} `{shown}`"));
                    return Err(reject(&mut scratch.error, error));
                }
            }
        }
        Ok(())
    }
}

/// A top-level key: the index of a declared field, or an undeclared name.
enum Key<'de> {
    Known(usize),
    Unknown(Cow<'de, str>),
}

struct KeySeed<'a> {
    lookup: &'a Lookup,
    hint: usize,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Key<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Key<'de>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Key<'de>, E> {
        Ok(match self.lookup.find(key, self.hint) {
            Some(i) => Key::Known(i),
            None => Key::Unknown(Cow::Borrowed(key)),
        })
    }

    /// Keys with escapes arrive unescaped in a transient buffer.
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key<'de>, E> {
        Ok(match self.lookup.find(key, self.hint) {
            Some(i) => Key::Known(i),
            None => Key::Unknown(Cow::Owned(key.to_owned())),
        })
    }
}

/// Decodes the value of a declared field into its column's staging slot.
struct ValueSeed<'a> {
    column: &'a mut Column,
    stash: &'a mut Option<DecodeError>,
}

impl ValueSeed<'_> {
    fn accept<E: de::Error>(self, found: Found<'_>) -> Result<(), E> {
        self.column
            .accept(found)
            .map_err(|error| reject(self.stash, error))
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} value", self.column.ty)
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.accept(Found::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.accept(Found::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.accept(Found::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.accept(Found::I64(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.accept(Found::U64(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.accept(Found::F64(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.accept(Found::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<(), A::Error> {
        self.accept(Found::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<(), A::Error> {
        self.accept(Found::Object)
    }
}

/// What kind of JSON value a whole (non-object) document is, for error messages.
struct Shape(&'static str);

impl<'de> de::Deserialize<'de> for Shape {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Shape, D::Error> {
        deserializer.deserialize_any(ShapeVisitor)
    }
}

struct ShapeVisitor;

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = Shape;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Shape, E> {
        Ok(Shape("null"))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Shape, E> {
        Ok(Shape("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Shape, E> {
        Ok(Shape("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Shape, E> {
        Ok(Shape("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Shape, E> {
        Ok(Shape("a number"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Shape, E> {
        Ok(Shape("a string"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Shape("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Shape("an object"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        Array, BooleanArray, Date32Array, Float64Array, Int64Array, StringArray,
        TimestampMicrosecondArray,
    };
    use arrow::datatypes::{DataType, TimeUnit};

    fn field(name: &str, declared: &str) -> DeclaredField {
        let (ty, nullable) = FieldType::parse_declared(declared).unwrap();
        DeclaredField {
            name: name.to_owned(),
            ty,
            nullable,
        }
    }

    fn fields() -> Vec<DeclaredField> {
        vec![
            field("task_id", "utf8"),
            field("hours", "float64"),
            field("count", "int64?"),
            field("done", "bool"),
            field("at", "timestamp_us"),
            field("day", "date32?"),
            field("note", "utf8?"),
        ]
    }

    fn decoder(unknown: UnknownFields) -> JsonDecoder {
        JsonDecoder::new(&fields(), unknown)
    }

    const GOOD: &str = r#"{"task_id":"t-1","hours":3.5,"count":7,"done":true,"at":"2026-11-25T10:00:00.123456Z","day":"2026-11-25","note":"hi"}"#;

    /// `GOOD` with one field's JSON value replaced.
    fn with(name: &str, json: &str) -> String {
        let mut value: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(GOOD).unwrap();
        value.remove(name);
        let mut text = serde_json::to_string(&value).unwrap();
        text.pop();
        format!("{text},\"{name}\":{json}}}")
    }

    /// `GOOD` without one field.
    fn without(name: &str) -> String {
        let mut value: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(GOOD).unwrap();
        value.remove(name);
        serde_json::to_string(&value).unwrap()
    }

    fn reject(d: &mut JsonDecoder, text: &str) -> DecodeError {
        let before = d.len();
        let err = d.push(text.as_bytes()).unwrap_err();
        assert_eq!(d.len(), before, "a rejected record must not be appended");
        assert!(!err.message.ends_with('.'), "{err}");
        err
    }

    fn reject_one(text: &str) -> DecodeError {
        reject(&mut decoder(UnknownFields::Ignore), text)
    }

    fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> &'a T {
        batch
            .column_by_name(name)
            .unwrap()
            .as_any()
            .downcast_ref::<T>()
            .unwrap()
    }

    fn ts(text: &str) -> i64 {
        let mut d = decoder(UnknownFields::Ignore);
        d.push(with("at", &format!("\"{text}\"")).as_bytes())
            .unwrap();
        let batch = d.finish();
        column::<TimestampMicrosecondArray>(&batch, "at").value(0)
    }

    #[test]
    fn valid_record_decodes_all_types() {
        let mut d = decoder(UnknownFields::Dlq);
        assert!(d.is_empty());
        d.push(GOOD.as_bytes()).unwrap();
        assert_eq!(d.len(), 1);
        let batch = d.finish();
        assert!(d.is_empty());
        assert_eq!(batch.schema(), d.schema());
        assert_eq!(batch.num_rows(), 1);
        assert_eq!(
            batch.schema().field_with_name("at").unwrap().data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
        assert_eq!(column::<StringArray>(&batch, "task_id").value(0), "t-1");
        assert_eq!(column::<Float64Array>(&batch, "hours").value(0), 3.5);
        assert_eq!(column::<Int64Array>(&batch, "count").value(0), 7);
        assert!(column::<BooleanArray>(&batch, "done").value(0));
        assert_eq!(
            column::<TimestampMicrosecondArray>(&batch, "at").value(0),
            1_795_600_800_123_456
        );
        assert_eq!(column::<Date32Array>(&batch, "day").value(0), 20_782);
        assert_eq!(column::<StringArray>(&batch, "note").value(0), "hi");
        assert_eq!(d.unknown_fields_ignored(), 0);
    }

    #[test]
    fn keys_in_any_order_whitespace_and_escapes() {
        let mut d = decoder(UnknownFields::Dlq);
        let text = " \n{ \"at\" : 0 , \"done\":false,\"hours\":-2,\"task\\u005fid\":\"a\\\"b\\u00e9\" }\r\n";
        d.push(text.as_bytes()).unwrap();
        let batch = d.finish();
        assert_eq!(column::<StringArray>(&batch, "task_id").value(0), "a\"bé");
        assert_eq!(column::<Float64Array>(&batch, "hours").value(0), -2.0);
        assert!(!column::<BooleanArray>(&batch, "done").value(0));
        assert_eq!(
            column::<TimestampMicrosecondArray>(&batch, "at").value(0),
            0
        );
    }

    #[test]
    fn missing_required_field() {
        let err = reject_one(&without("task_id"));
        assert_eq!(err.message, "missing required field `task_id`");
        assert_eq!(err.field.as_deref(), Some("task_id"));
    }

    #[test]
    fn null_for_non_nullable_field() {
        let err = reject_one(&with("task_id", "null"));
        assert_eq!(err.message, "field `task_id` is null but not nullable");
        assert_eq!(err.field.as_deref(), Some("task_id"));
        let err = reject_one(&with("at", "null"));
        assert_eq!(err.message, "field `at` is null but not nullable");
    }

    #[test]
    fn nullable_fields_may_be_absent_or_null() {
        let mut d = decoder(UnknownFields::Dlq);
        d.push(with("count", "null").as_bytes()).unwrap();
        d.push(without("day").as_bytes()).unwrap();
        let batch = d.finish();
        assert!(column::<Int64Array>(&batch, "count").is_null(0));
        assert!(!column::<Date32Array>(&batch, "day").is_null(0));
        assert!(!column::<Int64Array>(&batch, "count").is_null(1));
        assert!(column::<Date32Array>(&batch, "day").is_null(1));
    }

    #[test]
    fn numbers_as_strings_are_rejected() {
        let err = reject_one(&with("hours", "\"3.5\""));
        assert_eq!(
            err.message,
            "field `hours`: expected float64, found string \"3.5\""
        );
        assert_eq!(err.field.as_deref(), Some("hours"));
        let err = reject_one(&with("count", "\"7\""));
        assert_eq!(
            err.message,
            "field `count`: expected int64, found string \"7\""
        );
    }

    #[test]
    fn floats_are_not_int64() {
        let err = reject_one(&with("count", "1.0"));
        assert_eq!(
            err.message,
            "field `count`: expected int64, found float 1.0"
        );
        let err = reject_one(&with("count", "1e3"));
        assert_eq!(
            err.message,
            "field `count`: expected int64, found float 1000.0"
        );
        let err = reject_one(&with("count", "9223372036854775808"));
        assert_eq!(
            err.message,
            "field `count`: integer 9223372036854775808 out of int64 range"
        );
    }

    #[test]
    fn int64_range_and_float64_from_integers() {
        let mut d = decoder(UnknownFields::Dlq);
        d.push(with("count", "-9223372036854775808").as_bytes())
            .unwrap();
        d.push(with("hours", "1e3").as_bytes()).unwrap();
        d.push(with("hours", "18446744073709551615").as_bytes())
            .unwrap();
        let batch = d.finish();
        assert_eq!(column::<Int64Array>(&batch, "count").value(0), i64::MIN);
        assert_eq!(column::<Float64Array>(&batch, "hours").value(1), 1000.0);
        assert_eq!(
            column::<Float64Array>(&batch, "hours").value(2),
            18_446_744_073_709_551_615_u64 as f64
        );
    }

    #[test]
    fn bool_only_from_true_false() {
        let err = reject_one(&with("done", "1"));
        assert_eq!(err.message, "field `done`: expected bool, found integer 1");
        let err = reject_one(&with("done", "0"));
        assert_eq!(err.message, "field `done`: expected bool, found integer 0");
        let err = reject_one(&with("done", "\"true\""));
        assert_eq!(
            err.message,
            "field `done`: expected bool, found string \"true\""
        );
    }

    #[test]
    fn utf8_only_from_strings() {
        let err = reject_one(&with("task_id", "42"));
        assert_eq!(
            err.message,
            "field `task_id`: expected utf8, found integer 42"
        );
        let err = reject_one(&with("task_id", "[1,2]"));
        assert_eq!(
            err.message,
            "field `task_id`: expected utf8, found an array"
        );
        let err = reject_one(&with("task_id", "{\"a\":1}"));
        assert_eq!(
            err.message,
            "field `task_id`: expected utf8, found an object"
        );
    }

    #[test]
    fn long_found_values_are_truncated() {
        let long = "x".repeat(100);
        let err = reject_one(&with("hours", &format!("\"{long}\"")));
        let expected = format!(
            "field `hours`: expected float64, found string \"{}...\"",
            "x".repeat(40)
        );
        assert_eq!(err.message, expected);
    }

    #[test]
    fn rfc3339_timestamps_with_offsets_normalise_to_utc() {
        let noon_utc = 1_795_600_800_000_000 + 2 * 3_600_000_000;
        assert_eq!(ts("2026-11-25T12:00:00Z"), noon_utc);
        assert_eq!(ts("2026-11-25T14:00:00+02:00"), noon_utc);
        assert_eq!(
            ts("2026-11-25T12:00:00+02:00"),
            noon_utc - 2 * 3_600_000_000
        );
        assert_eq!(ts("2026-11-25T06:30:00-05:30"), noon_utc);
        assert_eq!(ts("2026-11-25T10:00:00.123456Z"), 1_795_600_800_123_456);
        assert_eq!(ts("2026-11-25T10:00:00.5Z"), 1_795_600_800_500_000);
        // Zero sub-microsecond digits lose nothing.
        assert_eq!(ts("2026-11-25T10:00:00.123456000Z"), 1_795_600_800_123_456);
        assert_eq!(ts("1969-12-31T23:59:59.999999Z"), -1);
    }

    #[test]
    fn epoch_micros_integer_timestamp() {
        let mut d = decoder(UnknownFields::Dlq);
        d.push(with("at", "1795600800123456").as_bytes()).unwrap();
        d.push(with("at", "-5").as_bytes()).unwrap();
        let batch = d.finish();
        let at = column::<TimestampMicrosecondArray>(&batch, "at");
        assert_eq!(at.value(0), 1_795_600_800_123_456);
        assert_eq!(at.value(1), -5);
        let err = reject_one(&with("at", "1.5"));
        assert!(
            err.message
                .starts_with("field `at`: expected timestamp_us, found float 1.5"),
            "{err}"
        );
    }

    #[test]
    fn bad_timestamps_are_rejected() {
        for bad in [
            "2026-11-25",
            "2026-11-25T10:00:00",
            "2026-13-25T10:00:00Z",
            "25/11/2026 10:00",
            "2026-11-25T10:00:00Zjunk",
        ] {
            let err = reject_one(&with("at", &format!("\"{bad}\"")));
            assert!(
                err.message.starts_with(&format!(
                    "field `at`: invalid RFC 3339 timestamp \"{bad}\": "
                )),
                "{err}"
            );
            assert_eq!(err.field.as_deref(), Some("at"));
        }
        for precise in [
            "2026-11-25T10:00:00.1234567Z",
            "2026-11-25T10:00:00.1234560001Z",
        ] {
            let err = reject_one(&with("at", &format!("\"{precise}\"")));
            assert_eq!(
                err.message,
                format!(
                    "field `at`: invalid RFC 3339 timestamp \"{precise}\": more than microsecond precision"
                )
            );
        }
    }

    #[test]
    fn dates_are_strict() {
        let mut d = decoder(UnknownFields::Dlq);
        d.push(with("day", "\"1970-01-01\"").as_bytes()).unwrap();
        d.push(with("day", "\"1969-12-31\"").as_bytes()).unwrap();
        d.push(with("day", "\"2024-02-29\"").as_bytes()).unwrap();
        let batch = d.finish();
        let day = column::<Date32Array>(&batch, "day");
        assert_eq!((day.value(0), day.value(1), day.value(2)), (0, -1, 19_782));
        for bad in [
            "2026-02-30",
            "2026-1-05",
            "2026-11-25T00:00:00Z",
            "+026-11-25",
            "",
        ] {
            let err = reject_one(&with("day", &format!("\"{bad}\"")));
            assert_eq!(
                err.message,
                format!("field `day`: invalid date \"{bad}\" (expected YYYY-MM-DD)")
            );
        }
        let err = reject_one(&with("day", "20417"));
        assert_eq!(
            err.message,
            "field `day`: expected date32, found integer 20417"
        );
    }

    #[test]
    fn unknown_fields_ignored_or_rejected() {
        let text = with(
            "extra",
            "{\"deep\":[1,{\"x\":[null,\"y\"]},2.5],\"more\":{}}",
        );
        let mut d = decoder(UnknownFields::Ignore);
        d.push(text.as_bytes()).unwrap();
        d.push(GOOD.as_bytes()).unwrap();
        d.push(with("other", "\"s\"").as_bytes()).unwrap();
        assert_eq!(d.unknown_fields_ignored(), 2);
        let batch = d.finish();
        assert_eq!(batch.num_rows(), 3);
        assert_eq!(batch.num_columns(), 7);

        let mut d = decoder(UnknownFields::Dlq);
        let err = reject(&mut d, &text);
        assert_eq!(err.message, "unknown field `extra`");
        assert_eq!(err.field.as_deref(), Some("extra"));
        assert_eq!(d.unknown_fields_ignored(), 0);
    }

    #[test]
    fn unknown_value_must_still_be_valid_json() {
        let err = reject_one(&with("extra", "[1,}"));
        assert!(
            err.message.starts_with("invalid JSON at line 1 column "),
            "{err}"
        );
        assert_eq!(err.field, None);
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let text = GOOD.replacen('{', "{\"hours\":1.0,", 1);
        let err = reject_one(&text);
        assert_eq!(err.message, "duplicate field `hours`");
        assert_eq!(err.field.as_deref(), Some("hours"));
        // A duplicate null is still a duplicate.
        let text = GOOD
            .replacen('{', "{\"count\":null,", 1)
            .replace("\"count\":7", "\"count\":null");
        assert_eq!(reject_one(&text).message, "duplicate field `count`");
        // Duplicate unknown keys too, even when ignored.
        let text = GOOD.replacen('{', "{\"x\":1,\"x\":2,", 1);
        assert_eq!(reject_one(&text).message, "duplicate field `x`");
    }

    #[test]
    fn top_level_must_be_an_object() {
        let err = reject_one("[1,2,3]");
        assert_eq!(err.message, "expected a JSON object, found an array");
        assert_eq!(err.field, None);
        assert_eq!(
            reject_one(" \"s\"").message,
            "expected a JSON object, found a string"
        );
        assert_eq!(
            reject_one("12").message,
            "expected a JSON object, found a number"
        );
        assert_eq!(
            reject_one("null").message,
            "expected a JSON object, found null"
        );
        assert_eq!(
            reject_one("true").message,
            "expected a JSON object, found a boolean"
        );
        // Not an object and not JSON either.
        let err = reject_one("[1,");
        assert!(
            err.message.starts_with("invalid JSON at line 1 column"),
            "{err}"
        );
    }

    #[test]
    fn invalid_json_reports_position() {
        let err = reject_one(r#"{"task_id": "t-1""#);
        assert_eq!(
            err.message,
            "invalid JSON at line 1 column 17: EOF while parsing an object"
        );
        let err = reject_one("{\"task_id\":\n \"t-1\",");
        assert_eq!(
            err.message,
            "invalid JSON at line 2 column 7: EOF while parsing a value"
        );
        assert_eq!(err.field, None);
        let err = reject_one(r#"{"task_id": 't-1'}"#);
        assert_eq!(
            err.message,
            "invalid JSON at line 1 column 13: expected value"
        );
        let err = reject_one("");
        assert_eq!(
            err.message,
            "invalid JSON at line 1 column 0: EOF while parsing a value"
        );
        let err = reject_one("{\"hours\": NaN}");
        assert!(
            err.message
                .starts_with("invalid JSON at line 1 column 11: "),
            "{err}"
        );
    }

    #[test]
    fn invalid_utf8_is_rejected() {
        let mut bytes = with("note", "\"ab\"").into_bytes();
        let at = bytes.iter().rposition(|&b| b == b'a').unwrap();
        bytes[at] = 0xff;
        let err = decoder(UnknownFields::Ignore).push(&bytes).unwrap_err();
        assert_eq!(err.message, format!("invalid UTF-8 at byte {at}"));
        // Even inside an ignored value.
        let mut bytes = with("extra", "\"ab\"").into_bytes();
        let at = bytes.iter().rposition(|&b| b == b'a').unwrap();
        bytes[at] = 0xc3;
        assert!(decoder(UnknownFields::Ignore).push(&bytes).is_err());
    }

    #[test]
    fn trailing_garbage_is_rejected() {
        let err = reject_one(&format!("{GOOD} x"));
        assert_eq!(
            err.message,
            format!(
                "invalid JSON at line 1 column {}: trailing characters",
                GOOD.len() + 2
            )
        );
        let err = reject_one(&format!("{GOOD}{GOOD}"));
        assert!(err.message.ends_with(": trailing characters"), "{err}");
        // Trailing whitespace is fine.
        decoder(UnknownFields::Dlq)
            .push(format!("{GOOD} \n").as_bytes())
            .unwrap();
    }

    #[test]
    fn errors_leave_the_batch_with_only_good_rows() {
        let mut d = decoder(UnknownFields::Ignore);
        d.push(GOOD.as_bytes()).unwrap();
        // Fails late, after several fields were staged.
        let late = GOOD.replace("\"note\":\"hi\"", "\"note\":5");
        reject(&mut d, &late);
        reject(&mut d, &without("done"));
        reject(&mut d, "{\"task_id\":\"bad\",");
        d.push(
            br#"{"task_id":"t-2","hours":1,"done":false,"at":"2026-11-25T12:00:00+02:00","count":null,"x":[]}"#,
        )
        .unwrap();
        reject(&mut d, &with("hours", "\"1\""));
        assert_eq!(d.len(), 2);
        assert_eq!(d.unknown_fields_ignored(), 1);

        let batch = d.finish();
        assert_eq!(batch.num_rows(), 2);
        let task = column::<StringArray>(&batch, "task_id");
        assert_eq!((task.value(0), task.value(1)), ("t-1", "t-2"));
        let hours = column::<Float64Array>(&batch, "hours");
        assert_eq!((hours.value(0), hours.value(1)), (3.5, 1.0));
        let count = column::<Int64Array>(&batch, "count");
        assert_eq!((count.value(0), count.is_null(1)), (7, true));
        let done = column::<BooleanArray>(&batch, "done");
        assert_eq!((done.value(0), done.value(1)), (true, false));
        let at = column::<TimestampMicrosecondArray>(&batch, "at");
        assert_eq!(at.value(1), 1_795_600_800_000_000);
        assert_eq!(at.timezone(), Some("UTC"));
        let day = column::<Date32Array>(&batch, "day");
        assert_eq!((day.null_count(), day.is_null(1)), (1, true));
        let note = column::<StringArray>(&batch, "note");
        assert_eq!((note.value(0), note.is_null(1)), ("hi", true));

        // The decoder is reusable after finish, keeping the timezone.
        d.push(GOOD.as_bytes()).unwrap();
        let batch = d.finish();
        assert_eq!(batch.num_rows(), 1);
        assert_eq!(batch.schema(), d.schema());
        assert_eq!(d.finish().num_rows(), 0);
    }

    #[test]
    fn wide_schemas_use_the_hash_lookup() {
        let fields: Vec<DeclaredField> =
            (0..40).map(|i| field(&format!("f{i}"), "int64")).collect();
        let mut d = JsonDecoder::new(&fields, UnknownFields::Dlq);
        let body: Vec<String> = (0..40).rev().map(|i| format!("\"f{i}\":{i}")).collect();
        d.push(format!("{{{}}}", body.join(",")).as_bytes())
            .unwrap();
        assert_eq!(reject(&mut d, "{\"f99\":1}").message, "unknown field `f99`");
        let batch = d.finish();
        assert_eq!(column::<Int64Array>(&batch, "f39").value(0), 39);
        assert_eq!(column::<Int64Array>(&batch, "f0").value(0), 0);
    }

    #[test]
    fn no_fields_schema() {
        let mut d = JsonDecoder::new(&[], UnknownFields::Ignore);
        d.push(b"{}").unwrap();
        d.push(b"{\"a\":1}").unwrap();
        assert_eq!(d.unknown_fields_ignored(), 1);
        assert_eq!(d.finish().num_rows(), 2);
    }
}
