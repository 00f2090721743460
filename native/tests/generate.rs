//! The default model end to end: SmolLM2-135M-Instruct from its GGUF (fetched into the cache on
//! first use), tokenised and chat-templated, answered greedily on the GPU.

use std::process::Command;

#[test]
fn smollm2_answers_the_capital_of_france_with_paris() {
    if convrec_core::testing::gpu().is_none() {
        return;
    }
    if let Err(e) = convrec::default_model_path() {
        if convrec_core::testing::in_ci() {
            panic!("CI=true but the default model could not be fetched: {e:#}");
        }
        eprintln!("SKIPPED: default model unavailable: {e:#}");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_convrec"))
        .args(["generate", "--prompt", "What is the capital of France?", "--max-new-tokens", "16"])
        .output()
        .expect("run convrec");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Paris"), "greedy answer: {stdout}");
}
