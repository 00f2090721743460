//! Memory and speed per storage format of the frozen weights (`convrec --weights`), at
//! SmolLM2-135M's shape: the same random model kept as f32 (the baseline, measured in the same
//! run), and with its projections quantised to Q8 and Q4 blocks — weight memory, prefill and
//! decode tokens/s, and a LoRA training step (tokens/s and the pool's peak).

use convrec_core::Gpu;
use convrec_core::dtype::WeightFormat;

use crate::bench_model::{self, GenerationArgs, ShapeArgs, TrainArgs, mib};
use crate::model::generation_rates;
use crate::python::number;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    shape: ShapeArgs,
    #[command(flatten)]
    generation: GenerationArgs,
    #[command(flatten)]
    train: TrainArgs,
    /// The formats to measure (the first is the baseline of the ratios).
    #[arg(long, value_delimiter = ',', default_value = "f32,q8,q4")]
    formats: Vec<WeightFormat>,
}

/// One format's figures.
struct Figures {
    format: WeightFormat,
    weight_mib: f64,
    prefill: f64,
    decode_1: f64,
    decode_8: f64,
    train_tok_s: f64,
    train_peak_mib: f64,
}

pub fn run(gpu: &Gpu, args: Args) -> anyhow::Result<()> {
    let (prompt, new) = (args.generation.prompt as usize, args.generation.new as usize);
    let (batch, seq) = (args.train.train_batch as usize, args.train.train_seq as usize);
    let positions = (prompt + new).max(seq) + 8;
    let mut all = Vec::new();
    for &format in &args.formats {
        // The pool keeps freed buffers for reuse: release the last format's, so that each
        // format's peak holds only its own model.
        gpu.pool().trim();
        let (c, model) = bench_model::upload_as(gpu, &args.shape, positions, format)?;
        if all.is_empty() {
            println!("{}", bench_model::adapter_and_shape(gpu, &args.shape, &c));
        }
        let (prefill, decode_1) = generation_rates(gpu, &model, 1, 1, prompt, new)?;
        let (_, decode_8) = generation_rates(gpu, &model, 8, 1, prompt, new)?;
        let mut trainer = bench_model::lora_trainer(gpu, &c, args.train.recompute)?;
        let mb = bench_model::train_batch(batch, seq);
        gpu.pool().reset_peak();
        let best = (0..2)
            .map(|_| bench_model::lora_step(gpu, &mut trainer, &model, &mb))
            .try_fold(f64::MAX, |b, t| t.map(|t| b.min(t)))?;
        let (_, peak) = gpu.pool().device_bytes();
        let figures = Figures {
            format,
            weight_mib: mib(model.weight_bytes()),
            prefill,
            decode_1,
            decode_8,
            train_tok_s: (batch * seq) as f64 / best,
            train_peak_mib: mib(peak),
        };
        println!(
            "{:>6}: weights {:.1} MiB, prefill {} tok/s, decode {} tok/s (batch 1) {} tok/s (batch 8), \
             LoRA step {} tok/s, peak {:.0} MiB",
            format.name(),
            figures.weight_mib,
            number(figures.prefill),
            number(figures.decode_1),
            number(figures.decode_8),
            number(figures.train_tok_s),
            figures.train_peak_mib
        );
        drop((trainer, model));
        all.push(figures);
    }
    let Some(base) = all.first() else { return Ok(()) };
    println!("\nratios against {} (memory: {0} / format; rates: format / {0})", base.format.name());
    println!(
        "{:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "format", "weights", "prefill", "dec b1", "dec b8", "train", "peak"
    );
    for f in &all {
        println!(
            "{:>8} {:>8.2}× {:>8.2}× {:>8.2}× {:>8.2}× {:>8.2}× {:>8.2}×",
            f.format.name(),
            base.weight_mib / f.weight_mib,
            f.prefill / base.prefill,
            f.decode_1 / base.decode_1,
            f.decode_8 / base.decode_8,
            f.train_tok_s / base.train_tok_s,
            base.train_peak_mib / f.train_peak_mib
        );
    }
    Ok(())
}
