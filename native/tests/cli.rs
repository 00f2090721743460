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
    let want = convrec_core::model::safetensors_io::read_numbers(&exp, "expected", "logits").unwrap().1;
    let want: Vec<f32> = want.iter().map(|&x| x as f32).collect();
    // Both ways of applying it: merged into f32 copies, and unmerged in every forward.
    for mode in ["merged", "unmerged"] {
        let out_dir = tempfile::tempdir().unwrap();
        let out_file = out_dir.path().join("logits.safetensors");
        let out = convrec()
            .args(["--adapters", mode, "logits", "--model"])
            .arg(&root)
            .arg("--adapter")
            .arg(root.join("lora"))
            .args(["--ids", &ids.join(","), "--out"])
            .arg(&out_file)
            .output()
            .expect("run convrec");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let got =
            convrec_core::model::safetensors_io::read_numbers(&std::fs::read(&out_file).unwrap(), "out", "logits")
                .unwrap()
                .1;
        let got: Vec<f32> = got.iter().map(|&x| x as f32).collect();
        let err = convrec_core::numeric::rel_err(&got, &want);
        assert!(err < 1e-4, "--adapters {mode}: {err:e}");
    }
}

/// `convrec serve` on a fake page folder, package and model; returns the child and its address.
fn serve(dir: &std::path::Path, extra: &[&std::ffi::OsStr]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let (www, pkg, model) = (dir.join("www"), dir.join("pkg"), dir.join("m.gguf"));
    std::fs::create_dir_all(&www).unwrap();
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(www.join("index.html"), "<p>page</p>").unwrap();
    std::fs::write(pkg.join("convrec_wasm.js"), "").unwrap();
    std::fs::write(&model, "GGUF").unwrap();
    let mut child = convrec()
        .args(["serve", "--port", "0", "--www"])
        .arg(&www)
        .arg("--pkg")
        .arg(&pkg)
        .arg("--model")
        .arg(&model)
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run convrec serve");
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut first).unwrap();
    let addr = first.split("http://").nth(1).and_then(|s| s.split('/').next()).expect(&first).to_string();
    (child, addr)
}

/// POSTs a body to `/report`; the status code.
fn post_report(addr: &str, body: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "POST /report HTTP/1.0\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out[9..12].parse().unwrap()
}

#[test]
fn serve_writes_reports_only_with_report_file() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = serve(dir.path(), &[]);
    assert_eq!(post_report(&addr, "{\"pass\":true}"), 404, "no uploads unless asked for");
    child.kill().unwrap();
    let _ = child.wait();

    let report = dir.path().join("out/report.json");
    let (mut child, addr) = serve(dir.path(), &["--report".as_ref(), report.as_os_str()]);
    assert_eq!(post_report(&addr, "{\"pass\":true}"), 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_to_string(&report).ok().as_deref() != Some("{\"pass\":true}") {
        assert!(std::time::Instant::now() < deadline, "the report was not written to {}", report.display());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    let _ = child.wait();
}

/// Numeric flags outside what a run can mean are refused by the parser, naming the flag, before
/// any file is read (were: "attempt to divide by zero" panics and an abort on a huge rank).
#[test]
fn numeric_flags_out_of_range_are_refused_by_the_parser() {
    let sft = ["sft", "--data", "rows.jsonl", "--out", "run"];
    let train = ["train", "--adapter", "a", "--data", "rows.jsonl", "--catalog", "c.tsv", "--out", "run"];
    let generate = ["generate", "--prompt", "hi"];
    let demo = ["demo"];
    let cases: [(&[&str], &[&str]); 14] = [
        (&sft, &["--batch-size", "0"]),
        (&sft, &["--grad-accum", "0"]),
        (&sft, &["--lora-r", "100000000000"]),
        (&sft, &["--epochs", "0"]),
        (&sft, &["--lr", "0"]),
        (&sft, &["--lr", "nan"]),
        (&sft, &["--warmup-ratio", "1.5"]),
        (&train, &["--prompts-per-step", "0"]),
        (&train, &["--group-size", "0"]),
        (&train, &["--temperature", "0"]),
        (&train, &["--beta", "inf"]),
        (&generate, &["--top-p", "2"]),
        (&generate, &["--max-new-tokens", "0"]),
        (&demo, &["--group-size", "1"]),
    ];
    for (command, flags) in cases {
        let out = convrec().args(command).args(flags).output().expect("run convrec");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command:?} {flags:?}: {err}");
        assert!(err.contains("invalid value") && err.contains(flags[0]), "{command:?} {flags:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// Started by an MPI launcher as one of several processes, a build without MPI support refuses
/// (each process would run the whole job alone) and says how to build one; as the only process
/// it runs as usual.
#[test]
fn a_build_without_mpi_refuses_to_be_one_of_several_workers() {
    let version = convrec().arg("--version").output().unwrap();
    if String::from_utf8_lossy(&version.stdout).contains("(mpi)") {
        return; // native/tests/mpi.rs covers that build
    }
    let out = convrec().args(["score", "--help"]).env("OMPI_COMM_WORLD_SIZE", "2").output().unwrap();
    assert!(out.status.success(), "--help is answered before anything starts");
    let out = convrec().args(["data", "movielens", "--out", "x"]).env("PMI_SIZE", "2").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--features mpi") && err.contains("2 processes"), "{err}");
    let mut alone = convrec();
    alone.args(["score", "--catalog", "missing.tsv", "--input", "missing.jsonl"]);
    let out = alone.env("OMPI_COMM_WORLD_SIZE", "1").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing") && !err.contains("MPI"), "one process is a plain run: {err}");
}
