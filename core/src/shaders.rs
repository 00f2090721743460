//! The WGSL sources, compiled into the binary, and the small explicit preprocessor that
//! specialises them.
//!
//! Why a preprocessor and not WGSL `override` constants: per-invocation register blocks need
//! fixed-size private arrays (`array<f32, TM>`), and WGSL only allows override-sized arrays in
//! workgroup memory. A specialisation is therefore a list of `const` declarations (and type
//! aliases) prepended to the file; each file documents the names it expects at its top. Everything
//! the code can ask for is enumerable (`crate::ops::all_specializations`), so a test validates and
//! translates every variant with naga.

use std::fmt::Write as _;

/// One `.wgsl` file of `shaders/`.
#[derive(Debug)]
pub struct Shader {
    pub name: &'static str,
    /// File name inside `shaders/`.
    pub file: &'static str,
    pub source: &'static str,
}

macro_rules! shader {
    ($ident:ident, $name:literal) => {
        pub static $ident: Shader = Shader {
            name: $name,
            file: concat!($name, ".wgsl"),
            source: include_str!(concat!("../../shaders/", $name, ".wgsl")),
        };
    };
}

shader!(ADAMW, "adamw");
shader!(ATTENTION, "attention");
shader!(ATTENTION_BACKWARD, "attention_backward");
shader!(EMBEDDING, "embedding");
shader!(MATMUL, "matmul");
shader!(OUTPUT_HEAD, "output_head");
shader!(RESIDUAL, "residual");
shader!(RMSNORM, "rmsnorm");
shader!(RMSNORM_BACKWARD, "rmsnorm_backward");
shader!(ROPE, "rope");
shader!(SWIGLU, "swiglu");

/// Every shader file the product ships; a test checks this matches `shaders/` exactly.
pub static ALL: &[&Shader] = &[
    &ADAMW,
    &ATTENTION,
    &ATTENTION_BACKWARD,
    &EMBEDDING,
    &MATMUL,
    &OUTPUT_HEAD,
    &RESIDUAL,
    &RMSNORM,
    &RMSNORM_BACKWARD,
    &ROPE,
    &SWIGLU,
];

/// A compile-time value substituted into a shader.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Def {
    U32(&'static str, u32),
    Bool(&'static str, bool),
}

/// The specialisation of one shader entry point: what a pipeline is compiled from and cached by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Variant {
    pub shader: &'static str,
    pub entry: &'static str,
    pub defs: Vec<Def>,
}

impl Variant {
    pub fn shader(&self) -> &'static Shader {
        ALL.iter()
            .copied()
            .find(|s| s.name == self.shader)
            .unwrap_or_else(|| panic!("shader '{}' is not registered in shaders::ALL", self.shader))
    }

    /// The WGSL text the GPU compiles: the definitions, then the file.
    pub fn render(&self) -> String {
        let shader = self.shader();
        let mut out = String::with_capacity(shader.source.len() + 64 * self.defs.len());
        let _ = writeln!(out, "// {} specialised for entry point {}", shader.file, self.entry);
        for def in &self.defs {
            let _ = match def {
                Def::U32(name, v) => writeln!(out, "const {name}: u32 = {v}u;"),
                Def::Bool(name, v) => writeln!(out, "const {name}: bool = {v};"),
            };
        }
        out.push_str(shader.source);
        out
    }

    /// A short, stable description used in labels and error messages.
    pub fn label(&self) -> String {
        let defs: Vec<String> = self
            .defs
            .iter()
            .map(|d| match d {
                Def::U32(n, v) => format!("{n}={v}"),
                Def::Bool(n, v) => format!("{n}={v}"),
            })
            .collect();
        format!("{}::{}[{}]", self.shader, self.entry, defs.join(","))
    }
}
