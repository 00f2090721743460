//! `convrec devices`: what GPUs this machine offers and what convrec can use on each.

use convrec_core::GpuOptions;
use convrec_core::gpu::{AdapterSummary, list_adapters};

#[derive(clap::Args)]
pub struct Args {
    /// The adapter `--check` runs on (same as the global `--gpu`).
    #[arg(long)]
    pub adapter: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also run the GPU self-check (kernels against CPU references) on the selected adapter.
    #[arg(long)]
    check: bool,
}

pub fn run(options: &GpuOptions, args: Args) -> anyhow::Result<()> {
    let adapters = pollster::block_on(list_adapters());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&adapters)?);
    } else if adapters.is_empty() {
        println!(
            "no GPU adapters found; on a CPU-only Linux machine install Mesa's lavapipe: apt-get install mesa-vulkan-drivers"
        );
    } else {
        for (i, a) in adapters.iter().enumerate() {
            print_adapter(i, a);
        }
    }
    if args.check {
        let gpu = super::open_gpu(options)?;
        super::run_self_check(&gpu, true)?;
    }
    Ok(())
}

fn print_adapter(index: usize, a: &AdapterSummary) {
    let l = &a.limits;
    let yes = |b: bool| if b { "yes" } else { "no" };
    println!("[{index}] {}", a.name);
    println!("    backend {}, type {}, driver {} {}", a.backend, a.device_type, a.driver, a.driver_info);
    println!(
        "    shader-f16 {}, subgroups {} (sizes {}..{}), timestamp queries {}",
        yes(a.shader_f16),
        yes(a.subgroups),
        a.subgroup_sizes.0,
        a.subgroup_sizes.1,
        yes(a.timestamp_queries)
    );
    if a.cooperative_matrix.is_empty() {
        println!("    cooperative matrices (tensor cores): no");
    } else {
        let shapes: Vec<String> = a
            .cooperative_matrix
            .iter()
            .map(|c| format!("{}x{}x{} {}->{}", c.m, c.n, c.k, c.operands, c.accumulator))
            .collect();
        println!("    cooperative matrices (tensor cores): {}", shapes.join(", "));
    }
    match convrec_core::TensorCores::of(a) {
        Some(tc) => println!("    --precision mixed: yes ({}x{} f16 tiles, f32 accumulation)", tc.tile, tc.tile),
        None => println!("    --precision mixed: no (products stay f32)"),
    }
    println!(
        "    max buffer {} MiB, max storage binding {} MiB, {} storage buffers/stage",
        l.max_buffer_size >> 20,
        l.max_storage_buffer_binding_size >> 20,
        l.max_storage_buffers_per_shader_stage
    );
    println!(
        "    workgroup: {} B shared, {} invocations, size {:?}, {} groups/dimension",
        l.max_compute_workgroup_storage_size,
        l.max_compute_invocations_per_workgroup,
        l.max_compute_workgroup_size,
        l.max_compute_workgroups_per_dimension
    );
}
