//! The CPU ceiling measured in the same run: NumPy's sgemm (OpenBLAS) through python3.

use std::process::Command;

/// Median seconds of `A[m,k] · B[k,n]` in float32 for each shape, or why it could not be measured.
pub fn numpy_sgemm(shapes: &[(usize, usize, usize)]) -> Result<Vec<f64>, String> {
    let list: Vec<String> = shapes.iter().map(|(m, k, n)| format!("({m},{k},{n})")).collect();
    let script = format!(
        r#"
import time, numpy as np
for m, k, n in [{}]:
    a = np.random.rand(m, k).astype(np.float32); b = np.random.rand(k, n).astype(np.float32)
    a @ b
    reps = max(1, min(50, int(0.3 / max(1e-6, (lambda t: (a @ b, time.perf_counter() - t)[1])(time.perf_counter())))))
    ts = []
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps): a @ b
        ts.append((time.perf_counter() - t) / reps)
    print(sorted(ts)[1])
"#,
        list.join(",")
    );
    let out =
        Command::new("python3").args(["-c", &script]).output().map_err(|e| format!("python3 not runnable: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "numpy baseline failed: {}",
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
        ));
    }
    String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().parse::<f64>().map_err(|e| e.to_string())).collect()
}
