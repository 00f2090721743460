//! Evaluation of a recommender on held-out conversations — one implementation for `convrec eval`,
//! the demo and the browser page, so their numbers agree by construction. Each unique prompt is
//! answered once, greedily, in batches; every row is then scored with the paper's metrics
//! (Recall/NDCG@k of the first `rec_num` parsed items against the row's ground truth) plus three
//! format diagnostics: the share of listed items found in the catalog, the share of non-empty lines
//! that parse as `Title (Year)`, the list length, and the share of answers cut at the token
//! budget (an answer cut short scores lower than the model deserves: raise `max_new_tokens`).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::metrics::ranking_metric_names;
use super::{Catalog, Item, KS, MatchConfig, MeanSe, Row, evaluate, mean_se, parse_completion};
use crate::gpu::Gpu;
use crate::model::generate::{GenerateRequest, generate};
use crate::model::gpu::{GpuModel, ModelError};
use crate::model::text::{ChatText, TextError};
use crate::ops::decode::SamplingConfig;
use crate::workers::{Workers, share};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Text(#[from] TextError),
    #[error(transparent)]
    Model(#[from] ModelError),
}

#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Prompts generated together.
    pub batch_size: usize,
    pub max_new_tokens: usize,
    /// Prompts are cut from the left to this many tokens, as in training.
    pub max_prompt_length: usize,
    pub matching: MatchConfig,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self { batch_size: 8, max_new_tokens: 400, max_prompt_length: 1024, matching: MatchConfig::default() }
    }
}

/// The rows' conversations as prompt ids, each distinct prompt once.
pub struct UniquePrompts {
    pub ids: Vec<Vec<u32>>,
    /// For each row, its prompt's index in `ids`.
    pub of_row: Vec<usize>,
}

/// Prompts longer than `max_prompt_length` tokens keep their last tokens (the conversation's
/// end, and the template's assistant header).
pub fn unique_prompts(text: &ChatText, rows: &[Row], max_prompt_length: usize) -> Result<UniquePrompts, TextError> {
    let mut ids: Vec<Vec<u32>> = Vec::new();
    let mut of_row = Vec::with_capacity(rows.len());
    let mut seen: HashMap<Vec<u32>, usize> = HashMap::new();
    for row in rows {
        let mut p = text.prompt_ids(&row.chat_messages())?;
        if p.len() > max_prompt_length.max(1) {
            p.drain(..p.len() - max_prompt_length.max(1));
        }
        let index = *seen.entry(p.clone()).or_insert_with(|| {
            ids.push(p);
            ids.len() - 1
        });
        of_row.push(index);
    }
    Ok(UniquePrompts { ids, of_row })
}

/// Where a running evaluation is: prompts finished, of how many, and the current batch's step.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct EvalProgress {
    pub prompts_done: usize,
    pub prompts: usize,
    pub step: usize,
    pub max_steps: usize,
}

/// A greedy answer: its text (special tokens dropped) and whether the token budget cut it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Answer {
    pub text: String,
    pub cut: bool,
}

/// Greedy completions of every prompt.
pub async fn greedy_completions(
    gpu: &Gpu,
    model: &GpuModel,
    text: &ChatText,
    prompts: &[Vec<u32>],
    options: &EvalOptions,
    mut on_progress: impl FnMut(EvalProgress),
) -> Result<Vec<Answer>, EvalError> {
    let batch = options.batch_size.max(1);
    let mut texts = vec![Answer::default(); prompts.len()];
    for (chunk_index, chunk) in prompts.chunks(batch).enumerate() {
        let done = chunk_index * batch;
        let req = GenerateRequest {
            prompts: chunk.to_vec(),
            num_samples: 1,
            first_sequence: 0,
            max_new_tokens: options.max_new_tokens,
            sampling: SamplingConfig::greedy(),
            stop_ids: text.stop_ids.clone(),
        };
        let out = generate(gpu, model, &req, |step, _| {
            on_progress(EvalProgress {
                prompts_done: done,
                prompts: prompts.len(),
                step,
                max_steps: options.max_new_tokens,
            })
        })
        .await?;
        for c in out {
            texts[done + c.prompt] = Answer { text: text.decode(&c.tokens)?, cut: !c.stopped };
        }
        on_progress(EvalProgress {
            prompts_done: done + chunk.len(),
            prompts: prompts.len(),
            step: 0,
            max_steps: options.max_new_tokens,
        });
    }
    Ok(texts)
}

/// One row's answer and scores.
#[derive(Clone, Debug, Serialize)]
pub struct RowResult {
    pub sample_id: Option<String>,
    pub completion: String,
    pub items: Vec<(String, i64)>,
    /// `recall@k` and `ndcg@k` for each k of [`KS`].
    pub metrics: BTreeMap<String, f64>,
    pub in_catalog: f64,
    pub valid_format: f64,
    /// The answer ran into the token budget (no end-of-turn).
    pub cut: bool,
}

/// Means over rows (with standard errors for the ranking metrics).
#[derive(Clone, Debug)]
pub struct EvalSummary {
    pub rows: usize,
    /// `recall@5`, `ndcg@5`, `recall@10`, … in that order.
    pub metrics: Vec<(String, MeanSe)>,
    pub in_catalog_rate: f64,
    pub valid_format_rate: f64,
    pub mean_list_length: f64,
    pub cut_rate: f64,
}

impl EvalSummary {
    /// The summary as `convrec eval` writes it: `{"recall@5": {"mean", "se"}, …, "rows",
    /// "in_catalog_rate", "valid_format_rate", "mean_list_length", "cut_rate"}`.
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("rows".into(), self.rows.into());
        for (name, v) in &self.metrics {
            m.insert(name.clone(), serde_json::json!({"mean": v.mean, "se": v.se}));
        }
        m.insert("in_catalog_rate".into(), self.in_catalog_rate.into());
        m.insert("valid_format_rate".into(), self.valid_format_rate.into());
        m.insert("mean_list_length".into(), self.mean_list_length.into());
        m.insert("cut_rate".into(), self.cut_rate.into());
        m
    }

    /// The metrics as flat numbers under `prefix` (`val_ndcg@20`, …, `val_cut_rate`): one line of
    /// a training run's metrics JSONL, plottable by name.
    pub fn flat(&self, prefix: &str) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        for (name, v) in &self.metrics {
            m.insert(format!("{prefix}{name}"), v.mean.into());
        }
        for (name, v) in [
            ("in_catalog_rate", self.in_catalog_rate),
            ("valid_format_rate", self.valid_format_rate),
            ("mean_list_length", self.mean_list_length),
            ("cut_rate", self.cut_rate),
        ] {
            m.insert(format!("{prefix}{name}"), v.into());
        }
        m
    }

    pub fn mean(&self, name: &str) -> Option<f64> {
        self.metrics.iter().find(|(n, _)| n == name).map(|(_, v)| v.mean)
    }

    /// The table `convrec eval` prints.
    pub fn table(&self) -> String {
        let mut s = format!("{:<10} {:>8} {:>8}\n", "metric", "mean", "s.e.");
        for (name, v) in &self.metrics {
            s += &format!("{name:<10} {:>8.4} {:>8.4}\n", v.mean, v.se);
        }
        s += &format!(
            "in-catalog {:.3} · valid format {:.3} · mean list length {:.1} · cut at the token budget {:.3} · {} rows",
            self.in_catalog_rate, self.valid_format_rate, self.mean_list_length, self.cut_rate, self.rows
        );
        s
    }
}

/// The summary of per-row columns: one list per ranking metric (named, in `KS` order), then the
/// in-catalog, valid-format, list-length and cut columns.
fn summarize(
    per_metric: &[(String, Vec<f64>)],
    in_catalog: &[f64],
    valid: &[f64],
    lengths: &[f64],
    cut: &[f64],
) -> EvalSummary {
    EvalSummary {
        rows: cut.len(),
        metrics: per_metric.iter().map(|(n, v)| (n.clone(), mean_se(v))).collect(),
        in_catalog_rate: mean_se(in_catalog).mean,
        valid_format_rate: mean_se(valid).mean,
        mean_list_length: mean_se(lengths).mean,
        cut_rate: mean_se(cut).mean,
    }
}

/// Numbers per row in [`row_numbers`].
const ROW_NUMBERS: usize = 2 * KS.len() + 4;

/// What a summary is made of, per row: the ranking metrics in `EvalSummary::metrics` order, then
/// in-catalog, valid-format, list length (items up to `rec_num`) and cut.
fn row_numbers(r: &RowResult, rec_num: usize) -> Vec<f64> {
    let ranking = ranking_metric_names().into_iter().map(|n| r.metrics[&n]);
    let tail = [r.in_catalog, r.valid_format, r.items.len().min(rec_num) as f64, r.cut as u8 as f64];
    ranking.chain(tail).collect()
}

/// [`evaluate_rows`] shared by data-parallel `workers`: each answers its share of `rows`, the
/// per-row scores are summed into one table (each row's numbers come from exactly one worker, so
/// the sum is exact), and every worker gets the summary of all rows — the one a single worker
/// answering every row computes.
pub async fn evaluate_rows_shared(
    gpu: &Gpu,
    model: &GpuModel,
    text: &ChatText,
    rows: &[Row],
    catalog: &Catalog,
    options: &EvalOptions,
    workers: &dyn Workers,
) -> Result<EvalSummary, EvalError> {
    let width = ROW_NUMBERS;
    let mine = share(rows.len(), workers.rank(), workers.count());
    let mut table = vec![0f64; rows.len() * width];
    if !mine.is_empty() {
        let eval = evaluate_rows(gpu, model, text, &rows[mine.clone()], catalog, options, |_| {}).await?;
        for (i, r) in eval.rows.iter().enumerate() {
            let at = (mine.start + i) * width;
            table[at..at + width].copy_from_slice(&row_numbers(r, options.matching.rec_num));
        }
    }
    workers.sum_f64(&mut table);
    Ok(summary_of_numbers(&table))
}

/// The summary of a table of [`row_numbers`], one row after another.
fn summary_of_numbers(table: &[f64]) -> EvalSummary {
    let ranking = 2 * KS.len();
    let column = |c: usize| -> Vec<f64> { table.chunks(ROW_NUMBERS).map(|row| row[c]).collect() };
    let per_metric: Vec<(String, Vec<f64>)> =
        ranking_metric_names().into_iter().enumerate().map(|(c, name)| (name, column(c))).collect();
    summarize(&per_metric, &column(ranking), &column(ranking + 1), &column(ranking + 2), &column(ranking + 3))
}

/// Scores every row's answer.
pub fn score_rows(
    rows: &[Row],
    completions: &[&Answer],
    catalog: &Catalog,
    matching: &MatchConfig,
) -> (Vec<RowResult>, EvalSummary) {
    assert_eq!(rows.len(), completions.len(), "one completion per row");
    let mut per_metric: Vec<(String, Vec<f64>)> = ranking_metric_names().into_iter().map(|n| (n, Vec::new())).collect();
    let (mut lengths, mut in_catalog, mut valid, mut cut) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut results = Vec::with_capacity(rows.len());
    for (row, answer) in rows.iter().zip(completions) {
        let text = answer.text.as_str();
        let items = parse_completion(text);
        let first: Vec<&Item> = items.iter().take(matching.rec_num).collect();
        let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
        let row_in_catalog = if first.is_empty() {
            0.0
        } else {
            first.iter().filter(|i| catalog.contains(&i.title, i.year)).count() as f64 / first.len() as f64
        };
        let row_valid = if lines == 0 { 0.0 } else { items.len().min(lines) as f64 / lines as f64 };
        lengths.push(first.len() as f64);
        in_catalog.push(row_in_catalog);
        valid.push(row_valid);
        cut.push(answer.cut as u8 as f64);
        let m = evaluate(&items, &row.groundtruth, &row.seen_titles, catalog, matching);
        let named = m.named();
        for ((name, values), (n, v)) in per_metric.iter_mut().zip(&named) {
            debug_assert_eq!(name, n);
            values.push(*v);
        }
        results.push(RowResult {
            sample_id: row.sample_id.clone(),
            completion: text.to_string(),
            items: items.iter().map(|i| (i.title.clone(), i.year)).collect(),
            metrics: named.into_iter().collect(),
            in_catalog: row_in_catalog,
            valid_format: row_valid,
            cut: answer.cut,
        });
    }
    let summary = summarize(&per_metric, &in_catalog, &valid, &lengths, &cut);
    (results, summary)
}

pub struct Evaluation {
    pub rows: Vec<RowResult>,
    pub summary: EvalSummary,
}

/// Answers every row's conversation greedily with `model` and scores the answers.
pub async fn evaluate_rows(
    gpu: &Gpu,
    model: &GpuModel,
    text: &ChatText,
    rows: &[Row],
    catalog: &Catalog,
    options: &EvalOptions,
    on_progress: impl FnMut(EvalProgress),
) -> Result<Evaluation, EvalError> {
    let prompts = unique_prompts(text, rows, options.max_prompt_length)?;
    let texts = greedy_completions(gpu, model, text, &prompts.ids, options, on_progress).await?;
    let per_row: Vec<&Answer> = prompts.of_row.iter().map(|&p| &texts[p]).collect();
    let (rows, summary) = score_rows(rows, &per_row, catalog, &options.matching);
    Ok(Evaluation { rows, summary })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rec::{GroundTruth, Message as RowMessage};

    fn row(id: &str, truth: &[(&str, &str)]) -> Row {
        Row {
            sample_id: Some(id.into()),
            prompt: vec![RowMessage { role: "user".into(), content: "a movie like Alien?".into() }],
            completion: None,
            seen_titles: vec![],
            groundtruth: truth.iter().map(|(t, y)| GroundTruth::new(*t, *y)).collect(),
        }
    }

    /// A very long conversation is cut from the left to `max_prompt_length` tokens, keeping the
    /// template's assistant header at its end, the way SFT and RL cut prompts (was: the whole 50 MB
    /// conversation went to the GPU and failed on the RoPE table).
    #[test]
    fn long_prompts_keep_their_last_tokens() {
        let text = crate::testing::byte_level_chat_text();
        let mut long = row("long", &[]);
        long.prompt[0].content = "a movie like Alien? ".repeat(5000);
        let rows = [row("short", &[]), long];
        let full = unique_prompts(&text, &rows, usize::MAX).unwrap();
        let cut = unique_prompts(&text, &rows, 64).unwrap();
        assert!(full.ids[1].len() > 100_000);
        assert_eq!(cut.ids[0], full.ids[0], "a prompt within the limit is untouched");
        assert_eq!(cut.ids[1].len(), 64);
        assert_eq!(cut.ids[1][..], full.ids[1][full.ids[1].len() - 64..], "the last tokens are kept");
        assert_eq!(cut.of_row, full.of_row);
    }

    #[test]
    fn scores_rows_by_hand_computed_cases() {
        let mut catalog = Catalog::new();
        catalog.insert("Aliens", 1986);
        catalog.insert("The Thing", 1982);
        let rows = [row("a", &[("The Thing", "1982")]), row("b", &[("Heat", "1995")]), row("c", &[])];
        // Row a: hit at rank 2, one item outside the catalog, one line that is not an item.
        // Row b: no hit. Row c: empty answer.
        let texts = ["Aliens (1986)\nThe Thing (1982)\nNotAMovie (2001)\nhello", "Aliens (1986)", ""];
        let answers: Vec<Answer> =
            texts.iter().enumerate().map(|(i, t)| Answer { text: t.to_string(), cut: i == 0 }).collect();
        let (results, s) = score_rows(&rows, &answers.iter().collect::<Vec<_>>(), &catalog, &MatchConfig::default());
        assert_eq!(results[0].items.len(), 3);
        let ndcg_a = (1.0 / 3f64.log2()) / 1.0;
        assert!((results[0].metrics["ndcg@5"] - ndcg_a).abs() < 1e-12);
        assert_eq!(results[0].metrics["recall@5"], 1.0);
        assert!((results[0].in_catalog - 2.0 / 3.0).abs() < 1e-12);
        assert!((results[0].valid_format - 0.75).abs() < 1e-12);
        assert_eq!(results[1].metrics["recall@20"], 0.0);
        assert_eq!((results[2].in_catalog, results[2].valid_format), (0.0, 0.0));
        assert_eq!(s.rows, 3);
        assert!((s.mean("ndcg@5").unwrap() - ndcg_a / 3.0).abs() < 1e-12);
        assert!((s.mean("recall@20").unwrap() - 1.0 / 3.0).abs() < 1e-12);
        assert!((s.mean_list_length - 4.0 / 3.0).abs() < 1e-12);
        assert!(results[0].cut && !results[1].cut);
        assert!((s.cut_rate - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.flat("val_")["val_cut_rate"], s.cut_rate);
        assert_eq!(s.flat("val_")["val_ndcg@5"], s.mean("ndcg@5").unwrap());
        let json = s.to_json();
        assert_eq!(json["rows"], 3);
        assert!(json["ndcg@20"]["se"].as_f64().unwrap() > 0.0);
        assert_eq!(s.metrics.iter().map(|(n, _)| n.as_str()).take(2).collect::<Vec<_>>(), ["recall@5", "ndcg@5"]);

        // What data-parallel workers exchange per row gives back the same summary.
        let table: Vec<f64> = results.iter().flat_map(|r| row_numbers(r, MatchConfig::default().rec_num)).collect();
        assert_eq!(format!("{:?}", summary_of_numbers(&table)), format!("{s:?}"));
    }

    /// Validation shared by three workers (threads; one idle when there are two rows): the summary
    /// every worker gets is the one a single worker answering every row computes.
    #[test]
    fn workers_sharing_the_rows_get_the_summary_of_all_rows() {
        use crate::workers::LocalWorker;
        let Some(gpu) = crate::testing::gpu() else { return };
        let mut rng = crate::testing::rng("shared evaluation");
        let text = crate::testing::byte_level_chat_text();
        let mut config = crate::testing::tiny_config(crate::model::Architecture::Llama, true);
        config.vocab_size = 320; // the byte-level tokenizer's
        let tensors = crate::testing::random_tensors(&config, &mut rng);
        let model = GpuModel::upload(&gpu, config.clone(), tensors, 96).unwrap();
        let mut catalog = Catalog::new();
        catalog.insert("Aliens", 1986);
        let options =
            EvalOptions { max_new_tokens: 12, max_prompt_length: 48, batch_size: 2, ..EvalOptions::default() };
        for n in [2usize, 5] {
            let rows: Vec<Row> = (0..n).map(|i| row(&format!("r{i}"), &[("Aliens", "1986")])).collect();
            let rows: Vec<Row> = rows
                .into_iter()
                .enumerate()
                .map(|(i, mut r)| {
                    r.prompt[0].content = format!("movie number {i} like Alien?");
                    r
                })
                .collect();
            let alone = pollster::block_on(evaluate_rows(&gpu, &model, &text, &rows, &catalog, &options, |_| {}));
            let alone = format!("{:?}", alone.unwrap().summary);
            let shared: Vec<String> = std::thread::scope(|s| {
                let handles: Vec<_> = LocalWorker::group(3)
                    .into_iter()
                    .map(|w| {
                        let (gpu, model, text, rows, catalog, options) =
                            (&gpu, &model, &text, &rows, &catalog, &options);
                        s.spawn(move || {
                            let summary = evaluate_rows_shared(gpu, model, text, rows, catalog, options, &w);
                            format!("{:?}", pollster::block_on(summary).unwrap())
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for summary in &shared {
                assert_eq!(summary, &alone, "{n} rows over 3 workers");
            }
        }
    }
}
