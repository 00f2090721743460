//! Paired comparison of evaluations that scored the same rows. Two adapters evaluated on the same
//! held-out conversations differ far less than their independent standard errors suggest — most
//! of a metric's spread is between conversations, not between adapters — so the per-row
//! differences are what tell them apart: their mean, its standard error (sample standard
//! deviation of the differences / √n), a 95% Student-t interval and a two-sided paired t-test.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};

use super::InputError;

/// The per-row metrics that are compared, in report order.
pub fn compared_metrics() -> Vec<String> {
    let mut names = super::metrics::ranking_metric_names();
    names.extend(["in_catalog", "valid_format"].map(String::from));
    names
}

/// One evaluated row: its id and metric values by name.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoredRow {
    pub sample_id: String,
    pub metrics: BTreeMap<String, f64>,
}

/// One evaluation run: a label and its rows.
#[derive(Clone, Debug)]
pub struct Run {
    pub label: String,
    pub rows: Vec<ScoredRow>,
}

/// A metric of `run` against `base` over the `n` rows both scored.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Paired {
    pub metric: String,
    pub base: String,
    pub run: String,
    pub n: usize,
    pub base_mean: f64,
    pub run_mean: f64,
    /// Mean of (run − base) per row.
    pub diff: f64,
    pub se: f64,
    pub ci95: [f64; 2],
    /// Two-sided p-value of the paired t-test (1 when every difference is 0).
    pub p: f64,
    /// Rows where the run scored higher / lower than the base.
    pub wins: usize,
    pub losses: usize,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CompareError {
    #[error("{run}: row {index} has no sample_id (pairing matches rows by it)")]
    NoId { run: String, index: usize },
    #[error("{run}: sample_id {id} appears twice")]
    Duplicate { run: String, id: String },
    #[error(
        "{run} and {base} scored different rows: {missing} of {base}'s are not in {run} (e.g. {example_missing}), \
         {extra} of {run}'s are not in {base}; evaluate both on the same rows"
    )]
    DifferentRows { base: String, run: String, missing: usize, extra: usize, example_missing: String },
    #[error("{run}: row {id} has no {metric}")]
    MissingMetric { run: String, id: String, metric: String },
    #[error("{0}: no rows")]
    Empty(String),
    #[error("a comparison needs at least two runs")]
    TooFew,
}

/// The rows of an evaluation's `predictions.jsonl` (as `convrec eval` writes them: `sample_id`,
/// `metrics` {name: value}, `in_catalog`, `valid_format`, …). `origin` names the file in errors.
pub fn parse_predictions(origin: &str, text: &str) -> Result<Vec<ScoredRow>, InputError> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| InputError::json(origin, i + 1, &e))?;
        let sample_id = match &v["sample_id"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => return Err(InputError::new(origin, i + 1, "no `sample_id` (pairing matches rows by it)")),
        };
        let (Some(named), Some(object)) = (v["metrics"].as_object(), v.as_object()) else {
            return Err(InputError::new(origin, i + 1, "no `metrics` object"));
        };
        let diagnostics = ["in_catalog", "valid_format"].into_iter().filter_map(|k| object.get_key_value(k));
        let mut metrics = BTreeMap::new();
        for (name, value) in named.iter().chain(diagnostics) {
            let x =
                value.as_f64().ok_or_else(|| InputError::new(origin, i + 1, format!("`{name}` is not a number")))?;
            metrics.insert(name.clone(), x);
        }
        rows.push(ScoredRow { sample_id, metrics });
    }
    Ok(rows)
}

/// Checks ids and indexes a run's rows by id.
fn index(run: &Run) -> Result<HashMap<&str, &ScoredRow>, CompareError> {
    if run.rows.is_empty() {
        return Err(CompareError::Empty(run.label.clone()));
    }
    let mut by_id = HashMap::with_capacity(run.rows.len());
    for row in &run.rows {
        if by_id.insert(row.sample_id.as_str(), row).is_some() {
            return Err(CompareError::Duplicate { run: run.label.clone(), id: row.sample_id.clone() });
        }
    }
    Ok(by_id)
}

/// Mean, standard error of the mean, and the 95% Student-t half-width of `d`.
fn mean_se_half(d: &[f64]) -> (f64, f64, f64) {
    let n = d.len() as f64;
    let mean = d.iter().sum::<f64>() / n;
    if d.len() < 2 {
        return (mean, f64::NAN, f64::NAN);
    }
    let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let se = (var / n).sqrt();
    let t = StudentsT::new(0.0, 1.0, n - 1.0).expect("n ≥ 2 degrees of freedom").inverse_cdf(0.975);
    (mean, se, t * se)
}

/// Two-sided p-value of mean(d) = 0 under the paired t-test.
fn p_value(mean: f64, se: f64, n: usize) -> f64 {
    if n < 2 || se.is_nan() {
        return f64::NAN;
    }
    if se == 0.0 {
        return if mean == 0.0 { 1.0 } else { 0.0 };
    }
    let t = StudentsT::new(0.0, 1.0, (n - 1) as f64).expect("n ≥ 2 degrees of freedom");
    2.0 * (1.0 - t.cdf((mean / se).abs()))
}

/// Every later run against the first, for each of `metrics`, over rows matched by `sample_id`.
pub fn compare(runs: &[Run], metrics: &[String]) -> Result<Vec<Paired>, CompareError> {
    let (base, others) = runs.split_first().ok_or(CompareError::TooFew)?;
    if others.is_empty() {
        return Err(CompareError::TooFew);
    }
    let base_rows = index(base)?;
    let mut out = Vec::new();
    for run in others {
        let rows = index(run)?;
        let missing: Vec<&str> = base_rows.keys().filter(|id| !rows.contains_key(*id)).copied().collect();
        let extra = rows.keys().filter(|id| !base_rows.contains_key(*id)).count();
        if !missing.is_empty() || extra > 0 {
            let mut example: Vec<&str> = missing.clone();
            example.sort_unstable();
            return Err(CompareError::DifferentRows {
                base: base.label.clone(),
                run: run.label.clone(),
                missing: missing.len(),
                extra,
                example_missing: example.first().copied().unwrap_or("none").to_string(),
            });
        }
        for metric in metrics {
            let value = |label: &str, row: &ScoredRow| {
                row.metrics.get(metric).copied().ok_or_else(|| CompareError::MissingMetric {
                    run: label.to_string(),
                    id: row.sample_id.clone(),
                    metric: metric.clone(),
                })
            };
            let (mut b, mut r) = (Vec::with_capacity(base.rows.len()), Vec::with_capacity(base.rows.len()));
            for row in &base.rows {
                b.push(value(&base.label, row)?);
                r.push(value(&run.label, rows[row.sample_id.as_str()])?);
            }
            let d: Vec<f64> = r.iter().zip(&b).map(|(x, y)| x - y).collect();
            let (diff, se, half) = mean_se_half(&d);
            let n = d.len();
            out.push(Paired {
                metric: metric.clone(),
                base: base.label.clone(),
                run: run.label.clone(),
                n,
                base_mean: b.iter().sum::<f64>() / n as f64,
                run_mean: r.iter().sum::<f64>() / n as f64,
                diff,
                se,
                ci95: [diff - half, diff + half],
                p: p_value(diff, se, n),
                wins: d.iter().filter(|&&x| x > 0.0).count(),
                losses: d.iter().filter(|&&x| x < 0.0).count(),
            });
        }
    }
    Ok(out)
}

/// The comparison as a markdown table: per metric, each run's mean and its paired difference
/// from the first run with the 95% interval.
pub fn markdown_table(pairs: &[Paired]) -> String {
    let Some(first) = pairs.first() else { return String::new() };
    let runs: Vec<&str> = {
        let mut v: Vec<&str> = Vec::new();
        for p in pairs {
            if !v.contains(&p.run.as_str()) {
                v.push(&p.run);
            }
        }
        v
    };
    let mut s = format!("| metric (n = {}) | {} |", first.n, first.base);
    for r in &runs {
        s += &format!(" {r} | {r} − {} (95% CI) |", first.base);
    }
    s += "\n|---|---:|";
    s += &"---:|---|".repeat(runs.len());
    s += "\n";
    let mut metrics: Vec<&str> = Vec::new();
    for p in pairs {
        if !metrics.contains(&p.metric.as_str()) {
            metrics.push(&p.metric);
        }
    }
    for m in metrics {
        let row: Vec<&Paired> = pairs.iter().filter(|p| p.metric == m).collect();
        s += &format!("| {m} | {:.4} |", row[0].base_mean);
        for p in row {
            s += &format!(" {:.4} | {:+.4} [{:+.4}, {:+.4}] |", p.run_mean, p.diff, p.ci95[0], p.ci95[1]);
        }
        s += "\n";
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(label: &str, rows: &[(&str, f64)]) -> Run {
        Run {
            label: label.into(),
            rows: rows
                .iter()
                .map(|(id, v)| ScoredRow { sample_id: id.to_string(), metrics: [("ndcg@20".to_string(), *v)].into() })
                .collect(),
        }
    }

    #[test]
    fn paired_statistics_match_a_hand_computation() {
        // Differences (b − a) per row, matched by id whatever the order: 0.1, 0.3, −0.1, 0.1.
        let a = run("a", &[("r1", 0.2), ("r2", 0.5), ("r3", 0.4), ("r4", 0.0)]);
        let b = run("b", &[("r4", 0.1), ("r3", 0.3), ("r2", 0.8), ("r1", 0.3)]);
        let out = compare(&[a, b], &["ndcg@20".to_string()]).unwrap();
        let p = &out[0];
        assert_eq!((p.n, p.base.as_str(), p.run.as_str(), p.wins, p.losses), (4, "a", "b", 3, 1));
        assert!((p.diff - 0.1).abs() < 1e-12);
        // Sample variance of (0.1, 0.3, −0.1, 0.1): deviations 0, .2, −.2, 0 → 0.08 / 3.
        let se = (0.08f64 / 3.0 / 4.0).sqrt();
        assert!((p.se - se).abs() < 1e-12);
        // t(0.975, 3 df) = 3.182446.
        assert!((p.ci95[1] - (0.1 + 3.182446 * se)).abs() < 1e-5, "{:?}", p.ci95);
        assert!((p.base_mean - 0.275).abs() < 1e-12 && (p.run_mean - 0.375).abs() < 1e-12);
        // t = 0.1 / 0.0816 = 1.2247 with 3 df: two-sided p ≈ 0.3081.
        assert!((p.p - 0.3081).abs() < 1e-3, "p {}", p.p);
        let table = markdown_table(&out);
        assert!(table.contains("| ndcg@20 | 0.2750 | 0.3750 | +0.1000 ["), "{table}");
    }

    #[test]
    fn differing_row_sets_ids_and_metrics_are_refused() {
        let a = run("a", &[("r1", 0.2), ("r2", 0.5)]);
        let err = compare(&[a.clone(), run("b", &[("r1", 0.2), ("r3", 0.5)])], &["ndcg@20".into()]).unwrap_err();
        assert!(err.to_string().contains("r2") && err.to_string().contains("different rows"), "{err}");
        let err = compare(&[a.clone(), run("b", &[("r1", 0.2), ("r1", 0.5)])], &["ndcg@20".into()]).unwrap_err();
        assert!(matches!(err, CompareError::Duplicate { .. }), "{err}");
        let err = compare(&[a.clone(), a.clone()], &["recall@5".into()]).unwrap_err();
        assert!(err.to_string().contains("no recall@5"), "{err}");
        assert_eq!(compare(std::slice::from_ref(&a), &[]).unwrap_err(), CompareError::TooFew);
    }

    #[test]
    fn predictions_files_are_read_with_their_line_numbers_in_errors() {
        let text = r#"{"sample_id": "a", "metrics": {"ndcg@20": 0.5}, "in_catalog": 1.0, "valid_format": 0.9}

{"sample_id": 7, "metrics": {"ndcg@20": 0.0}, "in_catalog": 0.5, "valid_format": 1.0}"#;
        let rows = parse_predictions("p.jsonl", text).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].sample_id, "7");
        assert_eq!(rows[0].metrics["valid_format"], 0.9);
        let err = parse_predictions("p.jsonl", "{\"metrics\": {}}\n{\"sample_id\": \"x\"}").unwrap_err();
        assert_eq!(err.to_string(), "p.jsonl: line 1: no `sample_id` (pairing matches rows by it)");
        let err = parse_predictions("p.jsonl", "{\"sample_id\": \"x\", \"metrics\": {\"n\": \"1\"}}").unwrap_err();
        assert!(err.to_string().contains("`n` is not a number"), "{err}");
    }

    #[test]
    fn identical_runs_differ_by_zero_with_p_one() {
        let a = run("a", &[("r1", 0.2), ("r2", 0.5), ("r3", 0.1)]);
        let p = &compare(&[a.clone(), Run { label: "same".into(), ..a }], &["ndcg@20".into()]).unwrap()[0];
        assert_eq!((p.diff, p.se, p.p, p.wins, p.losses), (0.0, 0.0, 1.0, 0, 0));
    }
}
