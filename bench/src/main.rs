//! convrec benchmarks. Every figure is reported beside a baseline measured in the same run
//! (NumPy/OpenBLAS or PyTorch, through the embedded scripts, when python has them), never
//! asserted.

mod baseline;
mod kernels;
mod model;
mod python;
mod smollm2;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "convrec-bench", about = "Kernel benchmarks of convrec, with same-run baselines")]
struct Cli {
    /// GPU adapter: an index from `convrec devices` or part of its name.
    #[arg(long, global = true, env = "CONVREC_ADAPTER")]
    adapter: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// GFLOP/s and GB/s of each op at SmolLM2-135M and Qwen2.5-0.5B shapes.
    Kernels(kernels::Args),
    /// Prefill/decode tokens/s and a LoRA training step at SmolLM2-135M's shape, with PyTorch.
    Model(model::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let gpu = pollster::block_on(convrec_core::Gpu::new(&convrec_core::GpuOptions {
        adapter: cli.adapter,
        ..Default::default()
    }))?;
    match cli.command {
        Command::Kernels(args) => kernels::run(&gpu, args),
        Command::Model(args) => model::run(&gpu, args),
    }
}
