//! Ops: one module per op family, each with its launcher, its CPU reference and its tests; the
//! WGSL lives in `shaders/` under the same name.

pub mod adamw;
pub mod attention;
pub mod attention_input;
pub mod decode;
pub mod elementwise;
pub mod launch;
pub mod linear;
pub mod matmul;
pub mod output_head;
pub mod rmsnorm;
pub mod rope;

use crate::shaders::Variant;

/// Every shader specialisation any op can compile: the naga portability test covers all of them.
pub fn all_specializations() -> Vec<Variant> {
    let mut all = Vec::new();
    all.extend(adamw::specializations());
    all.extend(attention::specializations());
    all.extend(attention_input::specializations());
    all.extend(output_head::specializations());
    all.extend(matmul::specializations());
    all.extend(rmsnorm::specializations());
    all.extend(elementwise::specializations());
    all.extend(decode::specializations());
    all.extend(crate::rl::objective::specializations());
    all
}
