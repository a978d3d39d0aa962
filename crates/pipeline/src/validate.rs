//! Semantic checks of a decoded pipeline: schema types, names, SQL that plans against the
//! declared schema, sinks whose inputs and partition columns exist. The result is a
//! [`Pipeline`]: everything the runtime needs, checked before anything starts.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema, SchemaRef, TimeUnit};
use ymera_anomaly::stage::StageError;
use ymera_common::FieldType;
use ymera_common::schema::{DeclaredField, arrow_schema};
use ymera_lake::TableSpec;
use ymera_transform::{INPUT, Stage, Transform};

use crate::chain::{AnomalyStage, Chain, Notify, Step};

use crate::load::{Diagnostic, Loaded};
use crate::spec::{OnBadRecord, PipelineSpec, WarehouseMode};

/// A sink, resolved: what it reads and what it writes.
#[derive(Debug, Clone)]
pub struct Sink {
    /// The stage (or `input`) it reads.
    pub input: String,
    pub table: TableSpec,
    pub rolling: crate::spec::RollingSpec,
    /// The YAML path of its table (for messages).
    pub path: String,
    /// Line and column of `table` in the file.
    pub at: (usize, usize),
}

/// A warehouse sink, resolved.
#[derive(Debug, Clone)]
pub struct WarehouseSink {
    /// The stage (or `input`) it reads.
    pub input: String,
    pub table: String,
    pub mode: ymera_warehouse::Mode,
    pub rolling: crate::spec::RollingSpec,
    /// The schema of its input (checked against the table by [`check_warehouse`]).
    pub schema: SchemaRef,
    /// Line and column of `table` in the file.
    pub at: (usize, usize),
}

/// A checked pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub spec: PipelineSpec,
    pub fields: Vec<DeclaredField>,
    pub input_schema: SchemaRef,
    /// The SQL stages before the first anomaly stage (all of them without one): what
    /// [`Pipeline::transform`] runs.
    pub stages: Vec<Stage>,
    /// Every stage, in order.
    pub steps: Vec<Step>,
    pub sinks: Vec<Sink>,
    /// Warehouse sinks.
    pub warehouse_sinks: Vec<WarehouseSink>,
    /// The dead-letter table when `dlq.path` is set.
    pub dlq_table: Option<TableSpec>,
    /// The file it came from and where `source.kafka.brokers` is in it (for the
    /// environment checks of `validate`).
    pub file: std::path::PathBuf,
    pub brokers_at: (usize, usize),
}

impl Pipeline {
    /// A fresh transform chain for this pipeline.
    pub fn transform(&self) -> Transform {
        Transform::new(self.stages.clone(), self.input_schema.clone())
    }

    /// A fresh stage chain for this pipeline (anomaly stages included).
    pub fn chain(&self) -> Chain {
        Chain::new(&self.steps, self.input_schema.clone())
    }

    /// Whether any stage keeps state between batches (checkpointed with the offsets).
    pub fn has_state(&self) -> bool {
        self.steps.iter().any(|s| matches!(s, Step::Anomaly(_)))
    }

    /// A problem found in this pipeline's file after validation (environment checks), at
    /// `(line, col)`.
    pub fn diagnostic(
        &self,
        (line, col): (usize, usize),
        path: &str,
        message: String,
    ) -> Diagnostic {
        Diagnostic {
            file: self.file.clone(),
            line,
            col,
            path: path.to_string(),
            message,
        }
    }

    /// A problem at a warehouse sink's table.
    pub fn at_warehouse_sink(&self, s: &WarehouseSink, message: String) -> Diagnostic {
        self.diagnostic(
            s.at,
            &format!("sinks[].warehouse.table ({})", s.table),
            message,
        )
    }

    /// Every lake table this pipeline writes (the DLQ table included).
    pub fn tables(&self) -> Vec<String> {
        let mut t: Vec<String> = self.sinks.iter().map(|s| s.table.table.clone()).collect();
        t.extend(self.dlq_table.iter().map(|d| d.table.clone()));
        t
    }
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

fn parse_zstd(text: &str) -> Option<i32> {
    let t = text.trim();
    if t == "zstd" {
        return Some(3);
    }
    let level: i32 = t
        .strip_prefix("zstd(")?
        .strip_suffix(')')?
        .trim()
        .parse()
        .ok()?;
    (1..=22).contains(&level).then_some(level)
}

/// Checks a loaded spec; adds every problem to `loaded.diagnostics`; returns the pipeline
/// when there were none.
pub async fn check(loaded: &mut Loaded) -> Option<Pipeline> {
    let spec = loaded.spec.clone()?;
    if !is_ident(&spec.name) {
        loaded.error_at(
            "name",
            format!("pipeline name `{}` must match [a-z0-9_]+", spec.name),
        );
    }
    let src = &spec.source;
    if src.kafka.topics.is_empty() {
        loaded.error_at("source.kafka.topics", "at least one topic is required");
    }
    if src.kafka.brokers.trim().is_empty() {
        loaded.error_at(
            "source.kafka.brokers",
            "brokers must not be empty (or `embedded`)",
        );
    }
    if src.kafka.group_id.trim().is_empty() {
        loaded.error_at("source.kafka.group_id", "group_id must not be empty");
    }
    for key in src.kafka.client.keys() {
        if let Some((_, why)) = ymera_ingest::kafka::RESERVED_CLIENT_KEYS
            .iter()
            .find(|(k, _)| k == key)
        {
            loaded.error_at_key(
                "source.kafka.client",
                key,
                format!("`{key}` cannot be set in `client`: {why}"),
            );
        }
    }

    // the declared schema
    let mut fields = Vec::new();
    if src.schema.is_empty() {
        loaded.error_at("source.schema", "the schema declares no fields");
    }
    for (name, ty) in &src.schema {
        match FieldType::parse_declared(ty) {
            Ok((ty, nullable)) => fields.push(DeclaredField {
                name: name.clone(),
                ty,
                nullable,
            }),
            Err(e) => loaded.error_at(
                &format!("source.schema.{name}"),
                format!("field `{name}`: {e}"),
            ),
        }
    }
    let diags_before_event_time = loaded.diagnostics.len();
    if let Some(et) = &src.event_time {
        match fields.iter().find(|f| &f.name == et) {
            None => loaded.error_at(
                "source.event_time",
                format!("event_time `{et}` is not a declared field"),
            ),
            Some(f) if f.ty != FieldType::TimestampUs => loaded.error_at(
                "source.event_time",
                format!(
                    "event_time `{et}` must be timestamp_us, it is declared {}",
                    f.ty
                ),
            ),
            Some(_) => {}
        }
    }
    let event_time_ok = loaded.diagnostics.len() == diags_before_event_time;
    let input_schema = arrow_schema(&fields);

    // stages
    let mut names: HashSet<String> = HashSet::from([INPUT.to_string()]);
    // each step with the index of its `transforms[]` entry
    let mut steps: Vec<(usize, Step)> = Vec::new();
    let mut previous = INPUT.to_string();
    for (i, t) in spec.transforms.iter().enumerate() {
        if !is_ident(&t.name) {
            loaded.error_at(
                &format!("transforms[{i}].name"),
                format!("stage name `{}` must match [a-z0-9_]+", t.name),
            );
        } else if !names.insert(t.name.clone()) {
            loaded.error_at(
                &format!("transforms[{i}].name"),
                format!("stage name `{}` is used twice (or is `input`)", t.name),
            );
        }
        match (&t.sql, &t.anomaly) {
            (Some(sql), None) => steps.push((
                i,
                Step::Sql(Stage {
                    name: t.name.clone(),
                    sql: sql.clone(),
                }),
            )),
            (None, Some(a)) => steps.push((
                i,
                Step::Anomaly(anomaly_stage(loaded, i, &t.name, a, &previous)),
            )),
            _ => loaded.error_at(
                &format!("transforms[{i}]"),
                "a stage is exactly one of: `sql`, `anomaly`",
            ),
        }
        previous = t.name.clone();
    }
    let all_steps: Vec<Step> = steps.iter().map(|(_, s)| s.clone()).collect();
    let (stages, _) = crate::chain::split(&all_steps);
    let transform = Transform::new(stages.clone(), input_schema.clone());
    let mut schemas: Vec<(String, SchemaRef)> = vec![(INPUT.to_string(), input_schema.clone())];
    for ((i, _), (name, planned)) in steps.iter().zip(transform.plan().await) {
        match planned {
            Ok(schema) => schemas.push((name, schema)),
            Err(e) => loaded.error_at(&format!("transforms[{i}].sql"), e.to_string()),
        }
    }
    // from the first anomaly stage on, in order
    let mut planned_names: HashSet<String> = HashSet::from([INPUT.to_string()]);
    planned_names.extend(stages.iter().map(|s| s.name.clone()));
    for (i, step) in steps.iter().skip(stages.len()) {
        let i = *i;
        match step {
            Step::Sql(stage) => match crate::chain::plan_sql(stage, &schemas).await {
                Ok(schema) => schemas.push((stage.name.clone(), schema)),
                Err(e) => loaded.error_at(&format!("transforms[{i}].sql"), e.to_string()),
            },
            Step::Anomaly(a) => {
                let at = format!("transforms[{i}].anomaly");
                let Some((_, in_schema)) = schemas.iter().find(|(n, _)| *n == a.input) else {
                    if !planned_names.contains(&a.input) {
                        loaded.error_at(
                            &format!("{at}.input"),
                            format!(
                                "anomaly stage `{}` reads `{}`, which is not an earlier stage (stages: {})",
                                a.config.name,
                                a.input,
                                stage_list(&spec)
                            ),
                        );
                    }
                    continue;
                };
                match ymera_anomaly::stage::output_schema(in_schema, &a.config) {
                    Ok(schema) => {
                        schemas.push((a.config.name.clone(), schema));
                        if a.config.alerts.is_some() {
                            schemas.push((
                                crate::chain::alerts_output(&a.config.name),
                                ymera_anomaly::stage::alerts_schema(),
                            ));
                        }
                    }
                    Err(errors) => {
                        for e in errors {
                            let key = match &e {
                                StageError::MissingColumn(c) if a.config.key.contains(c) => "key",
                                StageError::MissingColumn(c) if *c == a.config.time => "time",
                                StageError::TimeType { .. } => "time",
                                StageError::Clash(_) => "input",
                                _ => "value",
                            };
                            loaded.error_at(
                                &format!("{at}.{key}"),
                                format!("anomaly stage `{}`: {e} (`{}`)", a.config.name, a.input),
                            );
                        }
                    }
                }
            }
        }
        planned_names.insert(step.name().to_string());
    }
    let schema_of = |name: &str| {
        schemas
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
    };
    let default_input = spec
        .transforms
        .last()
        .map_or(INPUT.to_string(), |t| t.name.clone());

    // sinks
    if spec.sinks.is_empty() {
        loaded.error_at("sinks", "a pipeline needs at least one sink");
    }
    let mut sinks = Vec::new();
    let mut warehouse_sinks = Vec::new();
    let mut tables = HashSet::new();
    let mut wh_tables = HashSet::new();
    for (i, sink) in spec.sinks.iter().enumerate() {
        let input = sink
            .input()
            .map(str::to_string)
            .unwrap_or_else(|| default_input.clone());
        let (at, rolling) = match (&sink.lake, &sink.warehouse) {
            (Some(_), Some(_)) | (None, None) => {
                loaded.error_at(
                    &format!("sinks[{i}]"),
                    "a sink is exactly one of: `lake`, `warehouse`",
                );
                continue;
            }
            (Some(l), None) => (format!("sinks[{i}].lake"), &l.rolling),
            (None, Some(w)) => (format!("sinks[{i}].warehouse"), &w.rolling),
        };
        if rolling.max_rows == 0 {
            loaded.error_at(
                &format!("{at}.rolling.max_rows"),
                "max_rows must be at least 1",
            );
        }
        let schema = match (names.contains(&input), schema_of(&input)) {
            (false, _) => {
                loaded.error_at(
                    &format!("{at}.input"),
                    format!(
                        "sink input `{input}` is not a stage (stages: {})",
                        stage_list(&spec)
                    ),
                );
                None
            }
            (true, schema) => schema, // None: the stage failed to plan; already reported
        };
        if let Some(w) = &sink.warehouse {
            if ymera_warehouse::ident(&w.table).is_err() {
                loaded.error_at(
                    &format!("{at}.table"),
                    format!("table name `{}` must match [A-Za-z_][A-Za-z0-9_]*", w.table),
                );
            } else if !wh_tables.insert(w.table.clone()) {
                loaded.error_at(
                    &format!("{at}.table"),
                    format!("warehouse table `{}` is written by two sinks", w.table),
                );
            }
            let mode = match (w.mode, w.key.is_empty()) {
                (WarehouseMode::Append, true) => Some(ymera_warehouse::Mode::Append),
                (WarehouseMode::Append, false) => {
                    loaded.error_at(
                        &format!("{at}.key"),
                        "`key` is used by `mode: upsert` only (append inserts every row)",
                    );
                    None
                }
                (WarehouseMode::Upsert, true) => {
                    loaded.error_at_key(&at, "mode", "`mode: upsert` needs `key` (the table's primary key or a unique constraint)");
                    None
                }
                (WarehouseMode::Upsert, false) => {
                    if let Some(schema) = &schema {
                        for k in &w.key {
                            if schema.field_with_name(k).is_err() {
                                loaded.error_at(&format!("{at}.key"), format!("key column `{k}` is not an output column of stage `{input}`"));
                            }
                        }
                    }
                    Some(ymera_warehouse::Mode::Upsert(w.key.clone()))
                }
            };
            if let Some(schema) = &schema {
                for f in schema.fields() {
                    if ymera_warehouse::ident(f.name()).is_err() {
                        loaded.error_at(&format!("{at}.input"), format!("column `{}` of stage `{input}` is not a valid warehouse column name: alias it in SQL", f.name()));
                    }
                }
            }
            if let (Some(mode), Some(schema)) = (mode, schema) {
                warehouse_sinks.push(WarehouseSink {
                    input,
                    table: w.table.clone(),
                    mode,
                    rolling: w.rolling.clone(),
                    schema,
                    at: loaded.positions.locate(&format!("{at}.table")),
                });
            }
            continue;
        }
        let Some(l) = &sink.lake else { continue };
        if !is_ident(&l.table) {
            loaded.error_at(
                &format!("{at}.table"),
                format!("table name `{}` must match [a-z0-9_]+", l.table),
            );
        } else if !tables.insert(l.table.clone()) {
            loaded.error_at(
                &format!("{at}.table"),
                format!("table `{}` is written by two sinks", l.table),
            );
        }
        let level = parse_zstd(&l.compression);
        if level.is_none() {
            loaded.error_at(
                &format!("{at}.compression"),
                format!(
                    "compression `{}` is not supported (use `zstd` or `zstd(1..22)`)",
                    l.compression
                ),
            );
        }
        if let Some(schema) = &schema {
            for col in &l.partition_by {
                if col == "dt" && !event_time_ok {
                    continue; // already reported at source.event_time
                }
                if col == "dt" {
                    let Some(et) = &src.event_time else {
                        loaded.error_at(
                            &format!("{at}.partition_by"),
                            "partition `dt` needs `source.event_time`",
                        );
                        continue;
                    };
                    match schema.field_with_name(et) {
                        Ok(f) if matches!(f.data_type(), DataType::Timestamp(TimeUnit::Microsecond, _)) => {}
                        Ok(f) => loaded.error_at(
                            &format!("{at}.partition_by"),
                            format!("partition `dt` needs event_time column `{et}` as a µs timestamp, stage `{input}` makes it {}", f.data_type()),
                        ),
                        Err(_) => loaded.error_at(
                            &format!("{at}.partition_by"),
                            format!("partition `dt` needs the event_time column `{et}`, which stage `{input}` drops"),
                        ),
                    }
                } else if schema.field_with_name(col).is_err() {
                    loaded.error_at(
                        &format!("{at}.partition_by"),
                        format!(
                            "partition column `{col}` is not an output column of stage `{input}`"
                        ),
                    );
                }
            }
        }
        let table = TableSpec {
            table: l.table.clone(),
            partition_by: l.partition_by.clone(),
            event_time: src.event_time.clone(),
            zstd_level: level.unwrap_or(3),
            schema: schema.unwrap_or_else(|| Arc::new(Schema::empty())),
        };
        if let Err(e) = ymera_lake::delta::delta_schema(&table.table, &table.table_schema()) {
            loaded.error_at(&format!("{at}.input"), e.to_string());
        }
        sinks.push(Sink {
            input,
            table,
            rolling: l.rolling.clone(),
            path: format!("{at}.table"),
            at: loaded.positions.locate(&format!("{at}.table")),
        });
    }

    // the alerts tables of anomaly stages: lake sinks of their own
    let alert_rolling = sinks
        .first()
        .map(|s: &Sink| s.rolling.clone())
        .unwrap_or_default();
    for (i, step) in &steps {
        let (Step::Anomaly(a), Some(alerts)) = (
            step,
            spec.transforms[*i]
                .anomaly
                .as_ref()
                .and_then(|a| a.alerts.as_ref()),
        ) else {
            continue;
        };
        let at = format!("transforms[{i}].anomaly.alerts.table");
        if !is_ident(&alerts.table) {
            loaded.error_at(
                &at,
                format!("table name `{}` must match [a-z0-9_]+", alerts.table),
            );
            continue;
        }
        if !tables.insert(alerts.table.clone()) {
            loaded.error_at(
                &at,
                format!("table `{}` is written by two sinks", alerts.table),
            );
            continue;
        }
        sinks.push(Sink {
            input: crate::chain::alerts_output(&a.config.name),
            table: TableSpec {
                table: alerts.table.clone(),
                partition_by: vec!["dt".into()],
                event_time: Some("at".into()),
                zstd_level: 3,
                schema: ymera_anomaly::stage::alerts_schema(),
            },
            rolling: alert_rolling.clone(),
            at: loaded.positions.locate(&at),
            path: at,
        });
    }

    // dead letters
    let mut dlq_table = None;
    match &spec.dlq {
        None if src.on_bad_record == OnBadRecord::Dlq => {
            // at the setting when written, else at `source` (the default applies)
            let written = loaded.positions.has("source.on_bad_record");
            let (parent, key) = if written {
                ("source", "on_bad_record")
            } else {
                ("", "source")
            };
            let message = "on_bad_record is `dlq` (the default) but the pipeline has no `dlq` target: add `dlq: { path: _dlq/<name> }` or `{ topic: ... }`";
            if written {
                loaded.error_at("source.on_bad_record", message);
            } else {
                loaded.error_at_key(parent, key, message);
            }
        }
        None => {}
        Some(d) => {
            match (&d.topic, &d.path) {
                (Some(_), Some(_)) | (None, None) => {
                    loaded.error_at("dlq", "dlq takes exactly one of `topic` or `path`")
                }
                (Some(t), None) if t.trim().is_empty() => {
                    loaded.error_at("dlq.topic", "dlq topic must not be empty")
                }
                (Some(_), None) => {}
                (None, Some(p)) => {
                    let p = p.trim_matches('/');
                    let ok = p.strip_prefix("_dlq/") == Some(spec.name.as_str());
                    if !ok {
                        loaded.error_at("dlq.path", format!("dlq path `{p}` must be `_dlq/{}` (the pipeline's name) under the lake", spec.name));
                    } else {
                        dlq_table = Some(TableSpec {
                            table: p.to_string(),
                            partition_by: vec!["dt".into()],
                            event_time: Some(crate::dlq::FAILED_AT.into()),
                            zstd_level: 3,
                            schema: crate::dlq::schema(),
                        });
                    }
                }
            }
        }
    }

    // tests
    for (i, t) in spec.tests.iter().enumerate() {
        for stage in t.expect.keys() {
            if !names.contains(stage) {
                loaded.error_at_key(
                    &format!("tests[{i}].expect"),
                    stage,
                    format!(
                        "test `{}` expects rows of `{stage}`, which is not a stage (stages: {})",
                        t.name,
                        stage_list(&spec)
                    ),
                );
            }
        }
    }
    if spec.tests.is_empty() {
        loaded.warn_at(
            "name",
            format!(
                "pipeline `{}` has no `tests:`: `ymera test` cannot check its stages",
                spec.name
            ),
        );
    }
    if spec.batch.max_records == 0 {
        loaded.error_at("batch.max_records", "max_records must be at least 1");
    }

    if !loaded.diagnostics.is_empty() {
        return None;
    }
    Some(Pipeline {
        spec,
        fields,
        input_schema: Arc::clone(&input_schema),
        stages,
        steps: all_steps,
        sinks,
        warehouse_sinks,
        dlq_table,
        file: loaded.file.clone(),
        brokers_at: loaded.positions.locate("source.kafka.brokers"),
    })
}

/// Checks each warehouse sink's input against its table in `wh` (columns, types, NOT
/// NULL columns, the upsert key). Returns (errors, warnings) located at the sink's table.
pub async fn check_warehouse(
    p: &Pipeline,
    wh: &ymera_warehouse::Warehouse,
) -> (Vec<Diagnostic>, Vec<Diagnostic>) {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    for s in &p.warehouse_sinks {
        let at = |message: String| p.at_warehouse_sink(s, message);
        let key = match &s.mode {
            ymera_warehouse::Mode::Upsert(k) => Some(k.as_slice()),
            ymera_warehouse::Mode::Append => None,
        };
        match wh.require(&s.table).await {
            Err(e) => errors.push(at(e.to_string())),
            Ok(table) => match ymera_warehouse::fit(&table, &s.schema, key) {
                Ok(w) => warnings.extend(w.into_iter().map(&at)),
                Err(e) => errors.extend(e.into_iter().map(&at)),
            },
        }
    }
    (errors, warnings)
}

fn stage_list(spec: &PipelineSpec) -> String {
    std::iter::once(INPUT)
        .chain(spec.transforms.iter().map(|t| t.name.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Resolves an anomaly stage's spec (its columns are checked once its input's schema is
/// known).
fn anomaly_stage(
    loaded: &mut Loaded,
    i: usize,
    name: &str,
    a: &crate::spec::AnomalySpec,
    previous: &str,
) -> AnomalyStage {
    let at = format!("transforms[{i}].anomaly");
    let d = &a.detector;
    if d.detectors.is_empty() {
        loaded.error_at(
            &format!("{at}.detector.detectors"),
            "at least one detector is required",
        );
    }
    if !(d.threshold > 0.0 && d.threshold <= 1.0) {
        loaded.error_at(
            &format!("{at}.detector.threshold"),
            format!(
                "threshold {} must be in (0, 1] (scores are in [0, 1])",
                d.threshold
            ),
        );
    } else if let Err(e) = d.validate() {
        loaded.error_at(&format!("{at}.detector"), e);
    }
    let mut notify = Notify::default();
    let rules = a.alerts.as_ref().map(|al| {
        if let Some(t) = &al.topic {
            if t.trim().is_empty() {
                loaded.error_at(
                    &format!("{at}.alerts.topic"),
                    "alerts topic must not be empty",
                );
            }
            notify.topic = Some(t.clone());
        }
        if let Some(w) = &al.webhook {
            if w.secret.as_ref().is_some_and(|s| s.expose().is_empty()) {
                // an unset variable is an error already; one set to "" would turn signing off
                loaded.error_at(
                    &format!("{at}.alerts.webhook.secret"),
                    "the webhook secret is empty (leave `secret` out for unsigned webhooks)",
                );
            }
            match crate::notify::check_url(&w.url) {
                Ok(url) => {
                    notify.webhook = Some(std::sync::Arc::new(crate::notify::Webhook {
                        url,
                        timeout: w.timeout,
                        secret: w.secret.clone(),
                    }));
                }
                Err(e) => loaded.error_at(&format!("{at}.alerts.webhook.url"), e),
            }
        }
        let micros = |d: std::time::Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        ymera_anomaly::alerts::AlertRules {
            min_duration_us: micros(al.min_duration),
            cooldown_us: micros(al.cooldown),
        }
    });
    AnomalyStage {
        input: a.input.clone().unwrap_or_else(|| previous.to_string()),
        config: ymera_anomaly::stage::StageConfig {
            name: name.to_string(),
            key: a.key.clone(),
            time: a.time.clone(),
            value: a.value.clone(),
            detector: a.detector.clone(),
            alerts: rules,
        },
        notify,
    }
}
