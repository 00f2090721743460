//! Chat templates rendered as Hugging Face's
//! `tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...)` does:
//! the model's Jinja template (from `tokenizer_config.json` or GGUF metadata) run by minijinja
//! with the settings transformers uses (`trim_blocks`, `lstrip_blocks`, loop controls,
//! `raise_exception`, a `tojson` that writes what Python's `json.dumps` writes, `strftime_now`,
//! Python's string/dict/list methods, and the special tokens as variables), plus built-in
//! templates for models whose files carry none.

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use super::config::Architecture;
use super::tokenizer::SpecialTokens;

/// One chat turn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message { role: role.into(), content: content.into() }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("chat template does not compile: {0}")]
    Syntax(String),
    #[error("chat template failed: {0}")]
    Render(String),
    #[error("the model has no chat template and none of the built-in ones (ChatML, Llama 3) fits its vocabulary")]
    NoTemplate,
}

/// Built-in templates, for models whose files carry none.
pub mod builtin {
    /// Plain ChatML (no default system message), as transformers' old default template.
    pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    /// SmolLM2-Instruct's template: ChatML with a default system message.
    pub const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    /// Qwen2.5-Instruct's template for role/content messages (its tool-calling branches left
    /// out): ChatML with Qwen's default system message.
    pub const QWEN2_5: &str = "{%- if messages[0]['role'] == 'system' %}\n    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n{%- else %}\n    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n{%- endif %}\n{%- for message in messages %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\") %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n";

    /// Llama-3-Instruct's template (BOS first, header ids around roles, `<|eot_id|>` after each
    /// trimmed message).
    pub const LLAMA3: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
}

/// A compiled chat template with the special tokens it may refer to.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    /// `bos_token`, `eos_token`, `unk_token`, `pad_token` as HF passes them (absent ones are
    /// undefined in the template, as in transformers).
    tokens: Vec<(&'static str, String)>,
}

const NAME: &str = "chat_template";

impl ChatTemplate {
    /// Compiles `source`. `special` supplies `bos_token` and the other token variables.
    pub fn new(source: &str, special: &SpecialTokens) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        // Jinja2 as transformers configures it: ImmutableSandboxedEnvironment(trim_blocks=True,
        // lstrip_blocks=True, extensions=[loopcontrols]); no autoescape; a final newline of the
        // template is dropped (keep_trailing_newline=False, Jinja's default).
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|e| ChatError::Syntax(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(NAME, source.to_string()).map_err(|e| ChatError::Syntax(describe(&e)))?;
        let mut tokens = Vec::new();
        for (name, token) in [
            ("bos_token", &special.bos),
            ("eos_token", &special.eos),
            ("unk_token", &special.unk),
            ("pad_token", &special.pad),
        ] {
            if let Some(t) = token {
                tokens.push((name, t.content.clone()));
            }
        }
        Ok(ChatTemplate { env, source: source.to_string(), tokens })
    }

    /// The model's template if it has one, else a built-in one that fits its vocabulary:
    /// ChatML (Qwen2.5's for `qwen2`, with its default system message) when `<|im_start|>` is a
    /// token, Llama 3's when `<|start_header_id|>` is.
    pub fn for_model(
        template: Option<&str>,
        special: &SpecialTokens,
        architecture: Architecture,
        has_token: impl Fn(&str) -> bool,
    ) -> Result<Self, ChatError> {
        let source = match template {
            Some(t) => t,
            None if has_token("<|im_start|>") && has_token("<|im_end|>") => match architecture {
                Architecture::Qwen2 => builtin::QWEN2_5,
                Architecture::Llama => builtin::CHATML,
            },
            None if has_token("<|start_header_id|>") && has_token("<|eot_id|>") => builtin::LLAMA3,
            None => return Err(ChatError::NoTemplate),
        };
        Self::new(source, special)
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The prompt text for `messages`; with `add_generation_prompt` it ends where the assistant's
    /// reply begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, ChatError> {
        let template = self.env.get_template(NAME).map_err(|e| ChatError::Render(describe(&e)))?;
        let mut ctx: Vec<(&str, Value)> =
            vec![("messages", messages_value(messages)), ("add_generation_prompt", Value::from(add_generation_prompt))];
        ctx.extend(self.tokens.iter().map(|(k, v)| (*k, Value::from(v.as_str()))));
        let ctx = Value::from_pairs(ctx);
        template.render(ctx).map_err(|e| ChatError::Render(describe(&e)))
    }
}

/// Messages as the template sees them: a list of `{role, content}` maps in that key order.
fn messages_value(messages: &[Message]) -> Value {
    let list: Vec<Value> = messages
        .iter()
        .map(|m| Value::from_pairs([("role", m.role.as_str()), ("content", m.content.as_str())]))
        .collect();
    Value::from(list)
}

/// minijinja's error with its detail and location (the plain Display omits the detail).
fn describe(e: &Error) -> String {
    let mut s = match e.detail() {
        Some(d) if e.kind() == ErrorKind::InvalidOperation => d.to_string(),
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    if let Some(line) = e.line() {
        s.push_str(&format!(" (template line {line})"));
    }
    s
}

/// `raise_exception(message)`: templates refuse conversations with it (roles out of order…).
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)` with those keyword arguments. minijinja's own escapes `<`, `>`, `&` and `'`
/// for HTML, which Python does not.
fn tojson(value: &Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = match indent {
        Some(v) => Some(v),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(usize::try_from(v)?),
    };
    let separators = match kwargs.get::<Option<Value>>("separators")? {
        Some(v) if !v.is_none() => {
            let parts: Vec<Value> = v.try_iter()?.collect();
            match parts.as_slice() {
                [item, key] => Some((item.to_string(), key.to_string())),
                _ => return Err(Error::new(ErrorKind::InvalidOperation, "tojson: separators must be a pair")),
            }
        }
        _ => None,
    };
    let style = JsonStyle {
        indent,
        // Python's defaults: ", " without indent, "," with it (the newline follows); ": ".
        item_sep: separators.as_ref().map_or(if indent.is_some() { "," } else { ", " }.to_string(), |s| s.0.clone()),
        key_sep: separators.map_or(": ".to_string(), |s| s.1),
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&mut out, value, &style, 0)?;
    Ok(Value::from_safe_string(out))
}

struct JsonStyle {
    indent: Option<usize>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

fn write_json(out: &mut String, v: &Value, style: &JsonStyle, depth: usize) -> Result<(), Error> {
    if depth > 64 {
        return Err(Error::new(ErrorKind::InvalidOperation, "tojson: value nested too deeply"));
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = style.indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    match v.kind() {
        ValueKind::Undefined => return Err(Error::new(ErrorKind::UndefinedError, "tojson of an undefined value")),
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&python_number(v)),
        ValueKind::String => write_json_string(out, v.as_str().unwrap_or_default(), style.ensure_ascii),
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if style.sort_keys {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline(out, depth + 1);
                match k.as_str() {
                    Some(s) => write_json_string(out, s, style.ensure_ascii),
                    None => write_json_string(out, &k.to_string(), style.ensure_ascii),
                }
                out.push_str(&style.key_sep);
                write_json(out, &v.get_item(k)?, style, depth + 1)?;
            }
            newline(out, depth);
            out.push('}');
        }
        _ => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline(out, depth + 1);
                write_json(out, item, style, depth + 1)?;
            }
            newline(out, depth);
            out.push(']');
        }
    }
    Ok(())
}

fn write_json_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                // UTF-16 units, as Python writes characters beyond the BMP.
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{:04x}", u));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A number as Python's `repr` writes it (`1.0`, `1e-05`, `1e+16`).
fn python_number(v: &Value) -> String {
    if let Ok(i) = i128::try_from(v.clone()) {
        return i.to_string();
    }
    let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    let a = f.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        // Rust's shortest exponent form ("1e-5") with Python's exponent spelling ("1e-05").
        let s = format!("{f:e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = match exp.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exp),
        };
        return format!("{mantissa}e{sign}{digits:0>2}");
    }
    let s = format!("{f}");
    if s.contains('.') { s } else { format!("{s}.0") }
}

/// transformers' `strftime_now(format)`: the current local time (UTC here) formatted. The
/// browser build has no clock in `std`, so there it fails and templates that check
/// `strftime_now is defined` should be given a date by their caller instead.
fn strftime_now(format: String) -> Result<Value, Error> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let secs =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        Ok(Value::from(strftime(&format, secs)))
    }
    #[cfg(target_arch = "wasm32")]
    {
        let _ = format;
        Err(Error::new(ErrorKind::InvalidOperation, "strftime_now has no clock in the browser build"))
    }
}

/// The common `strftime` directives for a Unix time in UTC.
pub fn strftime(format: &str, unix_secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let month_name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('-') => match chars.next() {
                Some('d') => out.push_str(&day.to_string()),
                Some('m') => out.push_str(&month.to_string()),
                Some(other) => out.extend(['%', '-', other]),
                None => out.push_str("%-"),
            },
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('b') => out.push_str(&month_name[..3]),
            Some('B') => out.push_str(month_name),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('M') => out.push_str(&format!("{m:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('%') => out.push('%'),
            Some(other) => out.extend(['%', other]),
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tokenizer::SpecialToken;

    fn smol_special() -> SpecialTokens {
        let t = |id, s: &str| Some(SpecialToken { id, content: s.to_string() });
        SpecialTokens {
            bos: t(1, "<|im_start|>"),
            eos: t(2, "<|im_end|>"),
            unk: t(0, "<|endoftext|>"),
            pad: t(2, "<|im_end|>"),
            ..Default::default()
        }
    }

    #[test]
    fn smollm2_template_inserts_its_default_system_message() {
        let t = ChatTemplate::new(builtin::SMOLLM2, &smol_special()).unwrap();
        let text = t.render(&[Message::user("Hi")], true).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let text = t.render(&[Message::system("Be brief."), Message::user("Hi")], false).unwrap();
        assert_eq!(text, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
    }

    #[test]
    fn qwen_and_llama3_builtins() {
        let q = ChatTemplate::new(builtin::QWEN2_5, &SpecialTokens::default()).unwrap();
        assert_eq!(
            q.render(&[Message::user("Hi"), Message::assistant("Yo"), Message::user("More")], true).unwrap(),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n<|im_start|>user\nMore<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        let special = SpecialTokens {
            bos: Some(SpecialToken { id: 128000, content: "<|begin_of_text|>".into() }),
            ..Default::default()
        };
        let l = ChatTemplate::new(builtin::LLAMA3, &special).unwrap();
        assert_eq!(
            l.render(&[Message::system(" S "), Message::user("U")], true).unwrap(),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }

    #[test]
    fn hf_conventions_trim_blocks_raise_exception_pycompat_tojson() {
        // trim_blocks drops the newline after a block tag; lstrip_blocks the indentation before it.
        let src = "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content.strip() | upper }}]\n    {% endif %}\n{% endfor %}\n";
        let t = ChatTemplate::new(src, &SpecialTokens::default()).unwrap();
        assert_eq!(t.render(&[Message::user("  a  "), Message::assistant("b")], false).unwrap(), "[A]\n");

        let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with the user') }}{% endif %}ok";
        let t = ChatTemplate::new(src, &SpecialTokens::default()).unwrap();
        let err = t.render(&[Message::assistant("x")], false).unwrap_err().to_string();
        assert!(err.contains("Conversation must start with the user"), "{err}");

        let src = "{{ messages[0] | tojson }}|{{ {'a': [1, 2.5, none, true], 'b': '<é\"\\n>'} | tojson(indent=2) }}|{{ 0.00001 | tojson }}{% for m in messages %}{% if loop.index0 > 0 %}{% break %}{% endif %}!{% endfor %}";
        let t = ChatTemplate::new(src, &SpecialTokens::default()).unwrap();
        assert_eq!(
            t.render(&[Message::user("x<y"), Message::user("z")], false).unwrap(),
            "{\"role\": \"user\", \"content\": \"x<y\"}|{\n  \"a\": [\n    1,\n    2.5,\n    null,\n    true\n  ],\n  \"b\": \"<é\\\"\\n>\"\n}|1e-05!"
        );
        let src = "{{ {'k': ['é😀', 1]} | tojson(ensure_ascii=true, separators=(',', ':')) }}";
        let t = ChatTemplate::new(src, &SpecialTokens::default()).unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "{\"k\":[\"\\u00e9\\ud83d\\ude00\",1]}");
        // Absent special tokens are undefined (HF passes only those that are set).
        let t = ChatTemplate::new("{% if bos_token is defined %}B{% endif %}{{ eos_token }}", &smol_special()).unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "B<|im_end|>");
        assert!(matches!(ChatTemplate::new("{% for %}", &SpecialTokens::default()), Err(ChatError::Syntax(_))));
    }

    #[test]
    fn strftime_formats_a_known_date() {
        // 2024-07-26 13:05:09 UTC was a Friday.
        let t = 1_721_999_109;
        assert_eq!(strftime("%d %b %Y", t), "26 Jul 2024");
        assert_eq!(strftime("%A %B %-d, %y %H:%M:%S %%", t), "Friday July 26, 24 13:05:09 %");
        assert_eq!(strftime("%Y-%m-%d", 0), "1970-01-01");
        assert_eq!(strftime("%Y-%m-%d", 951_782_400), "2000-02-29");
    }

    #[test]
    fn for_model_picks_a_builtin_by_vocabulary() {
        let has = |names: &'static [&'static str]| move |t: &str| names.contains(&t);
        let s = SpecialTokens::default();
        let q = ChatTemplate::for_model(None, &s, Architecture::Qwen2, has(&["<|im_start|>", "<|im_end|>"])).unwrap();
        assert_eq!(q.source(), builtin::QWEN2_5);
        let l = ChatTemplate::for_model(None, &s, Architecture::Llama, has(&["<|start_header_id|>", "<|eot_id|>"]))
            .unwrap();
        assert_eq!(l.source(), builtin::LLAMA3);
        assert!(matches!(ChatTemplate::for_model(None, &s, Architecture::Llama, has(&[])), Err(ChatError::NoTemplate)));
        let own = ChatTemplate::for_model(Some("x"), &s, Architecture::Llama, has(&[])).unwrap();
        assert_eq!(own.source(), "x");
    }
}
