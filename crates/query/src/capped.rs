//! Functions whose output is not bounded by their input: `repeat`, `lpad`/`rpad`, array
//! `range`/`generate_series`, `array_repeat`, `array_resize`, `replace`,
//! `regexp_replace`. Their buffers are allocated inside the function, outside DataFusion's
//! memory pool, so the pool cannot stop `repeat('x', 20000)` over 100,000 rows or
//! `range(0, 500000000)`. Each is registered again wrapped in [`Capped`], which works out
//! from the arguments (before anything is allocated) how many bytes one call would produce
//! for its batch and refuses past the budget: a sixteenth of `sql.memory_limit`.

use std::hash::Hash;

use arrow::array::{Array, AsArray, Int64Array};
use arrow::datatypes::{DataType, FieldRef, Int64Type, IntervalMonthDayNanoType, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;

/// How the output size of a call follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    /// `repeat(s, n)`: `len(s) × n`.
    Repeat,
    /// `lpad(s, n [, fill])`: `n` characters, up to 4 bytes each.
    Pad,
    /// `range`/`generate_series(start, stop [, step])`: 8 bytes an element.
    Range,
    /// `array_repeat(x, n)`: `size(x) × n`.
    ArrayRepeat,
    /// `array_resize(a, n [, v])`: `n` elements.
    ArrayResize,
    /// `replace(s, from, to)`: `len(s) / len(from) × len(to)`.
    Replace,
    /// `regexp_replace(s, re, to [, flags])`: a match could be empty at every position.
    RegexpReplace,
}

const CAPPED: &[(&str, Kind)] = &[
    ("repeat", Kind::Repeat),
    ("lpad", Kind::Pad),
    ("rpad", Kind::Pad),
    ("range", Kind::Range),
    ("generate_series", Kind::Range),
    ("array_repeat", Kind::ArrayRepeat),
    ("array_resize", Kind::ArrayResize),
    ("replace", Kind::Replace),
    ("regexp_replace", Kind::RegexpReplace),
];

/// The bytes one call may produce for one batch, for a pool of `memory` bytes.
pub(crate) fn budget(memory: usize) -> usize {
    (memory / 16).max(1 << 20)
}

/// Replaces each function of [`CAPPED`] that `ctx` has with its capped version.
pub(crate) fn register(ctx: &SessionContext, budget: usize) {
    let functions = ctx.state().scalar_functions().clone();
    for (name, kind) in CAPPED {
        if let Some(inner) = functions.get(*name) {
            ctx.register_udf(ScalarUDF::new_from_impl(Capped {
                inner: inner.as_ref().clone(),
                kind: *kind,
                budget,
            }));
        }
    }
}

/// A function of [`CAPPED`] with its output checked against `budget` before it runs.
/// Everything but the call is the inner function's (simplification is left out, so the
/// optimiser cannot rewrite a call into one that is not checked).
#[derive(Debug, PartialEq, Eq, Hash)]
struct Capped {
    inner: ScalarUDF,
    kind: Kind,
    budget: usize,
}

impl ScalarUDFImpl for Capped {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.inner().schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn with_updated_config(&self, config: &datafusion::config::ConfigOptions) -> Option<ScalarUDF> {
        let inner = self.inner.inner().with_updated_config(config)?;
        Some(ScalarUDF::new_from_impl(Capped {
            inner,
            kind: self.kind,
            budget: self.budget,
        }))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn is_strict(&self) -> bool {
        self.inner.inner().is_strict()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let bytes = output_bytes(self.kind, &args.args, args.number_rows, self.budget);
        if bytes > self.budget as u128 {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "`{}` would produce {} MiB for one batch of {} rows, more than the {} MiB one call may use (a sixteenth of sql.memory_limit)",
                self.name(),
                bytes >> 20,
                args.number_rows,
                self.budget >> 20
            )));
        }
        self.inner.invoke_with_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

/// One argument's per-row value: a scalar for every row, or one per row.
enum PerRow {
    One(Option<i64>),
    Many(Int64Array),
}

impl PerRow {
    fn at(&self, row: usize) -> Option<i64> {
        match self {
            PerRow::One(v) => *v,
            PerRow::Many(a) => a.is_valid(row).then(|| a.value(row)),
        }
    }
}

/// The argument as integers (`None`: absent or not a number, which the function itself
/// refuses).
fn ints(v: Option<&ColumnarValue>) -> PerRow {
    match v {
        None => PerRow::One(None),
        Some(ColumnarValue::Scalar(s)) => match s.cast_to(&DataType::Int64) {
            Ok(ScalarValue::Int64(x)) => PerRow::One(x),
            _ => PerRow::One(None),
        },
        Some(ColumnarValue::Array(a)) => match arrow::compute::cast(a, &DataType::Int64) {
            Ok(c) => PerRow::Many(c.as_primitive::<Int64Type>().clone()),
            Err(_) => PerRow::One(None),
        },
    }
}

/// Timestamps and dates as nanoseconds since the epoch.
fn nanos(v: Option<&ColumnarValue>) -> PerRow {
    let ts = DataType::Timestamp(TimeUnit::Nanosecond, None);
    match v {
        None => PerRow::One(None),
        Some(ColumnarValue::Scalar(s)) => match s.cast_to(&ts) {
            Ok(ScalarValue::TimestampNanosecond(x, _)) => PerRow::One(x),
            _ => PerRow::One(None),
        },
        Some(ColumnarValue::Array(a)) => match arrow::compute::cast(a, &ts)
            .and_then(|c| arrow::compute::cast(&c, &DataType::Int64))
        {
            Ok(c) => PerRow::Many(c.as_primitive::<Int64Type>().clone()),
            Err(_) => PerRow::One(None),
        },
    }
}

/// An interval step as (roughly) nanoseconds: a month as 28 days, so the element count is
/// never underestimated.
fn interval_nanos(v: Option<&ColumnarValue>) -> PerRow {
    let of = |m: i32, d: i32, ns: i64| -> i64 {
        (m as i64)
            .saturating_mul(28 * 86_400_000_000_000)
            .saturating_add((d as i64).saturating_mul(86_400_000_000_000))
            .saturating_add(ns)
    };
    match v {
        Some(ColumnarValue::Scalar(ScalarValue::IntervalMonthDayNano(Some(i)))) => {
            PerRow::One(Some(of(i.months, i.days, i.nanoseconds)))
        }
        Some(ColumnarValue::Array(a)) if matches!(a.data_type(), DataType::Interval(_)) => {
            match a.as_primitive_opt::<IntervalMonthDayNanoType>() {
                Some(p) => PerRow::Many(Int64Array::from_iter(
                    p.iter()
                        .map(|x| x.map(|i| of(i.months, i.days, i.nanoseconds))),
                )),
                None => PerRow::One(None),
            }
        }
        _ => PerRow::One(None),
    }
}

/// Byte lengths of a string or binary argument.
fn lens(v: Option<&ColumnarValue>) -> PerRow {
    match v {
        None => PerRow::One(None),
        Some(ColumnarValue::Scalar(s)) => PerRow::One(match s {
            ScalarValue::Utf8(x) | ScalarValue::LargeUtf8(x) | ScalarValue::Utf8View(x) => {
                x.as_ref().map(|s| s.len() as i64)
            }
            ScalarValue::Binary(x) | ScalarValue::LargeBinary(x) | ScalarValue::BinaryView(x) => {
                x.as_ref().map(|s| s.len() as i64)
            }
            _ => None,
        }),
        Some(ColumnarValue::Array(a)) => match arrow::compute::kernels::length::length(a)
            .and_then(|l| arrow::compute::cast(&l, &DataType::Int64))
        {
            Ok(l) => PerRow::Many(l.as_primitive::<Int64Type>().clone()),
            Err(_) => PerRow::One(None),
        },
    }
}

/// Bytes of one element of an argument of any type (its share of the batch).
fn element_bytes(v: Option<&ColumnarValue>, rows: usize) -> PerRow {
    PerRow::One(Some(match v {
        None => 8,
        Some(ColumnarValue::Scalar(s)) => s.size() as i64,
        Some(ColumnarValue::Array(a)) => (a.get_array_memory_size() / rows.max(1)) as i64,
    }))
}

/// Elements of `range(start, stop, step)`, whatever the bound is.
fn range_len(start: i64, stop: i64, step: i64) -> u128 {
    if step == 0 || (stop > start) != (step > 0) {
        return 0;
    }
    (start.abs_diff(stop) / step.unsigned_abs()) as u128 + 1
}

/// The bytes one call of `kind` makes for its batch, stopping once past `budget`.
fn output_bytes(kind: Kind, args: &[ColumnarValue], rows: usize, budget: usize) -> u128 {
    let pos = |v: Option<i64>| v.unwrap_or(0).max(0) as u128;
    let per_row: Box<dyn Fn(usize) -> u128> = match kind {
        Kind::Repeat => {
            let (s, n) = (lens(args.first()), ints(args.get(1)));
            Box::new(move |r| pos(s.at(r)) * pos(n.at(r)))
        }
        Kind::Pad => {
            let n = ints(args.get(1));
            Box::new(move |r| 4 * pos(n.at(r)))
        }
        Kind::ArrayRepeat => {
            let (x, n) = (element_bytes(args.first(), rows), ints(args.get(1)));
            Box::new(move |r| pos(x.at(r)).max(8) * pos(n.at(r)))
        }
        Kind::ArrayResize => {
            let n = ints(args.get(1));
            Box::new(move |r| 16 * pos(n.at(r)))
        }
        Kind::Replace => {
            let (s, from, to) = (lens(args.first()), lens(args.get(1)), lens(args.get(2)));
            Box::new(move |r| {
                let s = pos(s.at(r));
                s + s / pos(from.at(r)).max(1) * pos(to.at(r))
            })
        }
        Kind::RegexpReplace => {
            let (s, to) = (lens(args.first()), lens(args.get(2)));
            Box::new(move |r| {
                let s = pos(s.at(r));
                s + (s + 1) * pos(to.at(r))
            })
        }
        Kind::Range => {
            let first = args.first().map(|a| a.data_type());
            let timed = matches!(
                first,
                Some(DataType::Date32 | DataType::Date64 | DataType::Timestamp(..))
            );
            let (start, stop, step) = if timed {
                (
                    nanos(args.first()),
                    nanos(args.get(1)),
                    interval_nanos(args.get(2)),
                )
            } else if args.len() == 1 {
                (
                    PerRow::One(Some(0)),
                    ints(args.first()),
                    PerRow::One(Some(1)),
                )
            } else {
                let step = if args.len() > 2 {
                    ints(args.get(2))
                } else {
                    PerRow::One(Some(1))
                };
                (ints(args.first()), ints(args.get(1)), step)
            };
            Box::new(move |r| match (start.at(r), stop.at(r), step.at(r)) {
                (Some(a), Some(b), Some(s)) => 8 * range_len(a, b, s),
                _ => 0,
            })
        }
    };
    let mut total: u128 = 0;
    for r in 0..rows.max(1) {
        total = total.saturating_add(per_row(r));
        if total > budget as u128 {
            break;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn range_lengths_follow_the_sign_of_the_step() {
        assert_eq!(range_len(0, 10, 1), 11);
        assert_eq!(range_len(0, 10, 3), 4);
        assert_eq!(range_len(10, 0, 1), 0);
        assert_eq!(range_len(10, 0, -2), 6);
        assert_eq!(range_len(0, 10, 0), 0);
        assert_eq!(range_len(i64::MIN, i64::MAX, 1), u64::MAX as u128 + 1);
    }

    #[test]
    fn a_scalar_repeat_is_sized_per_row() {
        let args = [
            ColumnarValue::Scalar(ScalarValue::Utf8(Some("ab".into()))),
            ColumnarValue::Scalar(ScalarValue::Int64(Some(1000))),
        ];
        assert_eq!(output_bytes(Kind::Repeat, &args, 10, usize::MAX), 20_000);
        let args = [
            ColumnarValue::Array(Arc::new(arrow::array::StringArray::from(vec!["x", "yyy"]))),
            ColumnarValue::Array(Arc::new(Int64Array::from(vec![Some(5), None]))),
        ];
        assert_eq!(output_bytes(Kind::Repeat, &args, 2, usize::MAX), 5);
    }
}
