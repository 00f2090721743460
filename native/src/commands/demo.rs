//! `convrec demo`, the main job. Until the model, SFT and Rank-GRPO land (issues 4–7) it checks
//! that the GPU computes correctly and says what the full job will do; it never pretends to train.

use convrec_core::GpuOptions;

#[derive(clap::Args)]
pub struct Args {}

pub fn run(options: &GpuOptions, _args: Args) -> anyhow::Result<()> {
    let gpu = super::open_gpu(options)?;
    super::self_check(&gpu)?;
    println!(
        "GPU ready. The full job (SmolLM2-135M-Instruct, SFT then Rank-GRPO on MovieLens-derived conversations, \
         evaluated before and after) is not built yet: this run only checked the kernels."
    );
    Ok(())
}
