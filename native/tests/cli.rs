//! The command line as a user meets it.

use std::process::Command;

fn convrec() -> Command {
    Command::new(env!("CARGO_BIN_EXE_convrec"))
}

fn has_gpu() -> bool {
    convrec_core::testing::gpu().is_some()
}

#[test]
fn devices_lists_adapters_as_json_with_limits() {
    if !has_gpu() {
        return;
    }
    let out = convrec().args(["devices", "--json"]).output().expect("run convrec");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let adapters: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let first = &adapters.as_array().expect("a list")[0];
    assert!(first["limits"]["max_storage_buffer_binding_size"].as_u64().unwrap() > 0);
    assert!(first["backend"].is_string());
}

#[test]
fn devices_check_runs_kernels_against_references() {
    if !has_gpu() {
        return;
    }
    let out = convrec().args(["devices", "--check"]).output().expect("run convrec");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.contains("FAIL"), "{stdout}");
    // Every family ran, forward and backward, and the command says so.
    for family in convrec_core::selfcheck::FAMILIES {
        let line = format!("self-check family {family:<12}");
        assert!(stdout.lines().any(|l| l.starts_with(&line) && l.ends_with("ok")), "{family}:\n{stdout}");
    }
    assert!(stdout.contains("linear dW = dyᵀ·x") && stdout.contains("attention dk"), "{stdout}");
    assert!(stdout.contains("all 10 kernel families match their CPU references"), "{stdout}");
}

#[test]
fn an_unknown_adapter_is_a_clear_error_naming_the_alternatives() {
    if !has_gpu() {
        return;
    }
    for args in
        [["devices", "--adapter", "no-such-gpu-xyz", "--check"], ["--gpu", "no-such-gpu-xyz", "devices", "--check"]]
    {
        let out = convrec().args(args).output().expect("run convrec");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("no adapter matches 'no-such-gpu-xyz'") && stderr.contains("available adapters: [0]"),
            "{stderr}"
        );
    }
}

#[test]
fn logits_with_an_adapter_match_peft() {
    if !has_gpu() {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/llama_gqa");
    let exp = std::fs::read(root.join("lora/expected.safetensors")).unwrap();
    let ids: Vec<String> = convrec_core::model::safetensors_io::read_numbers(&exp, "expected", "input_ids")
        .unwrap()
        .1
        .iter()
        .map(|x| (*x as u32).to_string())
        .collect();
    let out_dir = tempfile::tempdir().unwrap();
    let out_file = out_dir.path().join("logits.safetensors");
    let out = convrec()
        .args(["logits", "--model"])
        .arg(&root)
        .arg("--adapter")
        .arg(root.join("lora"))
        .args(["--ids", &ids.join(","), "--out"])
        .arg(&out_file)
        .output()
        .expect("run convrec");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = convrec_core::model::safetensors_io::read_numbers(&std::fs::read(&out_file).unwrap(), "out", "logits")
        .unwrap()
        .1;
    let want = convrec_core::model::safetensors_io::read_numbers(&exp, "expected", "logits").unwrap().1;
    let got: Vec<f32> = got.iter().map(|&x| x as f32).collect();
    let want: Vec<f32> = want.iter().map(|&x| x as f32).collect();
    assert!(convrec_core::numeric::rel_err(&got, &want) < 1e-4);
}
