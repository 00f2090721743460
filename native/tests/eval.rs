//! `convrec eval` end to end on the tiny fixture model: every row gets a prediction, rows that
//! share a conversation share one answer, the items are the parser's, and the summary is the mean
//! of the per-row metrics it writes beside it.

mod common;

use common::*;
use convrec_core::rec::parse_completion;

#[test]
fn eval_writes_predictions_whose_means_are_the_summary() {
    if convrec_core::testing::gpu().is_none() {
        return;
    }
    let dir = scratch("eval", "summary");
    let model = tiny_model(&dir);
    let (data, catalog, out) = (dir.join("rows.jsonl"), dir.join("catalog.tsv"), dir.join("out"));
    // More rows than catalog titles: the conversations repeat, so prompts are shared.
    write_dataset(&data, 8);
    write_catalog(&catalog);
    run_ok(
        convrec()
            .arg("eval")
            .arg("--model")
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .arg("--catalog")
            .arg(&catalog)
            .args(["--limit", "7", "--batch-size", "4", "--max-new-tokens", "12", "--out"])
            .arg(&out),
    );
    let predictions = jsonl(&out.join("predictions.jsonl"));
    assert_eq!(predictions.len(), 7, "--limit 7");
    let mut shared = 0;
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["rows"], 7);
    for name in ["recall@5", "ndcg@5", "recall@20", "ndcg@20"] {
        let mean = predictions.iter().map(|p| p["metrics"][name].as_f64().unwrap()).sum::<f64>() / 7.0;
        assert!((summary[name]["mean"].as_f64().unwrap() - mean).abs() < 1e-12, "{name}");
    }
    let in_catalog = predictions.iter().map(|p| p["in_catalog"].as_f64().unwrap()).sum::<f64>() / 7.0;
    assert!((summary["in_catalog_rate"].as_f64().unwrap() - in_catalog).abs() < 1e-12);
    let rows: Vec<serde_json::Value> = jsonl(&data);
    for (i, p) in predictions.iter().enumerate() {
        assert_eq!(p["sample_id"], rows[i]["sample_id"]);
        let text = p["completion"].as_str().unwrap();
        let items: Vec<serde_json::Value> =
            parse_completion(text).iter().map(|it| serde_json::json!([it.title, it.year])).collect();
        assert_eq!(p["items"], serde_json::Value::Array(items), "row {i}");
        // Same conversation, same greedy answer (generated once).
        for (j, q) in predictions.iter().enumerate().skip(i + 1) {
            if rows[j]["prompt"] == rows[i]["prompt"] {
                assert_eq!(q["completion"], p["completion"], "rows {i} and {j} share a prompt");
                shared += 1;
            }
        }
    }
    assert!(shared > 0, "the data set repeats a conversation");
}
