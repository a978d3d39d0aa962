//! Unit tests of the stage chain.

use std::sync::Arc;

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};

use super::*;

fn batch(ids: &[&str], n: &[i64]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("n", DataType::Int64, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(ids.to_vec())),
            Arc::new(Int64Array::from(n.to_vec())),
        ],
    )
    .unwrap()
}

fn stages(list: &[(&str, &str)]) -> Vec<Stage> {
    list.iter()
        .map(|(n, s)| Stage {
            name: n.to_string(),
            sql: s.to_string(),
        })
        .collect()
}

#[tokio::test]
async fn chain_reads_input_and_earlier_stages() {
    let b = batch(&["a", "b", "c"], &[1, 2, 3]);
    let t = Transform::new(
        stages(&[
            ("big", "SELECT id, n * 10 AS m FROM input WHERE n > 1"),
            ("sum", "SELECT sum(m) AS s FROM big"),
        ]),
        b.schema(),
    );
    let out = t.run(b.clone()).await.unwrap();
    assert_eq!(out.get("big").unwrap().num_rows(), 2);
    let s = out
        .get("sum")
        .unwrap()
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0);
    assert_eq!(s, 50);
    // a second batch sees only its own rows
    let out = t.run(batch(&["z"], &[7])).await.unwrap();
    assert_eq!(out.get("big").unwrap().num_rows(), 1);
}

#[tokio::test]
async fn plan_names_stage_and_column() {
    let b = batch(&["a"], &[1]);
    let t = Transform::new(
        stages(&[
            ("ok", "SELECT id FROM input"),
            ("bad", "SELECT nope FROM ok"),
            ("ddl", "DROP TABLE input"),
        ]),
        b.schema(),
    );
    let planned = t.plan().await;
    assert!(planned[0].1.is_ok());
    let err = planned[1].1.as_ref().unwrap_err().to_string();
    assert!(err.contains("stage `bad`") && err.contains("nope"), "{err}");
    assert!(planned[2].1.is_err());
}

#[tokio::test]
async fn failing_rows_are_isolated() {
    let b = batch(&["1", "2", "x", "4", "y"], &[1, 2, 3, 4, 5]);
    let t = Transform::new(
        stages(&[("cast", "SELECT CAST(id AS BIGINT) AS v FROM input")]),
        b.schema(),
    );
    assert!(matches!(
        t.run(b.clone()).await,
        Err(TransformError::Execute { .. })
    ));
    let (out, failed) = t.run_isolating(b).await.unwrap();
    let rows: Vec<usize> = failed.iter().map(|f| f.row).collect();
    assert_eq!(rows, vec![2, 4]);
    let v = out
        .get("cast")
        .unwrap()
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .values()
        .to_vec();
    assert_eq!(v, vec![1, 2, 4]);
}
