//! The browser harness: build `convrec-wasm`, serve `wasm/www/` on 127.0.0.1 with the same server
//! as `convrec serve`, open it in headless Chromium with WebGPU and read back what the page
//! reports (it POSTs to `/report`).
//!
//! - The kernel self-check: the core's kernels on the browser's WebGPU against their CPU
//!   references.
//! - The demo on SmolLM2-135M with the SFT adapter in `tests/fixtures/adapters/smollm2_sft`: the page
//!   loads the model in its worker, recommends for a conversation, evaluates real Reddit-v2 rows and
//!   runs one benchmark; the recommendation and the metrics must equal what the native code
//!   computes on this machine's Vulkan adapter from the same files.
//!
//! Needs the `wasm32-unknown-unknown` target and Chromium (`CHROMIUM` or `/usr/bin/chromium`);
//! `.ci/run` installs them (the JS bindings are generated in-process, no wasm-bindgen CLI). Missing tools skip the
//! tests outside CI and fail them under `CI=true`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use convrec::web::{ServeOptions, ServedFiles, build_pkg, missing_build_tools, start};
use convrec_tests::{skip_or_fail, workspace_root};

fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Chromium and the built package, or why the test cannot run. Built once for both tests.
fn browser_and_pkg(test: &str) -> Option<(PathBuf, PathBuf)> {
    static PKG: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let Some(chromium) = find_chromium() else {
        skip_or_fail(test, "Chromium not found (set CHROMIUM or install Debian's chromium)");
        return None;
    };
    let root = workspace_root();
    let pkg = PKG.get_or_init(|| {
        if let Some(missing) = missing_build_tools() {
            return Err(missing);
        }
        // A separate target dir: the outer `cargo test` may still hold the workspace's.
        let target = root.join("target/browser-test");
        let pkg = target.join("pkg");
        build_pkg(&root, &target, &pkg).map_err(|e| format!("{e:#}"))?;
        Ok(pkg)
    });
    match pkg {
        Ok(p) => Some((chromium, p.clone())),
        Err(why) => {
            skip_or_fail(test, why);
            None
        }
    }
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Opens the page on a fresh server in headless Chromium (WebGPU through Vulkan/SwiftShader on a
/// machine without a GPU) and returns the first report it POSTs.
fn run_page(chromium: &Path, pkg: &Path, files: &ServedFiles, query: &str, limit: Duration) -> serde_json::Value {
    // One browser at a time: two would share this machine's cores and double every timing.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let root = workspace_root();
    let options = ServeOptions { report: true, ..Default::default() };
    let server = start(&root.join("wasm/www"), pkg, files, "127.0.0.1:0", &options).expect("start the server");
    let profile = tempfile::tempdir().expect("profile dir");
    let url = format!("http://{}/index.html?{query}", server.addr);
    let child = Command::new(chromium)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--enable-unsafe-webgpu",
            "--enable-features=Vulkan",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let mut browser = KillOnDrop(child);
    let deadline = Instant::now() + limit;
    let report = loop {
        if let Ok(v) = server.reports.recv_timeout(Duration::from_millis(250)) {
            break v;
        }
        if let Ok(Some(status)) = browser.0.try_wait() {
            let mut log = String::new();
            if let Some(mut e) = browser.0.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut log);
            }
            panic!("Chromium exited ({status}) before the page reported:\n{log}");
        }
        assert!(Instant::now() < deadline, "the page reported nothing within {limit:?} ({url})");
    };
    drop(browser);
    serde_json::from_str(&report).unwrap_or_else(|e| panic!("the report is not JSON ({e}): {report}"))
}

fn assert_self_check(report: &serde_json::Value) {
    assert!(report.get("error").is_none(), "the page failed: {}", report["error"]);
    let cases = report["cases"].as_array().expect("cases");
    assert!(!cases.is_empty(), "the page ran no kernel");
    for case in cases {
        let (err, bound) = (case["rel_err"].as_f64(), case["bound"].as_f64().expect("bound"));
        assert!(
            err.is_some_and(|e| e <= bound),
            "{} {} {}: error {:?} > bound {bound:e}",
            case["family"],
            case["op"],
            case["shape"],
            err
        );
    }
    // Every kernel family ran in the browser, forward and backward.
    let families: Vec<&str> =
        report["families"].as_array().expect("families").iter().filter_map(|f| f["name"].as_str()).collect();
    assert_eq!(families, convrec_core::selfcheck::FAMILIES, "{}", report["families"]);
    assert_eq!(report["pass"], true);
    let adapter = &report["adapter"];
    assert_eq!(adapter["backend"], "BrowserWebGpu", "the page must run on the browser's WebGPU");
    eprintln!(
        "browser adapter: {} ({}), shader-f16 {}",
        adapter["name"], adapter["device_type"], adapter["shader_f16"]
    );
}

#[test]
fn the_page_runs_the_core_kernels_on_webgpu_and_matches_the_cpu_references() {
    let Some((chromium, pkg)) = browser_and_pkg("browser self-check") else { return };
    let report = run_page(&chromium, &pkg, &ServedFiles::default(), "report=/report", Duration::from_secs(240));
    assert_self_check(&report);
}

mod demo {
    use super::*;
    use convrec_core::model::gpu::GpuModel;
    use convrec_core::model::text::ChatText;
    use convrec_core::rec::evaluation::{EvalOptions, evaluate_rows};
    use convrec_core::rec::{Catalog, conversation_prompt, parse_completion, parse_dataset};

    const TEST: &str = "browser demo";
    /// Tokens per answer: enough for several titles, small enough for CI on a CPU.
    const MAX_NEW_TOKENS: usize = 48;
    const ROWS: usize = 2;
    const CONVERSATION: &str = "USER: I loved Alien (1979) and The Thing (1982). Any sci-fi horror with a creature?";

    /// The native answer to the same request on this machine's adapter: generation, then the
    /// evaluation, through the same core functions the page calls.
    fn native(
        model: &Path,
        adapter: &Path,
        rows: &[convrec_core::rec::Row],
        catalog: &Catalog,
    ) -> (String, serde_json::Value) {
        let tm = convrec::text_model::load(model).expect("load SmolLM2");
        let gpu = convrec_core::testing::gpu().expect("a GPU adapter for the native side");
        let base = GpuModel::upload(&gpu, tm.config.clone(), tm.tensors.clone(), 2048).expect("upload");
        let (layout, params) = convrec::adapter_files::load_adapter(adapter, &tm.config).expect("adapter");
        // The page's way of applying it (unmerged over this Q4 file).
        use convrec_core::train::adapter_view::{AdapterMode, AdapterView};
        let mode = AdapterMode::lean_for(&tm.tensors);
        let merged = pollster::block_on(AdapterView::apply_in(mode, &gpu, &base, &layout, &params)).expect("adapter");
        let text: &ChatText = &tm;
        let messages = [convrec_core::model::chat::Message::user(conversation_prompt(CONVERSATION))];
        let req = convrec_core::model::generate::GenerateRequest {
            prompts: vec![text.prompt_ids(&messages).unwrap()],
            num_samples: 1,
            first_sequence: 0,
            max_new_tokens: MAX_NEW_TOKENS,
            sampling: convrec_core::ops::decode::SamplingConfig::greedy(),
            stop_ids: text.stop_ids.clone(),
        };
        let out =
            pollster::block_on(convrec_core::model::generate::generate(&gpu, &merged.model, &req, |_, _| {})).unwrap();
        let answer = text.decode(&out[0].tokens).unwrap();
        let options = EvalOptions { max_new_tokens: MAX_NEW_TOKENS, ..Default::default() };
        let eval =
            pollster::block_on(evaluate_rows(&gpu, &merged.model, text, rows, catalog, &options, |_| {})).unwrap();
        (answer, serde_json::Value::Object(eval.summary.to_json()))
    }

    #[test]
    fn the_page_recommends_evaluates_and_benchmarks_like_native() {
        let root = workspace_root();
        let shared = root.join("../shared/data/reddit-v2");
        let (sample, catalog_path) = (shared.join("sample.jsonl"), shared.join("catalog.tsv"));
        if !sample.exists() || !catalog_path.exists() {
            return skip_or_fail(TEST, &format!("the real rows are not at {}", shared.display()));
        }
        let model = match convrec::default_model_path() {
            Ok(p) => p,
            Err(e) => return skip_or_fail(TEST, &format!("the default model is unavailable: {e:#}")),
        };
        let adapter = root.join("tests/fixtures/adapters/smollm2_sft");
        let Some((chromium, pkg)) = browser_and_pkg(TEST) else { return };

        // Held-out rows: the adapter was trained on the first 48 rows of the sample.
        let text = std::fs::read_to_string(&sample).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let held_out = lines[lines.len() - ROWS..].join("\n") + "\n";
        let dir = tempfile::tempdir().unwrap();
        let rows_path = dir.path().join("held_out.jsonl");
        std::fs::write(&rows_path, &held_out).unwrap();
        let rows = parse_dataset("held_out.jsonl", &held_out).unwrap();
        let catalog = Catalog::parse("catalog.tsv", &std::fs::read_to_string(&catalog_path).unwrap()).unwrap();

        let files = ServedFiles {
            model: Some(model.clone()),
            adapter: Some(adapter.clone()),
            data: Some(rows_path),
            catalog: Some(catalog_path),
        };
        let query = format!(
            "auto=full&report=/report&rows={ROWS}&max_new_tokens={MAX_NEW_TOKENS}&bench_tokens=8&conversation={}",
            CONVERSATION.replace(' ', "%20").replace('?', "%3F").replace(':', "%3A")
        );
        let started = Instant::now();
        let report = run_page(&chromium, &pkg, &files, &query, Duration::from_secs(1200));
        eprintln!("the page took {:.0} s", started.elapsed().as_secs_f64());
        assert_self_check(&report["selfcheck"]);
        for stage in ["load", "recommend", "evaluate", "benchmark"] {
            assert!(report[stage].get("error").is_none(), "{stage} failed in the page: {}", report[stage]["error"]);
        }
        let adapter_config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap()).unwrap();
        assert_eq!(report["load"]["lora"]["r"], adapter_config["r"], "the adapter is merged: {}", report["load"]);

        let (answer, summary) = native(&model, &adapter, &rows, &catalog);
        // Recommend: the same greedy answer, parsed into the same list, marked against the catalog.
        let page = &report["recommend"];
        eprintln!("page answer:\n{}", page["text"].as_str().unwrap_or(""));
        assert_eq!(page["text"].as_str(), Some(answer.as_str()), "the page's answer differs from native");
        let items = page["items"].as_array().expect("items");
        let native_items = parse_completion(&answer);
        assert!(!native_items.is_empty(), "the SFT adapter answers with a list: {answer:?}");
        assert_eq!(items.len(), native_items.len());
        for (it, want) in items.iter().zip(&native_items) {
            assert_eq!((it["title"].as_str(), it["year"].as_i64()), (Some(want.title.as_str()), Some(want.year)));
            assert_eq!(it["in_catalog"].as_bool(), Some(catalog.contains(&want.title, want.year)));
        }
        // Evaluate: the same numbers as native on the same rows.
        let page_summary = &report["evaluate"]["summary"];
        eprintln!("page summary: {page_summary}\nnative summary: {summary}");
        assert_eq!(page_summary["rows"], ROWS);
        for (name, want) in summary.as_object().unwrap() {
            let (got, want) = (&page_summary[name], want);
            let close = |a: &serde_json::Value, b: &serde_json::Value| match (a.as_f64(), b.as_f64()) {
                (Some(a), Some(b)) => (a - b).abs() <= 1e-12,
                _ => a == b,
            };
            let same = match want {
                serde_json::Value::Object(o) => o.iter().all(|(k, v)| close(&got[k], v)),
                v => close(got, v),
            };
            assert!(same, "{name}: page {got} vs native {want}");
        }
        // Benchmark: measured cases with positive rates.
        let cases = report["benchmark"]["cases"].as_array().expect("benchmark cases");
        assert!(!cases.is_empty(), "no benchmark case ran: {}", report["benchmark"]);
        for c in cases {
            assert!(c["secs"].as_f64().is_some_and(|s| s > 0.0), "{c}");
            assert!(c["gflops"].as_f64().is_some_and(|g| g > 0.0), "{c}");
        }
    }
}

mod training {
    use super::*;
    use base64::Engine as _;
    use convrec_core::model::gpu::GpuModel;
    use convrec_core::rec::parse_dataset;
    use convrec_core::train::lora::{LoraConfig, LoraLayout, Target};
    use convrec_core::train::sft::{SftConfig, SftTrainer, sft_examples};
    use sha2::Digest as _;

    const TEST: &str = "browser training";
    /// SFT steps compared with native, of a run long enough (20 epochs of 4 steps at lr 2e-2) for
    /// the tiny model to learn to answer "Title (Year)" and stop, so that RL samples earn rewards.
    const COMPARED_STEPS: usize = 5;
    const SFT_STEPS: usize = 80;
    const SFT_EPOCHS: usize = 20;
    const CATALOG: [(&str, i32); 6] =
        [("Up", 2009), ("Heat", 1995), ("Jaws", 1975), ("Alien", 1979), ("Big", 1988), ("Fargo", 1996)];

    /// A tiny random model as an HF folder the page can load: the Llama fixture with a byte-level
    /// tokenizer and ChatML; rows whose answers are catalog titles; the catalog.
    fn files(dir: &Path) -> ServedFiles {
        let src = workspace_root().join("tests/fixtures/models/llama_gqa");
        let model = dir.join("tiny-llama");
        std::fs::create_dir_all(&model).unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(src.join(f), model.join(f)).unwrap();
        }
        std::fs::write(model.join("tokenizer.json"), convrec_core::testing::byte_level_tokenizer_json(320)).unwrap();
        std::fs::write(model.join("tokenizer_config.json"), r#"{"eos_token": "<|im_end|>"}"#).unwrap();
        let rows: String = (0..8)
            .map(|i| {
                let (seen, _) = CATALOG[i % 6];
                let (title, year) = CATALOG[(i + 1) % 6];
                format!(
                    "{}\n",
                    serde_json::json!({"sample_id": format!("r{i}"),
                        "prompt": [{"role": "user", "content": format!("Liked {seen}. More?")}],
                        "completion": [{"role": "assistant", "content": format!("{title} ({year})")}],
                        "seen_titles": [seen], "groundtruth_with_release_year": [[title, year.to_string()]]})
                )
            })
            .collect();
        std::fs::write(dir.join("rows.jsonl"), rows).unwrap();
        let catalog: String = std::iter::once("title\tyear\n".to_string())
            .chain(CATALOG.iter().map(|(t, y)| format!("{t}\t{y}\n")))
            .collect();
        std::fs::write(dir.join("catalog.tsv"), catalog).unwrap();
        ServedFiles {
            model: Some(model),
            adapter: None,
            data: Some(dir.join("rows.jsonl")),
            catalog: Some(dir.join("catalog.tsv")),
        }
    }

    /// The same SFT steps through the core's trainer on this machine's Vulkan adapter (the code
    /// `convrec sft` runs: native/tests/experiment.rs shows the command gives the trainer's losses).
    fn native_sft_losses(dir: &Path) -> Vec<f64> {
        let gpu = convrec_core::testing::gpu().expect("a GPU adapter for the native side");
        let tm = convrec::text_model::load(&dir.join("tiny-llama")).unwrap();
        let rows = parse_dataset("rows.jsonl", &std::fs::read_to_string(dir.join("rows.jsonl")).unwrap()).unwrap();
        let examples = sft_examples(&tm, &rows, 64, "rows.jsonl").unwrap();
        let model = GpuModel::upload(&gpu, tm.config.clone(), tm.tensors.clone(), 128).unwrap();
        let layout = LoraLayout::new(&tm.config, LoraConfig { r: 4, alpha: 8.0, targets: Target::ALL.to_vec() });
        let config = SftConfig { lr: 2e-2, batch_size: 2, epochs: SFT_EPOCHS, seed: 3, ..SftConfig::default() };
        let mut trainer =
            pollster::block_on(SftTrainer::new(&gpu, layout.clone(), &layout.init(3), examples, config)).unwrap();
        (0..COMPARED_STEPS).map(|_| pollster::block_on(trainer.step(&gpu, &model)).unwrap().loss).collect()
    }

    #[test]
    fn the_page_trains_sft_then_rank_grpo_and_its_adapter_loads_natively() {
        let Some((chromium, pkg)) = browser_and_pkg(TEST) else { return };
        let dir = tempfile::tempdir().unwrap();
        let served = files(dir.path());
        let query = format!(
            "auto=train&report=/report&sft_steps={SFT_STEPS}&sft_epochs={SFT_EPOCHS}&rl_steps=2&sft_batch=2&sft_lr=0.02\
             &sft_r=4&sft_length=64&seed=3&group=4&rl_prompts=2&rl_lr=0.001&rl_tokens=16"
        );
        let report = run_page(&chromium, &pkg, &served, &query, Duration::from_secs(600));
        assert!(report.get("error").is_none(), "the page failed: {}", report["error"]);
        assert_self_check(&report["selfcheck"]);

        // SFT: the page's losses are the native trainer's.
        let page: Vec<f64> = report["sft"]["losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let native = native_sft_losses(dir.path());
        eprintln!("SFT losses: page {page:?}, native {native:?}; RL {}", report["rl"]);
        assert_eq!(page.len(), SFT_STEPS);
        assert!(page[SFT_STEPS - 1] < 0.25 * page[0], "the page's SFT learned the rows: {page:?}");
        for (step, (p, n)) in page.iter().zip(&native).enumerate() {
            assert!((p - n).abs() <= 1e-5 * n.abs(), "step {}: page {p} vs native {n}", step + 1);
        }

        // RL: two Rank-GRPO steps with finite numbers.
        let rl = &report["rl"];
        assert_eq!(rl["info"]["algo"], "rank-grpo");
        for key in ["losses", "grad_norms", "mean_rewards", "kl"] {
            let values = rl[key].as_array().unwrap_or_else(|| panic!("{key}: {rl}"));
            assert_eq!(values.len(), 2, "{key}: {rl}");
            assert!(values.iter().all(|v| v.as_f64().is_some_and(f64::is_finite)), "{key}: {rl}");
        }
        // The SFT adapter answers with a rewarded title and stops: the groups' rewards differ.
        assert!(rl["grad_norms"].as_array().unwrap().iter().any(|g| g.as_f64().unwrap() > 0.0), "{rl}");
        assert!(rl["mean_rewards"].as_array().unwrap().iter().any(|r| r.as_f64().unwrap() > 0.0), "{rl}");

        // The adapter: the bytes hash to the reported SHA-256 and load natively as a PEFT adapter.
        let adapter = &report["adapter"];
        let weights =
            base64::engine::general_purpose::STANDARD.decode(adapter["weights_base64"].as_str().unwrap()).unwrap();
        let sha: String = sha2::Sha256::digest(&weights).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(adapter["sha256"].as_str(), Some(sha.as_str()));
        let folder = dir.path().join("downloaded");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("adapter_config.json"), adapter["config"].as_str().unwrap()).unwrap();
        std::fs::write(folder.join("adapter_model.safetensors"), &weights).unwrap();
        let tm = convrec::text_model::load(&dir.path().join("tiny-llama")).unwrap();
        let (layout, params) = convrec::adapter_files::load_adapter(&folder, &tm.config).unwrap();
        assert_eq!((layout.config.r, layout.config.alpha), (4, 8.0));
        assert!(params.iter().all(|x| x.is_finite()) && params.iter().any(|&x| x != 0.0));
    }
}
