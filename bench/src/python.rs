//! Python baselines. Their scripts are embedded in the binary, so the baselines run from any
//! working directory and where only the binary was copied; each is fed to the chosen interpreter
//! on standard input (`python - ARGS…`). A missing interpreter or module is reported in words
//! for the output, never as an error: a benchmark without its baseline still says what it can.

use std::io::Write as _;
use std::process::{Command, Stdio};

use serde_json::Value;

/// The model baselines (generate, train, rl), `bench/baselines/torch_model.py`.
pub const TORCH_MODEL: &str = include_str!("../baselines/torch_model.py");

/// Runs `script` with `args` through `python` and returns its standard output, or why it could
/// not run.
pub fn run(python: &str, script: &str, args: &[&str]) -> Result<String, String> {
    let mut child = Command::new(python)
        .arg("-")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("`{python}` could not be started ({e}); pass --python or set CONVREC_TORCH_PYTHON"))?;
    // The interpreter reads the whole script before it runs it, so this cannot block on a full
    // output pipe.
    let written = child.stdin.take().expect("piped stdin").write_all(script.as_bytes());
    let out = child.wait_with_output().map_err(|e| format!("`{python}` did not finish: {e}"))?;
    if !out.status.success() || written.is_err() {
        return Err(explain(python, &String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Why a script failed, from its standard error: a missing module by name, else the last line.
fn explain(python: &str, stderr: &str) -> String {
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message").trim();
    match last.split_once("No module named ") {
        Some((_, module)) => format!(
            "`{python}` has no {module} module (install torch, transformers and peft, or pass --python / set \
             CONVREC_TORCH_PYTHON)"
        ),
        None => format!("`{python}` failed: {last}"),
    }
}

/// The last line of a script's output as JSON.
pub fn last_json(stdout: &str) -> Result<Value, String> {
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty()).ok_or("the script printed nothing")?;
    serde_json::from_str(line).map_err(|e| format!("unreadable baseline output ({e}): {line}"))
}

/// PyTorch precisions a model baseline can run at.
pub const PRECISIONS: [&str; 2] = ["fp32", "bf16"];

/// How to run the PyTorch model baselines; shared by `model` and `rl-step`.
#[derive(clap::Args, Clone, Debug)]
pub struct TorchArgs {
    /// Skip the PyTorch baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// Run the PyTorch baseline on this device (e.g. cuda) instead of the CPU.
    #[arg(long, default_value = "cpu")]
    pub torch_device: String,
    /// Python with torch, transformers and peft for the baseline.
    #[arg(long, env = "CONVREC_TORCH_PYTHON", default_value = "python3")]
    pub python: String,
    /// Baseline precision: fp32 (eager attention), bf16 (autocast, SDPA, float32 LoRA weights)
    /// or both. Default: the command's choice on CUDA, fp32 on the CPU (where bf16 is slow).
    #[arg(long, value_parser = ["fp32", "bf16", "both"])]
    pub torch_precision: Option<String>,
}

/// One baseline's outcome: its label (`torch-fp32`…) and its JSON, or why it is missing.
pub struct Baseline {
    pub label: String,
    pub result: Result<Value, String>,
}

impl Baseline {
    /// A number from the baseline's JSON, by path (`["8", "decode_tok_s"]`).
    pub fn number(&self, path: &[&str]) -> Option<f64> {
        let v = self.result.as_ref().ok()?;
        path.iter().try_fold(v, |v, k| v.get(*k))?.as_f64()
    }
}

impl TorchArgs {
    /// The precisions to run: as asked, else `on_cuda` on a CUDA device and fp32 elsewhere.
    pub fn precisions(&self, on_cuda: &[&'static str]) -> Vec<&'static str> {
        match self.torch_precision.as_deref() {
            Some("both") => PRECISIONS.to_vec(),
            Some(p) => PRECISIONS.iter().copied().filter(|&q| q == p).collect(),
            None if self.torch_device.starts_with("cuda") => on_cuda.to_vec(),
            None => vec!["fp32"],
        }
    }

    /// Runs `mode` of the model script at each precision with `config` (plus device and
    /// precision); none when `--no-baseline`. A missing baseline is printed with its reason.
    pub fn run(&self, mode: &str, config: &Value, on_cuda: &[&'static str]) -> Vec<Baseline> {
        if self.no_baseline {
            return Vec::new();
        }
        self.precisions(on_cuda)
            .into_iter()
            .map(|precision| {
                let mut cfg = config.clone();
                cfg["device"] = self.torch_device.clone().into();
                cfg["precision"] = precision.into();
                let result = run(&self.python, TORCH_MODEL, &[mode, &cfg.to_string()]).and_then(|out| last_json(&out));
                let label = format!("torch-{precision}");
                if let Err(e) = &result {
                    println!("PyTorch baseline {label} ({mode}) not measured: {e}");
                }
                Baseline { label, result }
            })
            .collect()
    }
}

/// One compared metric: convrec's value and each baseline's.
pub struct Row {
    pub label: String,
    pub ours: f64,
    pub theirs: Vec<Option<f64>>,
    /// Seconds and bytes: the ratio is then theirs / ours.
    pub lower_is_better: bool,
}

impl Row {
    pub fn higher(label: &str, ours: f64, theirs: Vec<Option<f64>>) -> Self {
        Row { label: label.to_string(), ours, theirs, lower_is_better: false }
    }
    pub fn lower(label: &str, ours: f64, theirs: Vec<Option<f64>>) -> Self {
        Row { label: label.to_string(), ours, theirs, lower_is_better: true }
    }
}

/// Prints a header and rows comparing convrec's numbers with each baseline's, each with the ratio
/// that reads "convrec is N× as good": convrec / baseline for rates, baseline / convrec for
/// seconds and memory.
pub fn print_comparison(first: &str, baselines: &[Baseline], rows: &[Row]) {
    let mut header = format!("{first:<52} {:>12}", "convrec");
    for b in baselines {
        header += &format!(" {:>12} {:>7}", b.label, "ratio");
    }
    println!("{header}");
    for row in rows {
        let mut line = format!("{:<52} {:>12}", row.label, number(row.ours));
        for t in &row.theirs {
            let ratio = t.map(|t| if row.lower_is_better { t / row.ours } else { row.ours / t });
            line += &format!(
                " {:>12} {:>7}",
                t.map_or("-".to_string(), number),
                ratio.map_or("-".to_string(), |r| format!("{r:.2}"))
            );
        }
        println!("{line}");
    }
    if !baselines.is_empty() {
        println!("(ratio > 1: convrec ahead — faster, or less memory)");
    }
}

/// Three significant figures at most, no exponent.
pub fn number(v: f64) -> String {
    match v.abs() {
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_interpreter_or_module_is_explained() {
        let err = run("convrec-no-such-python", "print(1)", &[]).unwrap_err();
        assert!(err.contains("could not be started") && err.contains("CONVREC_TORCH_PYTHON"), "{err}");
        let trace = "Traceback (most recent call last):\n  File \"<stdin>\", line 12\nModuleNotFoundError: No module named 'torch'\n";
        let err = explain("python3", trace);
        assert!(err.contains("no 'torch' module"), "{err}");
        assert_eq!(explain("py", "boom\nValueError: bad\n\n"), "`py` failed: ValueError: bad");
    }

    #[test]
    fn precisions_default_by_device() {
        let args = |device: &str, p: Option<&str>| TorchArgs {
            no_baseline: false,
            torch_device: device.into(),
            python: "python3".into(),
            torch_precision: p.map(String::from),
        };
        assert_eq!(args("cpu", None).precisions(&["fp32", "bf16"]), ["fp32"]);
        assert_eq!(args("cuda", None).precisions(&["fp32", "bf16"]), ["fp32", "bf16"]);
        assert_eq!(args("cuda", None).precisions(&["bf16"]), ["bf16"]);
        assert_eq!(args("cpu", Some("both")).precisions(&["bf16"]), ["fp32", "bf16"]);
        assert_eq!(args("cuda", Some("fp32")).precisions(&["bf16"]), ["fp32"]);
    }

    #[test]
    fn the_model_script_is_embedded_and_reads_its_arguments() {
        assert!(TORCH_MODEL.contains("def rl(c)") && TORCH_MODEL.contains("sys.argv[1]"));
        assert_eq!(last_json("noise\n{\"a\": 1}\n\n").unwrap()["a"], 1);
        assert!(last_json("").is_err());
    }
}
