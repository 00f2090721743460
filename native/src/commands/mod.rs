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
    holder: &'a mut Option<convrec_core::train::adapter_view::AdapterView>,
) -> anyhow::Result<&'a convrec_core::model::gpu::GpuModel> {
    let Some(dir) = dir else { return Ok(base) };
    let (layout, params) = convrec::adapter_files::load_adapter(dir, &base.config)?;
    let merge = pollster::block_on(convrec_core::train::adapter_view::AdapterView::apply(gpu, base, &layout, &params))?;
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
pub fn progress_bar(steps: u64, what: &str, shown: bool) -> anyhow::Result<indicatif::ProgressBar> {
    let bar = indicatif::ProgressBar::new(steps);
    if !shown {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
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

/// Parsers for numeric flags: a value outside what a run can mean is refused by clap, naming the
/// flag, before any file is read (docs/RELIABILITY.md).
pub mod flags {
    fn number(s: &str) -> Result<f32, String> {
        let v: f32 = s.trim().parse().map_err(|e| format!("{s:?} is not a number ({e})"))?;
        if v.is_finite() { Ok(v) } else { Err(format!("{s} is not finite")) }
    }

    /// Learning rates, LoRA alpha: finite and above zero.
    pub fn positive(s: &str) -> Result<f32, String> {
        let v = number(s)?;
        if v > 0.0 { Ok(v) } else { Err(format!("{v} must be above 0")) }
    }

    /// Temperatures, the KL coefficient, clip ranges: finite and at least zero.
    pub fn non_negative(s: &str) -> Result<f32, String> {
        let v = number(s)?;
        if v >= 0.0 { Ok(v) } else { Err(format!("{v} must be at least 0")) }
    }

    /// Probabilities and fractions (top-p, the warm-up ratio): from 0 to 1.
    pub fn unit(s: &str) -> Result<f32, String> {
        let v = number(s)?;
        if (0.0..=1.0).contains(&v) { Ok(v) } else { Err(format!("{v} must be from 0 to 1")) }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn each_parser_refuses_what_it_must() {
            assert_eq!(super::positive("2e-5"), Ok(2e-5));
            for bad in ["0", "-1", "nan", "inf", "1e39", "x"] {
                assert!(super::positive(bad).is_err(), "{bad}");
            }
            assert_eq!(super::non_negative("0"), Ok(0.0));
            assert!(super::non_negative("-0.1").is_err());
            assert_eq!(super::unit("1"), Ok(1.0));
            assert!(super::unit("1.5").is_err() && super::unit("-0.5").is_err());
        }
    }
}
