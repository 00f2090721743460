//! The `convrec` command line.

mod commands;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use convrec_core::Precision;
use convrec_core::dtype::WeightFormat;
use convrec_core::train::adapter_view::AdapterMode;

#[derive(Parser)]
#[command(
    name = "convrec",
    version = VERSION,
    about = "Train LLM conversational recommenders (SFT + Rank-GRPO) with hand-written WGSL on any GPU"
)]
struct Cli {
    /// GPU adapter to use: an index from `convrec devices` or part of its name; under mpirun, a
    /// comma-separated list, one per worker on a host.
    ///
    /// (`--adapter` names a LoRA adapter folder in the model commands, so the GPU is chosen with
    /// `--gpu`.) Under mpirun the i-th worker on a host takes the i-th of the list; without one,
    /// the workers are dealt the host's preferred adapters in turn (sharing them when fewer).
    #[arg(long, global = true, env = "CONVREC_ADAPTER")]
    gpu: Option<String>,
    /// Use no optional GPU features (shader-f16, subgroups, timestamps): the portable path.
    #[arg(long, global = true)]
    portable: bool,
    /// How matrix products compute: `f32`, or `mixed` (f16 operands and f32 accumulation on
    /// tensor cores, where the adapter offers cooperative matrices; f32 elsewhere).
    #[arg(long, global = true, default_value = "f32", env = "CONVREC_PRECISION")]
    precision: Precision,
    /// How the model's frozen weights are kept on the GPU: `stored` (as the file has them:
    /// f32, f16/bf16, or a GGUF's quantised blocks, dequantised inside the kernels), `f32`
    /// (everything widened), `q8` or `q4` (the layers' projections quantised on load, QLoRA-style).
    #[arg(long, global = true, default_value = "stored", env = "CONVREC_WEIGHTS")]
    weights: WeightFormat,
    /// How sampling and evaluation apply a LoRA adapter: `merged` (into f32 copies of the
    /// targeted projections: fastest) or `unmerged` (two thin products per projection in every
    /// forward: the base stays as stored, e.g. a Q4 base keeps its size while RL samples).
    #[arg(long, global = true, default_value = "merged", env = "CONVREC_ADAPTERS")]
    adapters: AdapterMode,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List GPU adapters with backend, type, driver, features and limits.
    Devices(commands::devices::Args),
    /// The main job: SFT then Rank-GRPO on the default model and data, evaluated before and after.
    Demo(commands::demo::Args),
    /// Score completions: parse each into items and print its per-rank rewards and Recall/NDCG@k
    /// as one JSON line (no GPU needed).
    Score(commands::score::Args),
    /// Build data sets: `convrec data movielens` writes MovieLens-100K conversations in the
    /// Reddit-v2 schema with their catalog (no GPU needed).
    Data(commands::data::Args),
    /// Run one sequence of token ids (no chat template) and write every position's logits.
    Logits(commands::logits::Args),
    /// Answer a chat prompt: greedy or sampled completions on the GPU.
    Generate(commands::generate::Args),
    /// Stage 1: supervised fine-tuning (behaviour cloning) of a LoRA adapter.
    Sft(commands::sft::Args),
    /// Greedy recommendations for held-out rows, scored with Recall/NDCG@k.
    Eval(commands::eval::Args),
    /// Paired comparison of evaluations of the same rows: per metric, the mean per-row
    /// difference from the first run with its 95% interval (no GPU needed).
    Compare(commands::compare::Args),
    /// SFT, then Rank-GRPO, GRPO and GSPO from the same SFT adapter, validated over training,
    /// compared pairwise on held-out rows; a report with curves (presets for CPU, one GPU, the paper).
    Experiment(commands::experiment::Args),
    /// Mean next-token NLL of one sequence and the gradient of every LoRA tensor (PEFT keys).
    LoraGrads(commands::lora_grads::Args),
    /// Token ids of a text, or of a chat prompt with `--chat`, as one JSON line (no GPU needed).
    Tokenize(commands::tokenize::Args),
    /// Stage 2: reinforcement learning from the SFT adapter (Rank-GRPO, GRPO or GSPO).
    Train(commands::train::Args),
    /// The Rank-GRPO / GRPO / GSPO objective on its own: per group of completions (one JSONL line),
    /// the token advantages, the loss and its gradient with respect to each token's log-prob.
    Objective(commands::objective::Args),
    /// Compare runs: one SVG chart per metric (sampled NDCG@20, loss, KL, …), one line per run.
    Plot(commands::plot::Args),
    /// The browser demo: serve the WebGPU page (recommend, evaluate, benchmark) with a model.
    Serve(commands::serve::Args),
}

/// The version `--version` prints: with the build's optional parts.
const VERSION: &str =
    if cfg!(feature = "mpi") { concat!(env!("CARGO_PKG_VERSION"), " (mpi)") } else { env!("CARGO_PKG_VERSION") };

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let matches = Cli::command().get_matches();
    let command = matches.subcommand_name().unwrap_or_default().to_string();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let launch = convrec::workers::Launch::start()?;
    let outcome = run(cli, &command, &launch);
    launch.finish(outcome)
}

fn run(cli: Cli, command: &str, launch: &convrec::workers::Launch) -> anyhow::Result<()> {
    // `--gpu a,b,…`: one adapter per worker on this host.
    let adapter = cli.gpu.map(|list| {
        let choices: Vec<&str> = list.split(',').map(str::trim).collect();
        choices[launch.worker_on_host % choices.len()].to_string()
    });
    let gpu_options = convrec_core::GpuOptions {
        adapter,
        portable: cli.portable,
        cooperative_matrix: cli.precision == Precision::Mixed,
        worker_on_host: launch.worker_on_host,
        weights: cli.weights,
        adapters: cli.adapters,
        ..Default::default()
    };
    match &cli.command {
        Command::Sft(_) | Command::Train(_) => {}
        _ => launch.refuse_for(command)?,
    }
    match cli.command {
        Command::Devices(args) => {
            let gpu_options =
                convrec_core::GpuOptions { adapter: args.adapter.clone().or(gpu_options.adapter), ..gpu_options };
            commands::devices::run(&gpu_options, args)
        }
        Command::Demo(args) => commands::demo::run(&gpu_options, args),
        Command::Score(args) => commands::score::run(args),
        Command::Data(args) => commands::data::run(args),
        Command::Logits(args) => commands::logits::run(&gpu_options, args),
        Command::Generate(args) => commands::generate::run(&gpu_options, args),
        Command::Sft(args) => commands::sft::run(&gpu_options, args, launch.workers()),
        Command::Eval(args) => commands::eval::run(&gpu_options, args),
        Command::Compare(args) => commands::compare::run(args),
        Command::Experiment(args) => commands::experiment::run(&gpu_options, args),
        Command::LoraGrads(args) => commands::lora_grads::run(&gpu_options, args),
        Command::Tokenize(args) => commands::tokenize::run(args),
        Command::Train(args) => commands::train::run(&gpu_options, args, launch.workers()),
        Command::Objective(args) => commands::objective::run(&gpu_options, args),
        Command::Plot(args) => commands::plot::run(args),
        Command::Serve(args) => commands::serve::run(args),
    }
}
