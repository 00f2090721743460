//! `convrec serve`: the browser demo. Builds the page's WASM package on first use (or with
//! `--rebuild`), then serves the page, the package and the given model, adapter, rows and catalog
//! on the loopback interface until interrupted. With `--report FILE`, a report the page POSTs to
//! `/report` (`?report=/report`) is written to FILE; without it `/report` does not exist.

use std::path::PathBuf;

use anyhow::Context;
use convrec::web::{ServeOptions, ServedFiles, build_pkg, source_root, start};

#[derive(clap::Args)]
pub struct Args {
    /// Port (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on; loopback by default (the server hands out the files it was given).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// An HF model folder or a GGUF file (default: SmolLM2-135M-Instruct).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A PEFT LoRA adapter folder, merged into the model in the page.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Rows in the Reddit-v2 schema (JSONL) for the Evaluate section.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The catalog (TSV `title<TAB>year` with a header, or a JSON list).
    #[arg(long)]
    pub catalog: Option<PathBuf>,
    /// The page's folder (default: wasm/www of this source tree).
    #[arg(long)]
    pub www: Option<PathBuf>,
    /// The built package (wasm-bindgen output); default: built into target/web-pkg on first use.
    #[arg(long)]
    pub pkg: Option<PathBuf>,
    /// Rebuild the package even if one is there.
    #[arg(long)]
    pub rebuild: bool,
    /// Accept the page's reports (POSTed to `/report`) and write each into FILE, replacing the
    /// previous one. Without it the server takes no uploads.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let root = source_root();
    let www = args.www.clone().unwrap_or_else(|| root.join("wasm/www"));
    let pkg = match &args.pkg {
        Some(p) => p.clone(),
        None => {
            let pkg = root.join("target/web-pkg");
            if args.rebuild || !pkg.join("convrec_wasm.js").is_file() {
                eprintln!("convrec: building the page's WASM package into {}", pkg.display());
                build_pkg(&root, &root.join("target"), &pkg)?;
            }
            pkg
        }
    };
    let model = convrec::text_model::model_path(args.model.as_deref())?;
    let files = ServedFiles { model: Some(model), adapter: args.adapter, data: args.data, catalog: args.catalog };
    let options = ServeOptions { report: args.report.is_some(), ..Default::default() };
    let running = start(&www, &pkg, &files, &format!("{}:{}", args.host, args.port), &options)
        .with_context(|| format!("serving {}", www.display()))?;
    println!("convrec: the browser demo is at http://{}/ (Ctrl-C stops it)", running.addr);
    let Some(path) = args.report else {
        running.wait();
        return Ok(());
    };
    println!("convrec: reports POSTed to /report go to {}", path.display());
    for report in running.reports.iter() {
        convrec::fetch::write_atomic(&path, report.as_bytes())?;
        println!("convrec: a report of {} bytes written to {}", report.len(), path.display());
    }
    Ok(())
}
