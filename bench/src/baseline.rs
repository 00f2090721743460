//! The ceiling measured in the same run: NumPy's sgemm (OpenBLAS) on this CPU, or PyTorch's
//! fp32 matmul (cuBLAS, TF32 off) on a CUDA device when one is named (`--torch-device cuda`).

/// Where the baseline products run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sgemm {
    Numpy,
    /// PyTorch on this device (e.g. "cuda"), through `python`.
    Torch {
        python: String,
        device: String,
    },
}

impl Sgemm {
    pub fn label(&self) -> String {
        match self {
            Sgemm::Numpy => "numpy".into(),
            Sgemm::Torch { device, .. } => format!("torch-{device}"),
        }
    }
}

/// Median seconds of `A[m,k] · B[k,n]` in float32 for each shape, or why it could not be measured.
pub fn sgemm(backend: &Sgemm, shapes: &[(usize, usize, usize)]) -> Result<Vec<f64>, String> {
    let list: Vec<String> = shapes.iter().map(|(m, k, n)| format!("({m},{k},{n})")).collect();
    // One product, timed: NumPy returns when done; CUDA needs a synchronise.
    let (python, setup, make, sync) = match backend {
        Sgemm::Numpy => ("python3".to_string(), "import numpy as np", "np.random.rand({}).astype(np.float32)", ""),
        Sgemm::Torch { python, device } => (
            python.clone(),
            "import torch; torch.backends.cuda.matmul.allow_tf32 = False",
            // `{}` is replaced by the shape below; the device is fixed per run.
            if device == "cuda" { "torch.rand({}, device='cuda')" } else { "torch.rand({})" },
            if device == "cuda" { "torch.cuda.synchronize()" } else { "" },
        ),
    };
    let script = format!(
        r#"
import time
{setup}
def sync():
    {sync_body}
for m, k, n in [{shapes}]:
    a = {a}; b = {b}
    a @ b; sync()
    t = time.perf_counter(); a @ b; sync(); once = time.perf_counter() - t
    reps = max(1, min(50, int(0.3 / max(1e-6, once))))
    ts = []
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps): a @ b
        sync()
        ts.append((time.perf_counter() - t) / reps)
    print(sorted(ts)[1])
"#,
        sync_body = if sync.is_empty() { "pass" } else { sync },
        shapes = list.join(","),
        a = make.replace("{}", "m, k"),
        b = make.replace("{}", "k, n"),
    );
    let out = crate::python::run(&python, &script, &[]).map_err(|e| format!("{} baseline: {e}", backend.label()))?;
    out.lines().map(|l| l.trim().parse::<f64>().map_err(|e| e.to_string())).collect()
}
