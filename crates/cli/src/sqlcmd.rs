//! `ymera sql`: read-only analyst SQL over every lake and warehouse table (crate
//! `ymera-query`), one-shot or as an interactive REPL, printed as an aligned table, CSV,
//! JSON lines, or written to a Parquet file.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use ymera_query::{Analyst, Output, QueryError, Source};
use ymera_warehouse::Warehouse;

use crate::settings::Settings;
use crate::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE};

/// Output format of results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns (the default).
    Table,
    Csv,
    /// One JSON object per row.
    Json,
    /// A Parquet file (needs `--output`).
    Parquet,
}

pub async fn sql(
    settings: &Settings,
    query: Option<String>,
    format: Format,
    output: Option<PathBuf>,
) -> u8 {
    if format == Format::Parquet && output.is_none() {
        eprintln!("error: --format parquet writes a file: add --output FILE");
        return EXIT_USAGE;
    }
    let query = match query {
        Some(q) => q,
        None if std::io::stdin().is_terminal() => {
            let analyst = match open(settings).await {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("error: {e}");
                    return EXIT_FAILURE;
                }
            };
            return repl(&analyst, format, output.as_deref()).await;
        }
        None => {
            let mut q = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut q) {
                eprintln!("error: cannot read the query from stdin: {e}");
                return EXIT_USAGE;
            }
            q
        }
    };
    let analyst = match open_for(settings, &query).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILURE;
        }
    };
    match run_one(&analyst, &query, format, output.as_deref(), false).await {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILURE
        }
    }
}

/// The lake, plus the warehouse when it exists (a missing SQLite file is not created).
pub async fn open(settings: &Settings) -> Result<Analyst, String> {
    let lake = crate::commands::open_lake(settings)?;
    let warehouse = connect_warehouse(settings).await;
    session(&lake, None, warehouse.as_ref(), settings)
        .await
        .map(warned)
}

/// [`open`] for one query: only the lake tables it names are loaded, and the warehouse
/// is left alone when it names lake tables only (start-up is most of a short query's
/// time). When the text does not tell, or names a table neither has, everything is
/// opened, so the error is the one `open` gives.
async fn open_for(settings: &Settings, query: &str) -> Result<Analyst, String> {
    let lake = crate::commands::open_lake(settings)?;
    let Some(named) = ymera_query::tables_named_in(query) else {
        let warehouse = connect_warehouse(settings).await;
        return session(&lake, None, warehouse.as_ref(), settings)
            .await
            .map(warned);
    };
    // the lake session registers the named tables that are Delta tables (one listing of
    // the lake); a name it lacks may be a warehouse table: then open the warehouse too
    let has_all = |(a, _): &(Analyst, Vec<String>)| {
        named
            .iter()
            .all(|n| a.tables().iter().any(|t| &t.name == n))
    };
    let opened = session(&lake, Some(&named), None, settings).await?;
    if has_all(&opened) {
        return Ok(warned(opened));
    }
    let warehouse = connect_warehouse(settings).await;
    let opened = session(&lake, Some(&named), warehouse.as_ref(), settings).await?;
    if has_all(&opened) {
        return Ok(warned(opened));
    }
    session(&lake, None, warehouse.as_ref(), settings)
        .await
        .map(warned)
}

async fn connect_warehouse(settings: &Settings) -> Option<Warehouse> {
    let url = settings.warehouse.url.expose();
    let sqlite_missing = url
        .strip_prefix("sqlite://")
        .map(|p| p.split('?').next().unwrap_or(p))
        .is_some_and(|p| !p.contains(":memory:") && !Path::new(p).exists());
    if sqlite_missing {
        return None;
    }
    match Warehouse::connect(url).await {
        Ok(wh) => Some(wh),
        Err(e) => {
            eprintln!("warning: warehouse tables unavailable: {e}");
            None
        }
    }
}

/// A session over `lake_tables` (all when `None`) and the warehouse, with its warnings
/// (printed by the caller, once, for the session it keeps).
async fn session(
    lake: &ymera_lake::Lake,
    lake_tables: Option<&[String]>,
    warehouse: Option<&Warehouse>,
    settings: &Settings,
) -> Result<(Analyst, Vec<String>), String> {
    let limits = settings.sql.limits();
    Analyst::open_some(
        lake,
        lake_tables,
        warehouse,
        limits,
        ymera_query::memory_pool(limits.memory),
    )
    .await
    .map_err(|e| e.to_string())
}

fn warned((analyst, warnings): (Analyst, Vec<String>)) -> Analyst {
    for w in warnings {
        eprintln!("warning: {w}");
    }
    analyst
}

async fn run_one(
    analyst: &Analyst,
    query: &str,
    format: Format,
    output: Option<&Path>,
    timing: bool,
) -> Result<(), QueryError> {
    let started = Instant::now();
    let out = analyst.query(query).await?;
    let elapsed = started.elapsed();
    if let Err(e) = emit(&out, format, output) {
        return Err(QueryError::Execution(e));
    }
    if out.truncated {
        eprintln!(
            "warning: result cut at {} rows (sql.max_rows); aggregate or add LIMIT",
            out.rows
        );
    }
    if timing {
        eprintln!("{} row(s) in {:.3} s", out.rows, elapsed.as_secs_f64());
    }
    Ok(())
}

fn emit(out: &Output, format: Format, output: Option<&Path>) -> Result<(), String> {
    let mut sink: Box<dyn Write + Send> = match output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?,
        )),
        None => Box::new(std::io::stdout()),
    };
    write_batches(&mut sink, &out.schema, &out.batches, format)?;
    sink.flush().map_err(|e| e.to_string())
}

/// Writes batches in `format` (shared by the REPL and one-shot).
pub fn write_batches(
    w: &mut (dyn Write + Send),
    schema: &arrow::datatypes::SchemaRef,
    batches: &[RecordBatch],
    format: Format,
) -> Result<(), String> {
    let err = |e: arrow::error::ArrowError| e.to_string();
    match format {
        Format::Csv => {
            let mut cw = arrow::csv::WriterBuilder::new().with_header(true).build(w);
            if batches.is_empty() {
                cw.write(&RecordBatch::new_empty(schema.clone()))
                    .map_err(err)?;
            }
            for b in batches {
                cw.write(b).map_err(err)?;
            }
        }
        Format::Json => {
            let mut jw = arrow::json::LineDelimitedWriter::new(w);
            for b in batches {
                jw.write(b).map_err(err)?;
            }
            jw.finish().map_err(err)?;
        }
        Format::Parquet => {
            let mut pw = parquet::arrow::ArrowWriter::try_new(w, schema.clone(), None)
                .map_err(|e| e.to_string())?;
            for b in batches {
                pw.write(b).map_err(|e| e.to_string())?;
            }
            pw.close().map_err(|e| e.to_string())?;
        }
        Format::Table => {
            let table = if batches.is_empty() {
                arrow::util::pretty::pretty_format_batches(&[RecordBatch::new_empty(
                    schema.clone(),
                )])
            } else {
                arrow::util::pretty::pretty_format_batches(batches)
            }
            .map_err(err)?;
            writeln!(w, "{table}").map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

const HELP: &str = "\
  SELECT …;      run a query (it may span lines; `;` ends it)
  \\d             list tables
  \\d TABLE       describe a table
  \\timing        toggle query timing
  \\q             quit (or Ctrl-D)";

fn describe_tables(analyst: &Analyst) -> String {
    let mut s = format!(
        "{:<28} {:<10} {:>7}  partitions\n",
        "table", "source", "columns"
    );
    for t in analyst.tables() {
        s.push_str(&format!(
            "{:<28} {:<10} {:>7}  {}\n",
            t.name,
            match t.source {
                Source::Lake => "lake",
                Source::Warehouse => "warehouse",
            },
            t.schema.fields().len(),
            t.partitions.join(", ")
        ));
    }
    s
}

fn describe_table(analyst: &Analyst, name: &str) -> Result<String, QueryError> {
    let t = analyst.table(name)?;
    let mut s = format!("{:<32} {:<28} nullable\n", "column", "type");
    for f in t.schema.fields() {
        let part = if t.partitions.contains(f.name()) {
            "  (partition)"
        } else {
            ""
        };
        s.push_str(&format!(
            "{:<32} {:<28} {}{part}\n",
            f.name(),
            f.data_type().to_string(),
            if f.is_nullable() { "yes" } else { "no" }
        ));
    }
    Ok(s)
}

async fn repl(analyst: &Analyst, format: Format, output: Option<&Path>) -> u8 {
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot start the line editor: {e}");
            return EXIT_FAILURE;
        }
    };
    let history = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ymera_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    let limits = analyst.limits();
    println!(
        "ymera sql: {} tables (\\d lists them, \\? helps). Read-only; limits: {} MiB, {:?}, {} rows.",
        analyst.tables().len(),
        limits.memory >> 20,
        limits.timeout,
        limits.max_rows
    );
    let mut timing = false;
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            "ymera> "
        } else {
            "   ...> "
        };
        let line = match editor.readline(prompt) {
            Ok(l) => l,
            Err(rustyline::error::ReadlineError::Interrupted) => {
                buffer.clear();
                continue;
            }
            Err(_) => break, // Ctrl-D
        };
        let trimmed = line.trim();
        if buffer.is_empty() && trimmed.starts_with('\\') {
            let _ = editor.add_history_entry(trimmed);
            let mut parts = trimmed.split_whitespace();
            match (parts.next(), parts.next()) {
                (Some("\\q"), _) => break,
                (Some("\\d"), None) => print!("{}", describe_tables(analyst)),
                (Some("\\d"), Some(t)) => match describe_table(analyst, t) {
                    Ok(s) => print!("{s}"),
                    Err(e) => eprintln!("error: {e}"),
                },
                (Some("\\timing"), _) => {
                    timing = !timing;
                    println!("timing is {}", if timing { "on" } else { "off" });
                }
                _ => println!("{HELP}"),
            }
            continue;
        }
        if trimmed.is_empty() && buffer.is_empty() {
            continue;
        }
        buffer.push_str(&line);
        buffer.push('\n');
        if !trimmed.ends_with(';') {
            continue;
        }
        let statement = std::mem::take(&mut buffer);
        let _ = editor.add_history_entry(statement.trim());
        let sql = statement.trim().trim_end_matches(';');
        if let Err(e) = run_one(analyst, sql, format, output, timing).await {
            eprintln!("error: {e}");
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    EXIT_OK
}
