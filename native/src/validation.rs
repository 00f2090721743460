//! Validation over training, shared by `sft` and `train`: every N steps (and at the start and the
//! end) the current adapter answers held-out conversations greedily and is scored with the same
//! code as `convrec eval` (`rec::evaluation`). The metrics go into the run's `metrics.jsonl` as
//! flat `val_…` numbers (so `convrec plot --metrics val_ndcg@20` draws the curve) and the adapter
//! is kept in `adapters/step-N/`, so any point of the curve can be evaluated again or compared.

use std::path::Path;

use convrec_core::Gpu;
use convrec_core::model::gpu::GpuModel;
use convrec_core::model::text::ChatText;
use convrec_core::rec::evaluation::{EvalOptions, EvalSummary, evaluate_rows_shared, unique_prompts};
use convrec_core::rec::{Catalog, Row};
use convrec_core::train::lora::LoraLayout;
use convrec_core::workers::Workers;

use crate::run_dir::RunDir;

pub struct Validation {
    pub rows: Vec<Row>,
    pub catalog: Catalog,
    /// Validate every this many steps (0: only at the start and the end).
    pub every: u64,
    pub options: EvalOptions,
}

impl Validation {
    /// The first `limit` rows of `data`, scored against `catalog`.
    pub fn load(
        data: &Path,
        catalog: Catalog,
        limit: Option<usize>,
        every: u64,
        options: EvalOptions,
    ) -> anyhow::Result<Self> {
        Ok(Validation { rows: crate::datasets::read_rows(data, limit)?, catalog, every, options })
    }

    /// Tokens the longest validation prompt takes (positions the model must hold).
    pub fn longest_prompt(&self, text: &ChatText) -> anyhow::Result<usize> {
        let prompts = unique_prompts(text, &self.rows, self.options.max_prompt_length)?;
        Ok(prompts.ids.iter().map(Vec::len).max().unwrap_or(0))
    }

    /// True at the steps to validate: 0, every `every`-th, and the last.
    pub fn due(&self, step: u64, last: u64) -> bool {
        step == 0 || step == last || (self.every > 0 && step.is_multiple_of(self.every))
    }

    /// Evaluates `model` (the adapter merged in) with the run's `workers` (each answers its share
    /// of the rows; every worker gets the summary); worker 0 — the one holding `run` — logs the
    /// `val_…` metrics for `step` and keeps the adapter (`params` in `layout`) in the run's series.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        gpu: &Gpu,
        model: &GpuModel,
        text: &ChatText,
        step: u64,
        workers: &dyn Workers,
        run: Option<&mut RunDir>,
        layout: &LoraLayout,
        params: &[f32],
        base_name: &str,
    ) -> anyhow::Result<EvalSummary> {
        let summary = pollster::block_on(evaluate_rows_shared(
            gpu,
            model,
            text,
            &self.rows,
            &self.catalog,
            &self.options,
            workers,
        ))?;
        if let Some(run) = run {
            let mut record = serde_json::Map::new();
            record.insert("step".into(), step.into());
            record.extend(summary.flat("val_"));
            run.log(&serde_json::Value::Object(record))?;
            crate::adapter_files::save_adapter(&run.adapter_at(step), layout, params, base_name)?;
        }
        Ok(summary)
    }
}

/// One line for the progress output.
pub fn describe(step: u64, s: &EvalSummary) -> String {
    format!(
        "validation at step {step}: NDCG@20 {:.4} · Recall@20 {:.4} · in-catalog {:.3} · cut {:.3} ({} rows)",
        s.mean("ndcg@20").unwrap_or(0.0),
        s.mean("recall@20").unwrap_or(0.0),
        s.in_catalog_rate,
        s.cut_rate,
        s.rows
    )
}
