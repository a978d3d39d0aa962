//! `ymera sql`: one query over every lake table (Hive partitions as columns), read-only.

use std::io::Read;

use datafusion::execution::context::SQLOptions;
use ymera_lake::catalog;

use crate::settings::Settings;
use crate::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE};

pub async fn sql(settings: &Settings, query: Option<String>, format: &str) -> u8 {
    let query = match query {
        Some(q) => q,
        None => {
            let mut q = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut q) {
                eprintln!("error: cannot read the query from stdin: {e}");
                return EXIT_USAGE;
            }
            q
        }
    };
    if !["table", "csv", "json"].contains(&format) {
        eprintln!("error: --format must be table, csv or json");
        return EXIT_USAGE;
    }
    match run(settings, &query, format).await {
        Ok(out) => {
            print!("{out}");
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILURE
        }
    }
}

async fn run(settings: &Settings, query: &str, format: &str) -> Result<String, String> {
    let lake = crate::commands::open_lake(settings)?;
    let ctx = ymera_transform::session();
    catalog::register_lake_tables(&ctx, &lake)
        .await
        .map_err(|e| e.to_string())?;
    let opts = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let df = ctx
        .sql_with_options(query, opts)
        .await
        .map_err(|e| e.to_string())?;
    let batches = df.collect().await.map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    match format {
        "csv" => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut buf);
            for b in &batches {
                w.write(b).map_err(|e| e.to_string())?;
            }
        }
        "json" => {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
            for b in &batches {
                w.write(b).map_err(|e| e.to_string())?;
            }
            w.finish().map_err(|e| e.to_string())?;
        }
        _ => {
            let table =
                arrow::util::pretty::pretty_format_batches(&batches).map_err(|e| e.to_string())?;
            buf = format!("{table}\n").into_bytes();
        }
    }
    String::from_utf8(buf).map_err(|e| e.to_string())
}
