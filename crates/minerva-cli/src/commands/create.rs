//! `minerva create NAME -f Modelfile`: a model from an Ollama-style Modelfile: `FROM` a
//! model of the store (tagged: one copy on disk) or a GGUF file (imported), `PARAMETER`
//! and `SYSTEM` as its settings. The whole file is checked before anything is written.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use minerva_store::{ImportOptions, ModelId, ModelSettings, ModelStore};

use crate::model_arg;

#[derive(clap::Args)]
pub struct Args {
    /// The new model's name.
    name: ModelId,
    /// The Modelfile (FROM, PARAMETER, SYSTEM).
    #[arg(long, short = 'f', default_value = "Modelfile")]
    file: PathBuf,
}

/// What a Modelfile asks for.
#[derive(Debug, PartialEq)]
struct Modelfile {
    from: String,
    settings: ModelSettings,
}

pub fn run(store: &ModelStore, args: Args) -> Result<()> {
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let modelfile = parse(&text).with_context(|| format!("{}", args.file.display()))?;
    let registry = model_arg::registry(store)?;
    let record = match ModelId::new(&modelfile.from)
        .ok()
        .filter(|id| store.resolve(id).is_ok())
    {
        Some(source) => registry.tag(store, &source, &args.name)?,
        None => {
            // A path, relative to the Modelfile as Ollama reads it.
            let base = args.file.parent().unwrap_or(Path::new("."));
            let path = base.join(&modelfile.from);
            if !path.exists() {
                bail!("FROM {}: neither a model in the store nor a file", modelfile.from);
            }
            let options = ImportOptions {
                id: Some(args.name.clone()),
                origin: format!("create from {}", path.display()),
                replace: true,
                ..Default::default()
            };
            registry.import(store, &path, &options, &mut |_, _| {})?
        }
    };
    registry.set_settings(&args.name, &modelfile.settings)?;
    println!("created {} (sha256:{})", args.name, record.sha256);
    for (key, value) in modelfile.settings.pairs() {
        println!("  {key} = {value:?}");
    }
    Ok(())
}

/// Parses a Modelfile: one instruction per line (`#` comments), `SYSTEM` text optionally
/// in `"""` quotes over several lines. Errors name the line.
fn parse(text: &str) -> Result<Modelfile> {
    let mut from = None;
    let mut settings = ModelSettings::default();
    let mut lines = text.lines().enumerate();
    while let Some((index, line)) = lines.next() {
        let n = index + 1;
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
                    .with_context(|| format!("line {n}: PARAMETER needs a name and a value"))?;
                settings
                    .set(key, Some(unquote(value.trim())))
                    .with_context(|| format!("line {n}"))?;
            }
            "SYSTEM" => {
                let text = match rest.strip_prefix("\"\"\"") {
                    Some(first) => block(first, &mut lines).with_context(|| format!("line {n}: SYSTEM"))?,
                    None => unquote(rest).to_owned(),
                };
                settings
                    .set("system", Some(&text))
                    .with_context(|| format!("line {n}"))?;
            }
            "TEMPLATE" | "ADAPTER" | "MESSAGE" | "LICENSE" | "REQUIRES" => {
                bail!("line {n}: {instruction} is not supported yet (FROM, PARAMETER and SYSTEM are)")
            }
            _ => bail!("line {n}: unknown instruction {instruction:?} (FROM, PARAMETER and SYSTEM are known)"),
        }
    }
    let from = from.context("no FROM line: say which model or GGUF file the new model is made from")?;
    Ok(Modelfile { from, settings })
}

/// The rest of a `"""` block that began with `first`.
fn block<'a>(first: &str, lines: &mut impl Iterator<Item = (usize, &'a str)>) -> Result<String> {
    if let Some(end) = first.find("\"\"\"") {
        return Ok(first[..end].to_owned());
    }
    let mut text = first.to_owned();
    for (_, line) in lines {
        if let Some(end) = line.find("\"\"\"") {
            text.push('\n');
            text.push_str(&line[..end]);
            return Ok(text.trim().to_owned());
        }
        text.push('\n');
        text.push_str(line);
    }
    bail!("the closing \"\"\" is missing")
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
        let file = parse(
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
        let one_line = parse("FROM ./m.gguf\nSYSTEM \"Be kind.\"").unwrap();
        assert_eq!(one_line.settings.system.as_deref(), Some("Be kind."));
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line) in [
            ("FROM x\nPARAMETER temperature hot", "line 2"),
            ("FROM x\n\nPARAMETER mirostat 2", "line 3"),
            ("FROM x\nTEMPLATE {{ .Prompt }}", "line 2"),
            ("FRUM x", "line 1"),
            ("FROM x\nSYSTEM \"\"\"never closed", "line 2"),
        ] {
            let err = format!("{:#}", parse(text).unwrap_err());
            assert!(err.contains(line), "{text:?}: {err}");
        }
        assert!(format!("{:#}", parse("PARAMETER top_k 4").unwrap_err()).contains("FROM"));
    }
}
