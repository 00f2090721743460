//! Cross-crate tests live in `tests/`; this library holds what several of them share.

use std::path::PathBuf;

/// The workspace root (where `Cargo.toml`, `shaders/` and `wasm/` are).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Fails under `CI=true`, otherwise prints why the test is skipped: CI must never skip silently.
pub fn skip_or_fail(test: &str, why: &str) {
    if convrec_core::testing::in_ci() {
        panic!("{test}: {why} (CI=true: this is a failure, not a skip)");
    }
    eprintln!("SKIPPED {test}: {why}; under CI=true this fails");
}
