//! Every WGSL file, in every specialisation the code can compile, is validated by naga under
//! WebGPU's capabilities and default workgroup limits and translated to SPIR-V (Vulkan), MSL
//! (Metal) and HLSL (DX12): the portability check for platforms CI does not have.

use std::collections::BTreeSet;

use convrec_core::ops::all_specializations;
use convrec_core::ops::matmul::coop_specializations;
use convrec_core::shaders::{self, Variant};
use naga::valid::{Capabilities, ValidationFlags, Validator};

/// WebGPU's default `maxComputeWorkgroupStorageSize` and `maxComputeInvocationsPerWorkgroup`,
/// which naga's validator does not check: an entry point past them fails on adapters that grant
/// no more.
const WORKGROUP_STORAGE_BYTES: u32 = 16384;
const INVOCATIONS_PER_WORKGROUP: u32 = 256;

/// The workgroup memory the entry point uses (through the functions it calls too) and its
/// workgroup size, against WebGPU's defaults.
fn within_webgpu_default_limits(
    module: &naga::Module,
    info: &naga::valid::ModuleInfo,
    index: usize,
) -> Result<(), String> {
    let uses = info.get_entry_point(index);
    let bytes: u32 = module
        .global_variables
        .iter()
        .filter(|(h, var)| var.space == naga::AddressSpace::WorkGroup && !uses[*h].is_empty())
        .map(|(_, var)| module.types[var.ty].inner.size(module.to_ctx()))
        .sum();
    if bytes > WORKGROUP_STORAGE_BYTES {
        return Err(format!("{bytes} bytes of workgroup memory (WebGPU's default limit: {WORKGROUP_STORAGE_BYTES})"));
    }
    let invocations: u32 = module.entry_points[index].workgroup_size.iter().product();
    if invocations > INVOCATIONS_PER_WORKGROUP {
        return Err(format!(
            "{invocations} invocations per workgroup (WebGPU's default limit: {INVOCATIONS_PER_WORKGROUP})"
        ));
    }
    Ok(())
}

fn translate(variant: &Variant) -> Result<(), String> {
    // Only what every WebGPU adapter has: no optional features. naga counts
    // `unpack2x16float` (core WGSL) as SHADER_FLOAT16_IN_FLOAT32, which wgpu grants to every
    // WebGPU-compliant adapter (DownlevelFlags::SHADER_F16_IN_F32 is part of `compliant()`).
    translate_with(variant, Capabilities::SHADER_FLOAT16_IN_FLOAT32, false)
}

/// What a device opened with cooperative matrices grants (`--precision mixed`).
fn tensor_core_capabilities() -> Capabilities {
    Capabilities::SHADER_FLOAT16_IN_FLOAT32
        | Capabilities::SHADER_FLOAT16
        | Capabilities::SUBGROUP
        | Capabilities::COOPERATIVE_MATRIX
}

/// Validates under `caps` and translates to SPIR-V, MSL and HLSL; `tensor_cores`: MSL 2.3 (simdgroup
/// matrices) and no HLSL, which naga does not write for cooperative matrices.
fn translate_with(variant: &Variant, caps: Capabilities, tensor_cores: bool) -> Result<(), String> {
    let source = variant.render();
    let label = variant.label();
    let module = naga::front::wgsl::parse_str(&source).map_err(|e| {
        format!("{label}: WGSL parse error:\n{}", e.emit_to_string_with_path(&source, variant.shader().file))
    })?;
    let info = Validator::new(ValidationFlags::all(), caps)
        .validate(&module)
        .map_err(|e| format!("{label}: validation error: {}", e.emit_to_string(&source)))?;
    let Some(index) =
        module.entry_points.iter().position(|ep| ep.name == variant.entry && ep.stage == naga::ShaderStage::Compute)
    else {
        return Err(format!("{label}: no compute entry point named {}", variant.entry));
    };
    within_webgpu_default_limits(&module, &info, index).map_err(|e| format!("{label}: {e}"))?;

    let spv = naga::back::spv::write_vec(
        &module,
        &info,
        &naga::back::spv::Options::default(),
        Some(&naga::back::spv::PipelineOptions {
            shader_stage: naga::ShaderStage::Compute,
            entry_point: variant.entry.to_string(),
        }),
    )
    .map_err(|e| format!("{label}: SPIR-V: {e}"))?;
    if spv.first() != Some(&0x0723_0203) {
        return Err(format!("{label}: SPIR-V output lacks the magic number"));
    }

    let (msl, _) = naga::back::msl::write_string(
        &module,
        &info,
        &naga::back::msl::Options {
            lang_version: if tensor_cores { (2, 3) } else { naga::back::msl::Options::default().lang_version },
            ..Default::default()
        },
        &naga::back::msl::PipelineOptions {
            entry_point: Some((naga::ShaderStage::Compute, variant.entry.to_string())),
            ..Default::default()
        },
    )
    .map_err(|e| format!("{label}: MSL: {e}"))?;
    if !msl.contains("kernel void") {
        return Err(format!("{label}: MSL output has no kernel function"));
    }

    if tensor_cores {
        return Ok(());
    }
    let mut hlsl = String::new();
    let hlsl_options =
        naga::back::hlsl::Options { shader_model: naga::back::hlsl::ShaderModel::V6_0, ..Default::default() };
    let hlsl_pipeline = naga::back::hlsl::PipelineOptions {
        entry_point: Some((naga::ShaderStage::Compute, variant.entry.to_string())),
    };
    naga::back::hlsl::Writer::new(&mut hlsl, &hlsl_options, &hlsl_pipeline)
        .write(&module, &info, None)
        .map_err(|e| format!("{label}: HLSL: {e}"))?;
    if !hlsl.contains("[numthreads(") {
        return Err(format!("{label}: HLSL output has no [numthreads] entry"));
    }
    Ok(())
}

#[test]
fn every_specialisation_validates_and_translates_to_spirv_msl_and_hlsl() {
    let variants = all_specializations();
    assert!(!variants.is_empty());
    let failures: Vec<String> = variants.iter().filter_map(|v| translate(v).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} specialisations failed:\n{}",
        failures.len(),
        variants.len(),
        failures.join("\n\n")
    );
    eprintln!("{} specialisations validated and translated", variants.len());
}

#[test]
fn every_tensor_core_specialisation_validates_and_translates_to_spirv_and_msl() {
    let variants = coop_specializations();
    assert!(!variants.is_empty());
    let failures: Vec<String> =
        variants.iter().filter_map(|v| translate_with(v, tensor_core_capabilities(), true).err()).collect();
    assert!(failures.is_empty(), "{} of {} failed:\n{}", failures.len(), variants.len(), failures.join("\n\n"));
    // Without the capability the same source must be refused: the check can fail.
    assert!(translate_with(&variants[0], Capabilities::SHADER_FLOAT16_IN_FLOAT32, true).is_err());
}

#[test]
fn every_wgsl_file_is_registered_and_used() {
    let dir = convrec_tests::workspace_root().join("shaders");
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("shaders/ exists")
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".wgsl"))
        .collect();
    let registered: BTreeSet<String> = shaders::ALL.iter().map(|s| s.file.to_string()).collect();
    assert_eq!(on_disk, registered, "shaders/ and shaders::ALL disagree");
    let used: BTreeSet<String> =
        all_specializations().iter().chain(&coop_specializations()).map(|v| v.shader().file.to_string()).collect();
    assert_eq!(used, registered, "a registered shader has no specialisation in ops::all_specializations()");
    // The shared fragments: every file of shaders/include/ registered.
    let fragments_on_disk: BTreeSet<String> = std::fs::read_dir(dir.join("include"))
        .expect("shaders/include/ exists")
        .map(|e| format!("include/{}", e.expect("dir entry").file_name().to_string_lossy()))
        .filter(|name| name.ends_with(".wgsl"))
        .collect();
    let fragments: BTreeSet<String> = shaders::FRAGMENTS.iter().map(|s| s.file.to_string()).collect();
    assert_eq!(fragments_on_disk, fragments, "shaders/include/ and shaders::FRAGMENTS disagree");
    // The binary embeds each file as it is on disk.
    for s in shaders::ALL.iter().chain(shaders::FRAGMENTS) {
        assert_eq!(std::fs::read_to_string(dir.join(s.file)).unwrap(), s.source, "{} is stale", s.file);
    }
}

#[test]
fn a_broken_shader_is_caught() {
    // The check itself must be able to fail: an undefined specialisation constant.
    let mut v = all_specializations().remove(0);
    v.defs.pop();
    assert!(translate(&v).is_err(), "a variant missing a definition must not validate");
}
