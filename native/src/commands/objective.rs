//! `convrec objective`: the Rank-GRPO / GRPO / GSPO objective on its own (RANK_GRPO.md §5–7), one
//! group of completions per JSONL line: segmentation of the decoded tokens, group-relative
//! advantages with their shaping, then the clipped loss (token-mean, "bnpo") and its gradient with
//! respect to every token's log-prob from the GPU kernel, cross-checked against the CPU reference.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use convrec_core::GpuOptions;
use convrec_core::model::gguf::GgufFile;
use convrec_core::model::tokenizer::{decode, from_gguf, from_hf_files};
use convrec_core::rec::InputError;
use convrec_core::rl::advantage::{Level, Segmented, token_advantages};
use convrec_core::rl::objective::{GroupTokens, MAX_REC_NUM, Objective, ObjectiveConfig, loss_ref};
use convrec_core::rl::segment::{completion_len, item_ids};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

#[derive(clap::Args)]
pub struct Args {
    /// The tokenizer that decodes the token ids (segmentation counts the newlines of each token's
    /// text): a `tokenizer.json`, a GGUF file or a Hugging Face model folder.
    #[arg(long)]
    tokenizer: PathBuf,
    /// JSONL, one group per line: `level` ("item", "token" or "sequence"), `eps_low`, `eps_high`,
    /// `beta`, `rec_num`, `eos_id`, `rewards` (rec_num per-rank rewards per completion; "token"
    /// and "sequence" use the first as the sequence reward) and `completions` (`token_ids`
    /// through the end token or cut without it, with `logp`, `old_logp`, `ref_logp` per token).
    #[arg(long)]
    input: PathBuf,
    /// Write the output lines to this file (atomically) instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One input line.
#[derive(Deserialize)]
struct GroupLine {
    level: Level,
    eps_low: f32,
    eps_high: f32,
    beta: f32,
    rec_num: usize,
    eos_id: u32,
    rewards: Vec<Vec<f64>>,
    completions: Vec<CompletionLine>,
}

#[derive(Deserialize)]
struct CompletionLine {
    token_ids: Vec<u32>,
    logp: Vec<f32>,
    old_logp: Vec<f32>,
    ref_logp: Vec<f32>,
}

/// One output line.
#[derive(Serialize)]
struct Output {
    advantages: Vec<Vec<f32>>,
    loss: f64,
    grad_logp: Vec<Vec<f32>>,
}

/// A checked line, ready for the kernel.
struct Group {
    line: usize,
    cfg: ObjectiveConfig,
    tokens: GroupTokens,
}

/// Above this many token pairs the O(length²) CPU reference of the "item" level is skipped.
const REFERENCE_BUDGET: usize = 50_000_000;

pub fn run(gpu_options: &GpuOptions, args: Args) -> anyhow::Result<()> {
    let tokenizer = load_tokenizer(&args.tokenizer)?;
    let source = args.input.display().to_string();
    let text = convrec::read_text(&args.input)?;
    // Every line is checked before the GPU opens, so a bad line fails fast and writes nothing.
    let groups = parse_groups(&source, &text, &tokenizer)?;

    let gpu = super::open_gpu(gpu_options)?;
    let objective = pollster::block_on(Objective::new(&gpu)).context("building the objective kernel")?;
    let mut out = String::new();
    let (mut checked, mut worst) = (0usize, 0.0f64);
    for g in &groups {
        let result = pollster::block_on(objective.run(&gpu, &g.cfg, &g.tokens))
            .with_context(|| format!("{source}: line {}: the objective on the GPU", g.line))?;
        if let Some(want) = reference_loss(g) {
            // f32 on the GPU against f64 on the CPU: agreement to ~1e-6 relative is typical.
            let diff = (result.loss - want).abs();
            if diff.is_nan() || diff > 1e-4 * (1.0 + want.abs()) {
                eprintln!(
                    "convrec objective: warning: {source}: line {}: GPU loss {} but the CPU reference gives {want}",
                    g.line, result.loss
                );
            }
            checked += 1;
            worst = worst.max(diff);
        }
        let line = Output {
            advantages: g.tokens.split(&g.tokens.advantages),
            loss: result.loss,
            grad_logp: g.tokens.split(&result.grad),
        };
        out.push_str(&serde_json::to_string(&line)?);
        out.push('\n');
    }

    match &args.out {
        Some(path) => convrec::fetch::write_atomic(path, out.as_bytes())?,
        None => match io::stdout().lock().write_all(out.as_bytes()) {
            // The reader went away (`| head`): not an error.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            other => other.context("writing to stdout")?,
        },
    }
    eprintln!(
        "convrec objective: {} groups; GPU loss checked against the CPU reference on {checked} (largest difference {worst:.1e})",
        groups.len()
    );
    Ok(())
}

/// The CPU reference loss of a group (f64), or `None` when it would be slow.
fn reference_loss(g: &Group) -> Option<f64> {
    let cost: usize = g.tokens.spans.iter().map(|&(_, l)| if g.cfg.level == Level::Item { l * l } else { l }).sum();
    (cost <= REFERENCE_BUDGET).then(|| {
        let logp: Vec<f64> = g.tokens.logp.iter().map(|&x| x as f64).collect();
        loss_ref(&g.cfg, &g.tokens, &logp)
    })
}

/// The tokenizer of a Hugging Face model folder (its `tokenizer.json`), a GGUF file (told apart by
/// its magic bytes, whatever its name) or a `tokenizer.json`. Only the vocabulary and decoder are
/// used, so a folder's `tokenizer_config.json` and chat template are not read.
fn load_tokenizer(path: &Path) -> anyhow::Result<Tokenizer> {
    let shown = path.display();
    if path.is_dir() {
        let json = std::fs::read(path.join("tokenizer.json")).with_context(|| format!("{shown}: no tokenizer.json"))?;
        return Ok(from_hf_files(&json, None, None).with_context(|| format!("tokenizer of {shown}"))?.tokenizer);
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {shown}"))?;
    if bytes.starts_with(b"GGUF") {
        let file = GgufFile::parse(&bytes).with_context(|| format!("{shown}"))?;
        return Ok(from_gguf(&file).with_context(|| format!("tokenizer of {shown}"))?.tokenizer);
    }
    match from_hf_files(&bytes, None, None) {
        Ok(t) => Ok(t.tokenizer),
        Err(e) => bail!("{shown}: neither a GGUF file nor a tokenizer.json ({e})"),
    }
}

/// The non-blank lines of the input as checked groups; the first bad line is an error naming the
/// file, the line and what is wrong.
fn parse_groups(source: &str, text: &str, tokenizer: &Tokenizer) -> anyhow::Result<Vec<Group>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut groups = Vec::new();
    for (i, l) in text.split('\n').enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let line = i + 1;
        // serde_json's own "at line L column C" counts within this one line: keep the column.
        let json_error = |kind: &str, e: serde_json::Error| {
            let full = e.to_string();
            let what = full.rfind(" at line ").map_or(full.as_str(), |k| &full[..k]);
            InputError::new(source, line, format!("{kind}: {what} (column {})", e.column()))
        };
        // Syntax first, then the shape: a list would otherwise be read as the fields in order.
        match serde_json::from_str::<serde_json::Value>(l) {
            Err(e) => return Err(json_error("invalid JSON", e).into()),
            Ok(v) if !v.is_object() => {
                return Err(InputError::new(source, line, "expected a JSON object (one group per line)").into());
            }
            Ok(_) => {}
        }
        let parsed: GroupLine = serde_json::from_str(l).map_err(|e| json_error("invalid group", e))?;
        let (cfg, tokens) = check_group(parsed, tokenizer).map_err(|message| InputError::new(source, line, message))?;
        groups.push(Group { line, cfg, tokens });
    }
    if groups.is_empty() {
        bail!("{source}: no groups (every line is blank)");
    }
    Ok(groups)
}

/// The objective's settings and the group's tokens (segmented, with their advantages), or what is
/// wrong with the line.
fn check_group(g: GroupLine, tokenizer: &Tokenizer) -> Result<(ObjectiveConfig, GroupTokens), String> {
    for (name, value) in [("eps_low", g.eps_low), ("eps_high", g.eps_high), ("beta", g.beta)] {
        if !(value.is_finite() && value >= 0.0) {
            return Err(format!("{name} is {value}; it must be a finite number ≥ 0"));
        }
    }
    if !(1..=MAX_REC_NUM).contains(&g.rec_num) {
        return Err(format!("rec_num is {}; the objective takes 1 to {MAX_REC_NUM}", g.rec_num));
    }
    if tokenizer.id_to_token(g.eos_id).is_none() {
        return Err(format!("eos_id {} is not in the tokenizer's vocabulary", g.eos_id));
    }
    if g.completions.is_empty() {
        return Err("completions is empty; a group needs at least one".into());
    }
    check_rewards(&g)?;

    let mut segmented = Vec::with_capacity(g.completions.len());
    for (i, c) in g.completions.iter().enumerate() {
        segmented.push(segment(i, c, g.eos_id, tokenizer)?);
    }
    if segmented.iter().all(|s| s.items.is_empty()) {
        return Err("every completion is empty; the group has no tokens".into());
    }
    let cfg =
        ObjectiveConfig { level: g.level, eps_low: g.eps_low, eps_high: g.eps_high, beta: g.beta, rec_num: g.rec_num };
    let advantages = token_advantages(g.level, &g.rewards, &segmented, g.rec_num);
    let items: Vec<Vec<usize>> = segmented.into_iter().map(|s| s.items).collect();
    let (mut logp, mut old_logp, mut ref_logp) = (Vec::new(), Vec::new(), Vec::new());
    for c in g.completions {
        logp.push(c.logp);
        old_logp.push(c.old_logp);
        ref_logp.push(c.ref_logp);
    }
    let tokens = GroupTokens::concat(&items, &advantages, &logp, &old_logp, &ref_logp).map_err(|e| e.to_string())?;
    Ok((cfg, tokens))
}

/// One reward list per completion: rec_num per-rank rewards for "item"; "token" and "sequence"
/// read only the first (the sequence reward), so any non-empty list will do there.
fn check_rewards(g: &GroupLine) -> Result<(), String> {
    let n = g.completions.len();
    if g.rewards.len() != n {
        return Err(format!("rewards has {} lists for {n} completions; give one per completion", g.rewards.len()));
    }
    for (i, r) in g.rewards.iter().enumerate() {
        match g.level {
            Level::Item if r.len() != g.rec_num => {
                return Err(format!(
                    "rewards[{i}] has {} values; level \"item\" needs one per rank (rec_num = {})",
                    r.len(),
                    g.rec_num
                ));
            }
            Level::Token | Level::Sequence if r.is_empty() => {
                return Err(format!("rewards[{i}] is empty; its first value is the sequence reward"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks completion `i` and segments its tokens by the newlines of each token's decoded text.
fn segment(i: usize, c: &CompletionLine, eos_id: u32, tokenizer: &Tokenizer) -> Result<Segmented, String> {
    let n = c.token_ids.len();
    for (name, values) in [("logp", &c.logp), ("old_logp", &c.old_logp), ("ref_logp", &c.ref_logp)] {
        if values.len() != n {
            return Err(format!("completions[{i}]: {name} has {} values for {n} token_ids", values.len()));
        }
        if let Some(t) = values.iter().position(|v| !v.is_finite()) {
            return Err(format!("completions[{i}]: {name}[{t}] is not a finite f32"));
        }
    }
    let (len, ended) = completion_len(&c.token_ids, &[eos_id]);
    if len < n {
        return Err(format!(
            "completions[{i}]: token {} is the end token (eos_id {eos_id}) but {} more follow; \
             give the tokens up to and including the end token",
            len - 1,
            n - len
        ));
    }
    let mut texts = Vec::with_capacity(n);
    for (t, &id) in c.token_ids.iter().enumerate() {
        if tokenizer.id_to_token(id).is_none() {
            return Err(format!("completions[{i}].token_ids[{t}] = {id} is not in the tokenizer's vocabulary"));
        }
        // Special tokens are kept: the end token is text too (it has no newline).
        texts.push(decode(tokenizer, &[id], false).map_err(|e| format!("completions[{i}].token_ids[{t}]: {e}"))?);
    }
    Ok(Segmented { items: item_ids(&texts), ended })
}
