//! convrec benchmarks. Every figure is reported beside a baseline measured in the same run
//! (NumPy/OpenBLAS or PyTorch, through the embedded scripts, when python has them), never
//! asserted.

mod baseline;
mod bench_model;
mod kernels;
mod model;
mod profile;
mod python;
mod rl_step;
mod weights;

use clap::{Parser, Subcommand};
use convrec_core::Precision;
use convrec_core::dtype::WeightFormat;
use convrec_core::train::adapter_view::AdapterMode;

#[derive(Parser)]
#[command(name = "convrec-bench", about = "Benchmarks of convrec, with same-run baselines")]
struct Cli {
    /// GPU adapter: an index from `convrec devices` or part of its name.
    #[arg(long, global = true, env = "CONVREC_ADAPTER")]
    adapter: Option<String>,
    /// How matrix products compute: `f32`, or `mixed` (f16 operands, f32 accumulation, on
    /// tensor cores where the adapter offers cooperative matrices).
    #[arg(long, global = true, default_value = "f32", env = "CONVREC_PRECISION")]
    precision: Precision,
    /// How the model benchmarks keep frozen weights (`convrec --weights`): their random weights
    /// are f32, so `stored` and `f32` are the same; `q8`/`q4` quantise the projections.
    #[arg(long, global = true, default_value = "stored", env = "CONVREC_WEIGHTS")]
    weights: WeightFormat,
    /// How RL sampling applies the adapter (`convrec --adapters`): `merged` or `unmerged`.
    #[arg(long, global = true, default_value = "merged", env = "CONVREC_ADAPTERS")]
    adapters: AdapterMode,
    #[command(subcommand)]
    command: Command,
}

/// Each subcommand lets a later flag override an earlier one, so that a script can append
/// overrides to a command line (bench/gpu_session.sh's rehearsal at tiny sizes).
#[derive(Subcommand)]
enum Command {
    /// The adapter the benchmarks run on, as JSON (a session script checks it is a GPU first).
    Adapter,
    /// GFLOP/s and GB/s of each op at SmolLM2-135M and Qwen2.5-0.5B shapes.
    #[command(args_override_self = true)]
    Kernels(kernels::Args),
    /// Prefill/decode tokens/s and a LoRA training step at SmolLM2-135M's shape, with PyTorch.
    #[command(args_override_self = true)]
    Model(model::Args),
    /// GPU time per kernel family, dispatches and host time of one decode step and one training
    /// step (timestamp queries).
    #[command(args_override_self = true)]
    Profile(profile::Args),
    /// One RL step (sampling P × G completions, then the Rank-GRPO update), with PyTorch.
    #[command(args_override_self = true)]
    RlStep(rl_step::Args),
    /// Weight memory, generation and LoRA-step speed per storage format of the frozen weights
    /// (f32 against Q8 and Q4 blocks, `convrec --weights`), in one run.
    #[command(args_override_self = true)]
    Weights(weights::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let gpu = pollster::block_on(convrec_core::Gpu::new(&convrec_core::GpuOptions {
        adapter: cli.adapter,
        cooperative_matrix: cli.precision == Precision::Mixed,
        weights: cli.weights,
        adapters: cli.adapters,
        ..Default::default()
    }))?;
    if cli.precision == Precision::Mixed && gpu.tensor_cores().is_none() {
        eprintln!("--precision mixed: {} offers no usable cooperative matrices; measuring f32", gpu.summary().name);
    }
    match cli.command {
        Command::Adapter => {
            let summary = gpu.summary();
            let json = serde_json::json!({
                "cpu": summary.is_cpu(),
                "precision": gpu.precision(),
                "tensor_cores": gpu.tensor_cores(),
                "adapter": summary,
            });
            println!("{json}");
            Ok(())
        }
        Command::Kernels(args) => kernels::run(&gpu, args),
        Command::Model(args) => model::run(&gpu, args),
        Command::Profile(args) => profile::run(&gpu, args),
        Command::RlStep(args) => rl_step::run(&gpu, args),
        Command::Weights(args) => weights::run(&gpu, args),
    }
}
