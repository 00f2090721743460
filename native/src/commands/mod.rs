pub mod compare;
pub mod data;
pub mod demo;
pub mod devices;
pub mod eval;
pub mod experiment;
pub mod generate;
pub mod logits;
pub mod lora_grads;
pub mod objective;
pub mod plot;
pub mod score;
pub mod serve;
pub mod sft;
pub mod tokenize;
pub mod train;

use convrec_core::Gpu;

pub use convrec::session::open_gpu;

/// The base model, or a view of it with the adapter in `dir` merged in on the GPU (kept alive by
/// `holder`).
pub fn with_adapter<'a>(
    gpu: &Gpu,
    base: &'a convrec_core::model::gpu::GpuModel,
    dir: Option<&std::path::Path>,
    holder: &'a mut Option<convrec_core::train::merge::LoraMerge>,
) -> anyhow::Result<&'a convrec_core::model::gpu::GpuModel> {
    let Some(dir) = dir else { return Ok(base) };
    let (layout, params) = convrec::adapter_files::load_adapter(dir, &base.config)?;
    let merge = pollster::block_on(convrec_core::train::merge::LoraMerge::apply(gpu, base, &layout, &params))?;
    Ok(&holder.insert(merge).model)
}

/// Runs the kernel self-check, prints a line per family (and any failing case) and fails if any
/// kernel disagrees with its reference (the demo's first stage).
pub fn self_check(gpu: &Gpu) -> anyhow::Result<()> {
    run_self_check(gpu, false)
}

/// As [`self_check`], printing every case with its error and bound when `every_case`
/// (`convrec devices --check`).
pub fn run_self_check(gpu: &Gpu, every_case: bool) -> anyhow::Result<()> {
    let report = pollster::block_on(convrec_core::selfcheck::run(gpu));
    for c in report.cases.iter().filter(|c| every_case || !c.pass) {
        println!(
            "self-check {:<12} {:<34} {:<58} error {:.2e} (bound {:.0e})  {}",
            c.family,
            c.op,
            c.shape,
            c.rel_err,
            c.bound,
            if c.pass { "ok" } else { "FAIL" }
        );
    }
    for f in &report.families {
        let verdict = match (&f.error, f.pass) {
            (Some(e), _) => format!("FAILED to run: {e}"),
            (None, true) => "ok".to_string(),
            (None, false) => "FAIL".to_string(),
        };
        println!("self-check family {:<12} {:>2} cases  {verdict}", f.name, f.cases);
    }
    anyhow::ensure!(report.pass, "the GPU self-check failed on {}", report.adapter.name);
    println!(
        "self-check: all {} kernel families match their CPU references on {}",
        report.families.len(),
        report.adapter.name
    );
    Ok(())
}

/// A progress bar over optimiser steps, labelled `what`.
pub fn progress_bar(steps: u64, what: &str) -> anyhow::Result<indicatif::ProgressBar> {
    let bar = indicatif::ProgressBar::new(steps);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {pos}/{len} steps · {msg} · ETA {eta}")?
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    Ok(bar)
}

/// The new-token budget: `flag` when given, else what a `rec_num`-item list in the rows' own
/// style takes with a margin (`rec::budget`), else 256. Says which, so a cut list is explainable.
pub fn token_budget(
    text: &convrec_core::model::text::ChatText,
    rows: &[convrec_core::rec::Row],
    rec_num: usize,
    flag: Option<u64>,
    flag_name: &str,
) -> anyhow::Result<usize> {
    if let Some(n) = flag {
        return Ok(n as usize);
    }
    let budget = convrec_core::rec::budget::list_token_budget(text, rows, rec_num)?;
    match budget {
        Some(n) => eprintln!("{flag_name} {n}: a {rec_num}-item list in the style of the rows, with a margin"),
        None => eprintln!("{flag_name} 256: the rows hold no lists to measure (give {flag_name} to choose)"),
    }
    Ok(budget.unwrap_or(256))
}

/// A command's arguments as its command line would give them with only `given` flags set: every
/// other field takes the default `--help` shows, from the one place it is declared. The demo and
/// the experiment start their stages from these and override what they choose.
pub fn stage_args<A: clap::Args>(given: &[(&str, &std::path::Path)]) -> anyhow::Result<A> {
    #[derive(clap::Parser)]
    struct Command<A: clap::Args> {
        #[command(flatten)]
        args: A,
    }
    let mut argv: Vec<std::ffi::OsString> = vec!["convrec".into()];
    for (flag, value) in given {
        argv.push(format!("--{flag}").into());
        argv.push(value.into());
    }
    Ok(<Command<A> as clap::Parser>::try_parse_from(argv)?.args)
}
