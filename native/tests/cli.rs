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
    assert!(stdout.contains("self-check linear_forward") && !stdout.contains("FAIL"), "{stdout}");
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
