//! The one error type of config loading: every message names the file, line, column and key.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A config error with its position in the file.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line and column, when the error has a place in the file.
    pub position: Option<(usize, usize)>,
    /// Dotted key path, e.g. `routes[1].upstream`.
    pub key: String,
    pub message: String,
}

impl std::error::Error for ConfigError {}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": key `{}`: {}", self.key, self.message)
        }
    }
}

/// Maps byte offsets of one config file's text to positions.
pub(crate) struct Source<'a> {
    pub file: &'a Path,
    pub text: &'a str,
}

impl Source<'_> {
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }

    pub fn error(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            position: Some(self.line_col(span.start)),
            key: key.into(),
            message: message.into(),
        }
    }

    pub fn whole_file_error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            position: None,
            key: String::new(),
            message: message.into(),
        }
    }

    /// Turns a TOML syntax or serde error into a [`ConfigError`], recovering the key that
    /// the error's span points at (or into) from the text around it.
    pub fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        let message = err.message().trim().to_string();
        match err.span() {
            Some(span) => self.value_error(span, message),
            None => self.whole_file_error(message),
        }
    }

    /// An error about the value at `span` (its type, as serde reports it), naming the key
    /// found in the text around it, as [`Source::toml_error`] does.
    pub fn value_error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let key = self.key_at(span.clone());
        self.error(span, key, message)
    }

    /// Best-effort dotted key for a span: the last `[table]` header above it, then the
    /// key the span names (unknown-field errors) or the key whose value it is in.
    fn key_at(&self, span: Range<usize>) -> String {
        let start = span.start.min(self.text.len());
        let before = &self.text[..start];
        // The innermost `[table]` / `[[array]]` header above the span, and the text after it.
        let mut header = None;
        let mut scope_start = 0;
        let mut offset = 0;
        for line in before.split_inclusive('\n') {
            let t = line.trim();
            if t.starts_with('[') && offset + line.len() <= start {
                header = Some(t.trim_matches(|c| c == '[' || c == ']').trim().to_string());
                scope_start = offset + line.len();
            }
            offset += line.len();
        }
        let before = &self.text[scope_start.min(start)..start];
        let spanned = self.text.get(span.clone()).unwrap_or("").trim();
        let is_bare_key = !spanned.is_empty()
            && spanned
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        let after = self.text[span.end.min(self.text.len())..].trim_start();
        let key = if is_bare_key && after.starts_with('=') {
            Some(spanned.to_string())
        } else {
            before.rfind('=').map(|eq| {
                let lhs = before[..eq].trim_end();
                // The key is the run of key characters before `=`: it starts after the
                // last other character, which may be more than one byte long.
                let begin = lhs
                    .char_indices()
                    .rfind(|&(_, c)| {
                        !(c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '"')
                    })
                    .map_or(0, |(i, c)| i + c.len_utf8());
                lhs[begin..].trim_matches('"').to_string()
            })
        };
        match (header, key) {
            (Some(h), Some(k)) if !k.is_empty() => format!("{h}.{k}"),
            (Some(h), _) => h,
            (None, Some(k)) => k,
            (None, None) => String::new(),
        }
    }
}
