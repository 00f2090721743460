//! `convrec objective` as a user runs it: hand-computed groups at every level, zero-variance
//! groups, malformed lines, random groups against the CPU reference (loss) and its finite
//! differences (gradient), and real tokens of the default model's GGUF. The tokenizer is a small
//! hand-written word-level `tokenizer.json`, so every token's text (and item) is known.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use convrec_core::rl::advantage::{Level, Segmented, token_advantages};
use convrec_core::rl::objective::{GroupTokens, ObjectiveConfig, loss_ref};
use convrec_core::rl::segment::{completion_len, item_ids};
use convrec_core::testing::{self, fd_grad, rel_err};
use rand::Rng;
use serde_json::{Value, json};

/// The test vocabulary: id → text. 7 is the end token.
const VOCAB: [&str; 11] = ["<unk>", "A", "B", "C", " (2000)", "\n", "\n\n", "<|im_end|>", ")\n", " (", "1999"];
const EOS: u32 = 7;

fn tokenizer_json() -> String {
    let vocab: serde_json::Map<String, Value> =
        VOCAB.iter().enumerate().map(|(i, t)| (t.to_string(), json!(i))).collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": EOS, "content": "<|im_end|>", "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
    .to_string()
}

/// A fresh folder for one test's files, with the tokenizer in it (`tokenizer.json`).
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("objective").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the scratch folder");
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json()).unwrap();
    dir
}

fn write_lines(path: &Path, lines: &[Value]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn objective(tokenizer: &Path, input: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_convrec"))
        .arg("objective")
        .arg("--tokenizer")
        .arg(tokenizer)
        .arg("--input")
        .arg(input)
        .args(extra)
        .output()
        .expect("run convrec objective")
}

fn parse_lines(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

fn stdout_lines(out: &Output) -> Vec<Value> {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    parse_lines(&String::from_utf8_lossy(&out.stdout))
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().expect("a list").iter().map(|x| x.as_f64().expect("a number")).collect()
}

fn nested(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().expect("a list of lists").iter().map(floats).collect()
}

fn assert_close(got: &[Vec<f64>], want: &[Vec<f64>], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.len(), w.len(), "{what}: {got:?} vs {want:?}");
        assert!(g.iter().zip(w).all(|(a, b)| (a - b).abs() <= tol), "{what}: {got:?} vs {want:?}");
    }
}

fn completion(ids: &[u32], logp: &[f32], old: &[f32], reference: &[f32]) -> Value {
    json!({"token_ids": ids, "logp": logp, "old_logp": old, "ref_logp": reference})
}

/// An on-policy completion (old = ref = logp = −1 everywhere: every ratio 1, KL 0).
fn on_policy(ids: &[u32]) -> Value {
    let ones = vec![-1.0f32; ids.len()];
    completion(ids, &ones, &ones, &ones)
}

fn group(level: &str, beta: f64, rec_num: usize, rewards: Value, completions: Vec<Value>) -> Value {
    json!({"level": level, "eps_low": 0.2, "eps_high": 0.28, "beta": beta, "rec_num": rec_num, "eos_id": EOS,
           "rewards": rewards, "completions": completions})
}

#[test]
fn hand_computed_losses_and_gradients_at_every_level() {
    if testing::gpu().is_none() {
        return;
    }
    let dir = scratch("hand_computed");
    // Completion 0: "A (2000)\nB (2000)<eot>" — items 0,0,0 | 1,1,1, ended with rec_num = 2 items.
    // Completion 1: "C (2000)<eot>" — items 0,0,0, ended with 1 item < 2.
    let comps = || vec![on_policy(&[1, 4, 5, 2, 4, EOS]), on_policy(&[3, 4, EOS])];
    // Completion 1 never produced rank 1, so its rank-1 reward counts as 0: both ranks are (1, 0).
    let rewards = json!([[1.0, 1.0], [0.0, 1.0]]);
    let input = dir.join("groups.jsonl");
    write_lines(
        &input,
        &[
            group("item", 0.0, 2, rewards.clone(), comps()),
            group("token", 0.0, 2, rewards.clone(), comps()),
            group("sequence", 0.0, 2, rewards, comps()),
        ],
    );
    let out_file = dir.join("out").join("objective.jsonl");
    let out = objective(&dir.join("tokenizer.json"), &input, &["--out", out_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty(), "--out leaves stdout empty");
    let lines = parse_lines(&std::fs::read_to_string(&out_file).expect("the --out file"));
    assert_eq!(lines.len(), 3);

    // Group-relative advantage of (1, 0): ±0.5 / (std 0.7071 + 1e-4), std unbiased.
    let a = 0.5 / (0.5f64.sqrt() + 1e-4);
    let n = 9.0; // tokens in the group: bnpo divides by 9
    // Ratio 1 and β = 0: loss = −Σ A_t / 9 at every level.
    // Item: the end tokens carry only the shaping (+0.1 with exactly 2 items, −0.1 with fewer).
    let item = &lines[0];
    assert_close(&nested(&item["advantages"]), &[vec![a, a, a, a, a, 0.1], vec![-a, -a, -0.1]], 1e-6, "item adv");
    assert!((item["loss"].as_f64().unwrap() + 3.0 * a / n).abs() < 1e-6, "{item}");
    // The ratio of a rank is the geometric mean over its tokens, so each token's gradient is
    // −(the mean advantage of its rank) / 9.
    let (g0, g1) = (-a / n, -(2.0 * a + 0.1) / (3.0 * n));
    assert_close(&nested(&item["grad_logp"]), &[vec![g0, g0, g0, g1, g1, g1], vec![-g1, -g1, -g1]], 1e-6, "item grad");

    // Token and sequence: rewards[i][0] broadcast, no shaping; every token of a completion has the
    // same advantage, so the gradient is −A / 9 at both levels.
    for line in &lines[1..] {
        assert_close(&nested(&line["advantages"]), &[vec![a; 6], vec![-a; 3]], 1e-6, "token/sequence adv");
        assert!((line["loss"].as_f64().unwrap() + 3.0 * a / n).abs() < 1e-6, "{line}");
        assert_close(&nested(&line["grad_logp"]), &[vec![-a / n; 6], vec![a / n; 3]], 1e-6, "token/sequence grad");
    }
}

#[test]
fn zero_variance_groups_give_zero_advantages_and_only_the_kl_term() {
    if testing::gpu().is_none() {
        return;
    }
    let dir = scratch("zero_variance");
    // Token level, equal rewards; ref = logp + ln 2, so d = ln 2 and KL_t = 2 − ln 2 − 1 per token.
    let ln2 = std::f32::consts::LN_2;
    let lp = [-1.0f32; 4];
    let shifted: Vec<f32> = lp.iter().map(|x| x + ln2).collect();
    let kl_group = group(
        "token",
        0.5,
        20,
        json!([[0.5], [0.5]]),
        vec![
            completion(&[1, 5, 2], &lp[..3], &lp[..3], &shifted[..3]),
            completion(&[3], &lp[..1], &lp[..1], &shifted[..1]),
        ],
    );
    // Item level, equal per-rank rewards and both completions cut (no end token, so no shaping).
    let cut =
        group("item", 0.0, 2, json!([[1.0, 0.0], [1.0, 0.0]]), vec![on_policy(&[1, 4, 8, 2]), on_policy(&[1, 5, 3])]);
    let input = dir.join("groups.jsonl");
    write_lines(&input, &[kl_group, cut]);
    // The tokenizer from its folder this time.
    let lines = stdout_lines(&objective(&dir, &input, &[]));

    assert_close(&nested(&lines[0]["advantages"]), &[vec![0.0; 3], vec![0.0]], 0.0, "equal rewards");
    let kl = 1.0 - 2f64.ln();
    assert!((lines[0]["loss"].as_f64().unwrap() - 0.5 * kl).abs() < 1e-6, "β · mean KL: {}", lines[0]);
    // ∂(β KL_t / 4)/∂logp_t = β (1 − e^d) / 4 = −0.5 / 4.
    assert_close(&nested(&lines[0]["grad_logp"]), &[vec![-0.125; 3], vec![-0.125]], 1e-6, "KL gradient");

    assert_close(&nested(&lines[1]["advantages"]), &[vec![0.0; 4], vec![0.0; 3]], 0.0, "cut, equal rewards");
    assert_eq!(lines[1]["loss"].as_f64().unwrap(), 0.0);
    assert_close(&nested(&lines[1]["grad_logp"]), &[vec![0.0; 4], vec![0.0; 3]], 0.0, "no gradient");
}

#[test]
fn malformed_lines_are_errors_naming_the_file_and_line() {
    let dir = scratch("malformed");
    let good = group("item", 0.0, 2, json!([[1, 0], [0, 1]]), vec![on_policy(&[1, 5, EOS]), on_policy(&[2, EOS])]);
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut g = good.clone();
        edit(&mut g);
        g
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "short logp",
            with(&|g| {
                g["completions"][1]["logp"] = json!([-1.0]);
            }),
            "completions[1]: logp has 1 values for 2 token_ids",
        ),
        (
            "long ref_logp",
            with(&|g| {
                g["completions"][0]["ref_logp"] = json!([-1.0, -1.0, -1.0, -1.0]);
            }),
            "completions[0]: ref_logp has 4 values for 3 token_ids",
        ),
        (
            "missing old_logp",
            with(&|g| {
                g["completions"][0].as_object_mut().unwrap().remove("old_logp");
            }),
            "missing field `old_logp`",
        ),
        (
            "rewards per rank",
            with(&|g| {
                g["rewards"][1] = json!([1]);
            }),
            "rewards[1] has 1 values; level \"item\" needs one per rank (rec_num = 2)",
        ),
        (
            "rewards per completion",
            with(&|g| {
                g["rewards"] = json!([[1, 0]]);
            }),
            "rewards has 1 lists for 2 completions",
        ),
        (
            "empty sequence reward",
            with(&|g| {
                g["level"] = json!("sequence");
                g["rewards"][0] = json!([]);
            }),
            "rewards[0] is empty",
        ),
        (
            "unknown level",
            with(&|g| {
                g["level"] = json!("rank");
            }),
            "unknown variant `rank`, expected one of `item`, `token`, `sequence`",
        ),
        (
            "tokens after the end",
            with(&|g| {
                g["completions"][0] = on_policy(&[1, EOS, 2]);
            }),
            "completions[0]: token 1 is the end token (eos_id 7) but 1 more follow",
        ),
        (
            "id outside the vocabulary",
            with(&|g| {
                g["completions"][1] = on_policy(&[2, 99]);
            }),
            "completions[1].token_ids[1] = 99 is not in the tokenizer's vocabulary",
        ),
        (
            "rec_num too large",
            with(&|g| {
                g["rec_num"] = json!(64);
            }),
            "rec_num is 64; the objective takes 1 to 63",
        ),
        ("not an object", json!([1, 2]), "expected a JSON object"),
    ];
    let input = dir.join("bad.jsonl");
    for (name, bad, want) in cases {
        // Line 1 is good, line 2 blank, line 3 bad: nothing is written and the line is named.
        std::fs::write(&input, format!("{good}\n\n{bad}\n")).unwrap();
        let out = objective(&dir.join("tokenizer.json"), &input, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: should fail");
        assert!(out.stdout.is_empty(), "{name}: wrote output");
        assert!(err.contains("bad.jsonl: line 3: ") && err.contains(want), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
    std::fs::write(&input, format!("{good}\n{{\"level\": \n")).unwrap();
    let err = String::from_utf8_lossy(&objective(&dir.join("tokenizer.json"), &input, &[]).stderr).into_owned();
    assert!(err.contains("bad.jsonl: line 2: invalid JSON"), "{err}");
}

/// A random completion over the test vocabulary: ended or cut, with log-probs near the policy
/// that sampled it (so some ratios leave the clip range).
fn random_completion(rng: &mut rand::rngs::StdRng) -> (Vec<u32>, [Vec<f32>; 3]) {
    let len = rng.random_range(1..25);
    let words = [1u32, 2, 3, 4, 5, 6, 8, 9, 10];
    let mut ids: Vec<u32> = (0..len).map(|_| words[rng.random_range(0..words.len())]).collect();
    if rng.random::<f32>() < 0.7 {
        ids.push(EOS);
    }
    let logp: Vec<f32> = ids.iter().map(|_| -rng.random_range(0.05f32..3.0)).collect();
    let old = logp.iter().map(|x| x + rng.random_range(-0.3f32..0.3)).collect();
    let reference = logp.iter().map(|x| x + rng.random_range(-0.5f32..0.5)).collect();
    (ids, [logp, old, reference])
}

#[test]
fn matches_the_cpu_reference_on_random_groups_at_every_level() {
    if testing::gpu().is_none() {
        return;
    }
    let dir = scratch("random");
    let mut rng = testing::rng("objective command vs reference");
    struct Case {
        cfg: ObjectiveConfig,
        rewards: Vec<Vec<f64>>,
        completions: Vec<(Vec<u32>, [Vec<f32>; 3])>,
    }
    let mut cases = Vec::new();
    for level in [Level::Item, Level::Token, Level::Sequence] {
        for _ in 0..3 {
            let rec_num = rng.random_range(1..6);
            let cfg = ObjectiveConfig { rec_num, beta: 0.05, ..ObjectiveConfig::defaults(level) };
            let g = rng.random_range(2..7);
            let completions: Vec<_> = (0..g).map(|_| random_completion(&mut rng)).collect();
            let rewards = (0..g)
                .map(|_| {
                    (0..rec_num).map(|_| if rng.random::<bool>() { rng.random_range(0.0..1.0) } else { 0.0 }).collect()
                })
                .collect();
            cases.push(Case { cfg, rewards, completions });
        }
    }
    let lines: Vec<Value> = cases
        .iter()
        .map(|c| {
            json!({"level": c.cfg.level, "eps_low": c.cfg.eps_low, "eps_high": c.cfg.eps_high, "beta": c.cfg.beta,
                   "rec_num": c.cfg.rec_num, "eos_id": EOS, "rewards": c.rewards,
                   "completions": c.completions.iter().map(|(ids, [lp, old, r])| completion(ids, lp, old, r)).collect::<Vec<_>>()})
        })
        .collect();
    let input = dir.join("random.jsonl");
    write_lines(&input, &lines);
    let got = stdout_lines(&objective(&dir.join("tokenizer.json"), &input, &[]));
    assert_eq!(got.len(), cases.len());

    for (case, out) in cases.iter().zip(&got) {
        let level = case.cfg.level;
        // The same pipeline on the CPU: segmentation of the known token texts, advantages, layout.
        let segmented: Vec<Segmented> = case
            .completions
            .iter()
            .map(|(ids, _)| {
                let (len, ended) = completion_len(ids, &[EOS]);
                assert_eq!(len, ids.len());
                let texts: Vec<String> = ids.iter().map(|&i| VOCAB[i as usize].to_string()).collect();
                Segmented { items: item_ids(&texts), ended }
            })
            .collect();
        let adv = token_advantages(level, &case.rewards, &segmented, case.cfg.rec_num);
        let per = |k: usize| case.completions.iter().map(|(_, v)| v[k].clone()).collect::<Vec<_>>();
        let items: Vec<Vec<usize>> = segmented.iter().map(|s| s.items.clone()).collect();
        let tokens = GroupTokens::concat(&items, &adv, &per(0), &per(1), &per(2)).unwrap();

        let adv64: Vec<Vec<f64>> = adv.iter().map(|a| a.iter().map(|&x| x as f64).collect()).collect();
        assert_close(&nested(&out["advantages"]), &adv64, 1e-6, &format!("{level:?} advantages"));
        let logp: Vec<f64> = tokens.logp.iter().map(|&x| x as f64).collect();
        let want = loss_ref(&case.cfg, &tokens, &logp);
        let loss = out["loss"].as_f64().unwrap();
        assert!((loss - want).abs() <= 1e-5 * (1.0 + want.abs()), "{level:?}: loss {loss} vs reference {want}");
        // The gradient against finite differences of the reference (kinks at the clip boundaries
        // are hit with negligible probability).
        let fd: Vec<f32> = fd_grad(&|x| loss_ref(&case.cfg, &tokens, x), &logp).iter().map(|&x| x as f32).collect();
        let grad: Vec<f32> = nested(&out["grad_logp"]).concat().iter().map(|&x| x as f32).collect();
        let err = rel_err(&grad, &fd);
        assert!(err <= 1e-3, "{level:?}: gradient rel. error {err:e}");
    }
}

#[test]
fn segments_real_tokens_from_the_default_models_gguf() {
    if testing::gpu().is_none() {
        return;
    }
    let model = match convrec::default_model_path() {
        Ok(p) => p,
        Err(e) if testing::in_ci() => panic!("CI is set but the default model could not be fetched: {e:#}"),
        Err(e) => {
            println!("SKIPPED: default model unavailable: {e:#}");
            return;
        }
    };
    let tokenize = |text: &str| -> Value {
        let out = Command::new(env!("CARGO_BIN_EXE_convrec"))
            .args(["tokenize", "--model", model.to_str().unwrap(), "--text", text])
            .output()
            .expect("run convrec tokenize");
        stdout_lines(&out).remove(0)
    };
    let eos = tokenize("<|im_end|>")["ids"][0].as_u64().unwrap() as u32;
    let a = tokenize("Heat (1995)\nUp (2009)");
    let b = tokenize("Alien (1979)\nSe7en (1995)");
    let ids = |t: &Value| -> Vec<u32> {
        let mut v: Vec<u32> = t["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        v.push(eos);
        v
    };
    // Tokens up to and including the first one whose text holds the newline are item 0.
    let first_item_len = |t: &Value| {
        t["tokens"].as_array().unwrap().iter().position(|s| s.as_str().unwrap().contains('\n')).unwrap() + 1
    };
    let dir = scratch("gguf");
    let input = dir.join("real.jsonl");
    // Opposite rewards per rank: rank 0 favours completion 0, rank 1 completion 1.
    write_lines(
        &input,
        &[json!({"level": "item", "eps_low": 0.06, "eps_high": 0.08, "beta": 0.0, "rec_num": 2, "eos_id": eos,
                 "rewards": [[1, 0], [0, 1]], "completions": [on_policy(&ids(&a)), on_policy(&ids(&b))]})],
    );
    let out = &stdout_lines(&objective(&model, &input, &[]))[0];
    let x = 0.5 / (0.5f64.sqrt() + 1e-4);
    for (i, (t, sign)) in [(&a, 1.0), (&b, -1.0)].into_iter().enumerate() {
        let n = ids(t).len();
        let k = first_item_len(t);
        let mut want = vec![sign * x; k];
        want.resize(n - 1, -sign * x);
        want.push(0.1); // 2 items, ended: the end token's shaping only
        assert_close(&nested(&out["advantages"])[i..i + 1], &[want], 1e-6, "real tokens");
    }
}
