//! Ollama's Modelfile: `FROM` a model of the store or a GGUF file, `PARAMETER`, `SYSTEM`
//! and `TEMPLATE` as the new model's settings. A `TEMPLATE` is a Jinja chat template, the
//! format GGUF files carry (Ollama's are Go templates; they do not compile as Jinja and
//! are refused where the template is checked). `minerva create` and `POST /api/create` read it;
//! the whole file is checked before anything is written.

use crate::ModelSettings;

/// What a Modelfile asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Modelfile {
    /// The model (or, for the command line, the GGUF file) the new one is made from.
    pub from: String,
    /// `PARAMETER` and `SYSTEM`, as the new model's settings.
    pub settings: ModelSettings,
}

/// Why a Modelfile was refused.
#[derive(Debug, thiserror::Error)]
pub enum ModelfileError {
    /// A line that does not parse or asks for what is not supported.
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
    /// No `FROM`.
    #[error("no FROM line: say which model or GGUF file the new model is made from")]
    NoFrom,
}

impl Modelfile {
    /// Parses a Modelfile: one instruction per line (`#` comments), `SYSTEM` text
    /// optionally in `"""` quotes over several lines. Errors name the line.
    pub fn parse(text: &str) -> Result<Self, ModelfileError> {
        let mut from = None;
        let mut settings = ModelSettings::default();
        let mut lines = text.lines().enumerate();
        while let Some((index, line)) = lines.next() {
            let n = index + 1;
            let at = |reason: String| ModelfileError::Line { line: n, reason };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (instruction, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match instruction.to_ascii_uppercase().as_str() {
                "FROM" if !rest.is_empty() => from = Some(rest.to_owned()),
                "PARAMETER" => {
                    let (key, value) = rest
                        .split_once(char::is_whitespace)
                        .ok_or_else(|| at("PARAMETER needs a name and a value".into()))?;
                    settings
                        .set(key, Some(unquote(value.trim())))
                        .map_err(|e| at(e.to_string()))?;
                }
                "SYSTEM" => {
                    let text = match rest.strip_prefix("\"\"\"") {
                        Some(first) => block(first, &mut lines)
                            .ok_or_else(|| at("SYSTEM: the closing \"\"\" is missing".into()))?,
                        None => unquote(rest).to_owned(),
                    };
                    settings.set("system", Some(&text)).map_err(|e| at(e.to_string()))?;
                }
                "TEMPLATE" => {
                    let text = match rest.strip_prefix("\"\"\"") {
                        Some(first) => block(first, &mut lines)
                            .ok_or_else(|| at("TEMPLATE: the closing \"\"\" is missing".into()))?,
                        None => unquote(rest).to_owned(),
                    };
                    settings.set("template", Some(&text)).map_err(|e| at(e.to_string()))?;
                }
                "ADAPTER" | "MESSAGE" | "LICENSE" | "REQUIRES" => {
                    return Err(at(format!(
                        "{instruction} is not supported yet (FROM, PARAMETER, SYSTEM and TEMPLATE are)"
                    )));
                }
                _ => {
                    return Err(at(format!(
                        "unknown instruction {instruction:?} (FROM, PARAMETER, SYSTEM and TEMPLATE are known)"
                    )));
                }
            }
        }
        let from = from.ok_or(ModelfileError::NoFrom)?;
        Ok(Self { from, settings })
    }
}

/// The rest of a `"""` block that began with `first`; `None` when it never closes.
fn block<'a>(first: &str, lines: &mut impl Iterator<Item = (usize, &'a str)>) -> Option<String> {
    if let Some(end) = first.find("\"\"\"") {
        return Some(first[..end].to_owned());
    }
    let mut text = first.to_owned();
    for (_, line) in lines {
        if let Some(end) = line.find("\"\"\"") {
            text.push('\n');
            text.push_str(&line[..end]);
            return Some(text.trim().to_owned());
        }
        text.push('\n');
        text.push_str(line);
    }
    None
}

fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_parameters_and_a_multiline_system_prompt_parse() {
        let file = Modelfile::parse(
            "# a comment\nFROM smollm2:135m\nPARAMETER temperature 0.3\nPARAMETER num_ctx 2048\nSYSTEM \"\"\"\nYou are terse.\nAnswer in one line.\n\"\"\"\n",
        )
        .unwrap();
        assert_eq!(file.from, "smollm2:135m");
        assert_eq!(file.settings.temperature, Some(0.3));
        assert_eq!(file.settings.num_ctx, Some(2048));
        assert_eq!(
            file.settings.system.as_deref(),
            Some("You are terse.\nAnswer in one line.")
        );
        let one_line = Modelfile::parse("FROM ./m.gguf\nSYSTEM \"Be kind.\"").unwrap();
        assert_eq!(one_line.settings.system.as_deref(), Some("Be kind."));
        let template =
            Modelfile::parse("FROM x\nTEMPLATE \"\"\"{% for m in messages %}{{ m.content }}\n{% endfor %}\"\"\"")
                .unwrap();
        assert_eq!(
            template.settings.template.as_deref(),
            Some("{% for m in messages %}{{ m.content }}\n{% endfor %}")
        );
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line) in [
            ("FROM x\nPARAMETER temperature hot", "line 2"),
            ("FROM x\n\nPARAMETER mirostat 2", "line 3"),
            ("FROM x\nADAPTER ./lora.gguf", "line 2"),
            ("FRUM x", "line 1"),
            ("FROM x\nSYSTEM \"\"\"never closed", "line 2"),
        ] {
            let err = Modelfile::parse(text).unwrap_err().to_string();
            assert!(err.contains(line), "{text:?}: {err}");
        }
        assert!(
            Modelfile::parse("PARAMETER top_k 4")
                .unwrap_err()
                .to_string()
                .contains("FROM")
        );
    }
}
