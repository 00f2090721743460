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
shader!(ATTENTION_INPUT, "attention_input");
shader!(ATTENTION_FLASH, "attention_flash");
shader!(EMBEDDING, "embedding");
shader!(GRPO_LOSS, "grpo_loss");
shader!(KV_CACHE, "kv_cache");
shader!(MATMUL, "matmul");
shader!(MATMUL_COOP, "matmul_coop");
shader!(MATMUL_TILED, "matmul_tiled");
shader!(MATMUL_VEC4, "matmul_vec4");
shader!(OUTPUT_HEAD, "output_head");
shader!(RESIDUAL, "residual");
shader!(RMSNORM, "rmsnorm");
shader!(RMSNORM_BACKWARD, "rmsnorm_backward");
shader!(SAMPLING, "sampling");
shader!(SWIGLU, "swiglu");

/// Every shader file the product ships; a test checks this matches `shaders/` exactly.
pub static ALL: &[&Shader] = &[
    &ADAMW,
    &ATTENTION,
    &ATTENTION_BACKWARD,
    &ATTENTION_INPUT,
    &ATTENTION_FLASH,
    &EMBEDDING,
    &GRPO_LOSS,
    &KV_CACHE,
    &MATMUL,
    &MATMUL_COOP,
    &MATMUL_TILED,
    &MATMUL_VEC4,
    &OUTPUT_HEAD,
    &RESIDUAL,
    &RMSNORM,
    &RMSNORM_BACKWARD,
    &SAMPLING,
    &SWIGLU,
];

macro_rules! fragment {
    ($ident:ident, $name:literal) => {
        pub static $ident: Shader = Shader {
            name: $name,
            file: concat!("include/", $name, ".wgsl"),
            source: include_str!(concat!("../../shaders/include/", $name, ".wgsl")),
        };
    };
}

fragment!(BLOCK_FORMATS, "block_formats");
fragment!(LOAD_B, "load_b");
fragment!(MATMUL_PARAMS, "matmul_params");

/// Pieces of WGSL that several shaders share (`shaders/include/`), pasted in where a shader says
/// `//#include NAME`: one description of, say, the matrix-product parameters for four kernels.
pub static FRAGMENTS: &[&Shader] = &[&BLOCK_FORMATS, &LOAD_B, &MATMUL_PARAMS];

/// `source` with every `//#include NAME` line replaced by fragment NAME's text (fragments may
/// include others; a cycle is an error).
fn with_includes(source: &str, depth: usize) -> Result<String, String> {
    if depth > 8 {
        return Err("//#include nested more than 8 deep (a cycle?)".into());
    }
    let mut out = String::with_capacity(source.len());
    for line in source.lines() {
        match line.trim_start().strip_prefix("//#include ") {
            Some(name) => {
                let fragment = FRAGMENTS
                    .iter()
                    .find(|f| f.name == name.trim())
                    .ok_or_else(|| format!("//#include {}: no such fragment in shaders/include/", name.trim()))?;
                out.push_str(&with_includes(fragment.source, depth + 1)?);
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    Ok(out)
}

/// A compile-time value substituted into a shader.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Def {
    U32(&'static str, u32),
    Bool(&'static str, bool),
}

/// Keeps the lines of `//#if NAME == N` … [`//#else` …] `//#endif` blocks whose condition holds
/// for the definitions (NAME a u32 definition); blocks nest. For what WGSL cannot express with a
/// `const`: a binding whose element type depends on the specialisation.
fn select_branches<'a>(lines: &[&'a str], defs: &[Def]) -> Result<Vec<&'a str>, String> {
    // One entry per open block: (this branch taken, some branch of the block taken).
    let mut open: Vec<(bool, bool)> = Vec::new();
    let mut out = Vec::with_capacity(lines.len());
    for &line in lines {
        let t = line.trim_start();
        let live = open.iter().all(|(taken, _)| *taken);
        if let Some(cond) = t.strip_prefix("//#if ") {
            let (name, value) = cond.split_once("==").ok_or_else(|| format!("malformed condition '{t}'"))?;
            let value: u32 = value.trim().parse().map_err(|e| format!("bad value in '{t}': {e}"))?;
            let actual = defs
                .iter()
                .find_map(|d| match d {
                    Def::U32(n, v) if *n == name.trim() => Some(*v),
                    _ => None,
                })
                .ok_or_else(|| format!("'{t}': {} is not a u32 definition", name.trim()))?;
            let holds = actual == value;
            open.push((holds, holds));
        } else if t.starts_with("//#else") {
            let (_, any) = open.pop().ok_or("//#else without //#if")?;
            open.push((!any, true));
        } else if t.starts_with("//#endif") {
            open.pop().ok_or("//#endif without //#if")?;
        } else if live {
            out.push(line);
        }
    }
    if !open.is_empty() {
        return Err("//#if without //#endif".into());
    }
    Ok(out)
}

/// Unrolls `//#for NAME in COUNT` … `//#end` blocks (COUNT: a number, a definition, or a
/// definition divided by a number, rounded down), substituting `${NAME}` in the body; blocks nest.
fn expand_loops(lines: &[&str], defs: &[Def], vars: &mut Vec<(String, u32)>, out: &mut String) -> Result<(), String> {
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if let Some(header) = trimmed.strip_prefix("//#for ") {
            let (name, count) =
                header.split_once(" in ").ok_or_else(|| format!("malformed loop header '{trimmed}'"))?;
            let count = loop_count(count.trim(), defs)?;
            let mut depth = 1;
            let mut end = i + 1;
            while end < lines.len() {
                let t = lines[end].trim_start();
                if t.starts_with("//#for ") {
                    depth += 1;
                } else if t.starts_with("//#end") {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                end += 1;
            }
            if depth != 0 {
                return Err(format!("'{trimmed}' has no matching //#end"));
            }
            for v in 0..count {
                vars.push((name.trim().to_string(), v));
                expand_loops(&lines[i + 1..end], defs, vars, out)?;
                vars.pop();
            }
            i = end + 1;
        } else if trimmed.starts_with("//#end") {
            return Err("//#end without //#for".into());
        } else {
            let mut text = line.to_string();
            for (name, v) in vars.iter() {
                text = text.replace(&format!("${{{name}}}"), &v.to_string());
            }
            out.push_str(&text);
            out.push('\n');
            i += 1;
        }
    }
    Ok(())
}

fn loop_count(expr: &str, defs: &[Def]) -> Result<u32, String> {
    let (name, divisor) = match expr.split_once('/') {
        Some((n, d)) => (n.trim(), d.trim().parse::<u32>().map_err(|e| format!("bad divisor in '{expr}': {e}"))?),
        None => (expr, 1),
    };
    let value = match name.parse::<u32>() {
        Ok(v) => v,
        Err(_) => defs
            .iter()
            .find_map(|d| match d {
                Def::U32(n, v) if *n == name => Some(*v),
                _ => None,
            })
            .ok_or_else(|| format!("loop count '{name}' is not a u32 definition"))?,
    };
    if divisor == 0 {
        return Err(format!("loop count {expr} divides by zero"));
    }
    // Integer division: an entry point whose block does not fit a specialisation compiles to
    // nothing for it (every entry point of a file is compiled with the file's definitions).
    Ok(value / divisor)
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

    /// The WGSL text the GPU compiles: the definitions, then the file with its includes.
    pub fn render(&self) -> String {
        let shader = self.shader();
        let source = with_includes(shader.source, 0).unwrap_or_else(|e| panic!("{}: {e}", self.label()));
        let mut out = String::with_capacity(source.len() + 64 * self.defs.len());
        let _ = writeln!(out, "// {} specialised for entry point {}", shader.file, self.entry);
        // WGSL wants `enable` directives before any declaration, so they go above the definitions.
        let (enables, body): (Vec<&str>, Vec<&str>) =
            source.lines().partition(|l| l.trim_start().starts_with("enable "));
        for line in enables {
            let _ = writeln!(out, "{line}");
        }
        for def in &self.defs {
            let _ = match def {
                Def::U32(name, v) => writeln!(out, "const {name}: u32 = {v}u;"),
                Def::Bool(name, v) => writeln!(out, "const {name}: bool = {v};"),
            };
        }
        let lines = select_branches(&body, &self.defs).unwrap_or_else(|e| panic!("{}: {e}", self.label()));
        expand_loops(&lines, &self.defs, &mut Vec::new(), &mut out).unwrap_or_else(|e| panic!("{}: {e}", self.label()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditional_blocks_keep_the_branch_the_definitions_choose() {
        let lines =
            ["a", "//#if D == 0", "zero", "  //#if E == 1", "  e1", "  //#endif", "//#else", "other", "//#endif", "b"];
        let pick = |d, e| select_branches(&lines, &[Def::U32("D", d), Def::U32("E", e)]).unwrap().join(",");
        assert_eq!(pick(0, 1), "a,zero,  e1,b");
        assert_eq!(pick(0, 0), "a,zero,b");
        assert_eq!(pick(2, 1), "a,other,b");
        assert!(select_branches(&["//#if X == 1", "x"], &[Def::U32("X", 1)]).is_err(), "unclosed");
        assert!(select_branches(&["//#if X == 1", "//#endif"], &[]).is_err(), "undefined name");
        assert!(select_branches(&["//#endif"], &[]).is_err());
    }

    #[test]
    fn includes_paste_fragments_and_unknown_names_are_errors() {
        let text = with_includes("a\n  //#include load_b\nb", 0).unwrap();
        assert!(text.starts_with("a\n") && text.ends_with("}\nb\n"), "{text}");
        assert!(text.contains("fn load_b(i: u32) -> f32"));
        let err = with_includes("//#include nothing", 0).unwrap_err();
        assert!(err.contains("nothing") && err.contains("shaders/include"), "{err}");
        // Every matrix-product shader takes its parameters from the one fragment.
        for shader in [&MATMUL, &MATMUL_TILED, &MATMUL_VEC4, &MATMUL_COOP] {
            assert!(shader.source.contains("//#include matmul_params"), "{}", shader.file);
            assert!(!shader.source.contains("struct Params"), "{} declares its own Params", shader.file);
        }
    }

    #[test]
    fn loops_unroll_with_nesting_and_definitions() {
        let lines = ["a", "//#for i in N/2", "  x${i}", "  //#for j in 2", "  y${i}${j}", "  //#end", "//#end", "b"];
        let mut out = String::new();
        expand_loops(&lines, &[Def::U32("N", 4)], &mut Vec::new(), &mut out).unwrap();
        assert_eq!(out, "a\n  x0\n  y00\n  y01\n  x1\n  y10\n  y11\nb\n");
        let mut out = String::new();
        expand_loops(&["//#for i in 3/2", "${i}", "//#end"], &[], &mut Vec::new(), &mut out).unwrap();
        assert_eq!(out, "0\n");
        assert!(expand_loops(&["//#for i in M", "//#end"], &[], &mut Vec::new(), &mut out).is_err());
        assert!(expand_loops(&["//#for i in 2"], &[], &mut Vec::new(), &mut out).is_err());
    }
}
