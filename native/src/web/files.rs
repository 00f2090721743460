//! Which file a URL names inside the page's folders (`wasm/www`, the package): only regular
//! files reached through real folders. `..`, hidden names and symlinks anywhere below the folder
//! are refused, so nothing outside it is reachable, even through a link someone left there.

use std::path::{Path, PathBuf};

/// The regular file at `rel` (a URL path without its leading `/`) under `base`, if any.
pub fn inside(base: &Path, rel: &str) -> Option<PathBuf> {
    let mut path = base.to_path_buf();
    for part in rel.split('/') {
        // Empty, `.`, `..` and hidden names; separators and drive prefixes of other systems.
        if part.is_empty() || part.starts_with('.') || part.contains(['\\', ':', '\0']) {
            return None;
        }
        path.push(part);
        if std::fs::symlink_metadata(&path).ok()?.file_type().is_symlink() {
            return None;
        }
    }
    // A folder, a FIFO (whose open would block) or a device is not a page file.
    std::fs::symlink_metadata(&path).ok().filter(|m| m.is_file()).map(|_| path)
}

pub fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript",
        Some("css") => "text/css",
        Some("wasm") => "application/wasm",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_below_the_folder_through_real_folders() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("www");
        std::fs::create_dir_all(base.join("sub")).unwrap();
        std::fs::write(base.join("index.html"), "x").unwrap();
        std::fs::write(base.join("sub/a.js"), "x").unwrap();
        std::fs::write(base.join(".hidden"), "x").unwrap();
        std::fs::write(dir.path().join("secret.txt"), "x").unwrap();
        assert_eq!(inside(&base, "index.html"), Some(base.join("index.html")));
        assert_eq!(inside(&base, "sub/a.js"), Some(base.join("sub/a.js")));
        for bad in ["", "sub", "sub/", "../secret.txt", "sub/../index.html", "./index.html", ".hidden", "a\\b", "C:x"] {
            assert_eq!(inside(&base, bad), None, "{bad:?}");
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.path().join("secret.txt"), base.join("leak.txt")).unwrap();
            std::os::unix::fs::symlink(dir.path(), base.join("up")).unwrap();
            assert_eq!(inside(&base, "leak.txt"), None, "a symlinked file");
            assert_eq!(inside(&base, "up/secret.txt"), None, "a file through a symlinked folder");
        }
    }
}
