//! The context every part of validation words its errors through: which table of the file
//! is being read (`server`, `upstreams[2].retry`, …), where it is, and the range, duration
//! and presence checks its keys share. Each check words its error the same way wherever it
//! is used, so the same mistake reads the same in every section.

use super::error::{ConfigError, Source};
use super::units::Dur;
use std::fmt::Display;
use std::ops::{Range, RangeInclusive};
use std::time::Duration;
use toml::Spanned;

/// One table of the config being validated.
pub(crate) struct Section<'a> {
    pub src: &'a Source<'a>,
    /// Dotted key of the table, e.g. `upstreams[3].discovery`.
    pub key: String,
    /// Where the table is: errors about a key that is missing (or about the table as a
    /// whole) point here.
    pub span: Range<usize>,
}

impl<'a> Section<'a> {
    pub fn new(src: &'a Source<'a>, key: impl Into<String>, span: Range<usize>) -> Self {
        Section {
            src,
            key: key.into(),
            span,
        }
    }

    /// The table `key` inside this one, e.g. `retry` in `upstreams[0]`.
    pub fn table(&self, key: &str, span: Range<usize>) -> Section<'a> {
        Section::new(self.src, self.key(key), span)
    }

    /// The dotted key of `key` in this table.
    pub fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.key)
    }

    /// An error about `key` of this table, at `span`.
    pub fn error(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        self.src.error(span, self.key(key), message)
    }

    /// An error about `key` that points at the table (the key is missing, or it clashes
    /// with another).
    pub fn error_at_table(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.error(self.span.clone(), key, message)
    }

    /// `v`, or "WHAT needs `KEY`" at the table when it is missing.
    pub fn required<T>(
        &self,
        v: Option<Spanned<T>>,
        key: &str,
        what: &str,
    ) -> Result<Spanned<T>, ConfigError> {
        v.ok_or_else(|| self.error_at_table(key, format!("{what} needs `{key}`")))
    }

    /// The `name` of an upstream, route or plugin (`what`): not empty, and none of `taken`.
    pub fn name<'n>(
        &self,
        name: &Spanned<String>,
        what: &str,
        mut taken: impl Iterator<Item = &'n str>,
    ) -> Result<String, ConfigError> {
        let n = name.get_ref();
        if n.is_empty() {
            return Err(self.error(name.span(), "name", "must not be empty"));
        }
        if taken.any(|t| t == n) {
            return Err(self.error(name.span(), "name", format!("duplicate {what} name `{n}`")));
        }
        Ok(n.clone())
    }

    /// The text of `v`, which must not be empty or blank.
    pub fn non_empty(&self, v: Spanned<String>, key: &str) -> Result<String, ConfigError> {
        if v.get_ref().trim().is_empty() {
            return Err(self.error(v.span(), key, "must not be empty"));
        }
        Ok(v.into_inner())
    }

    /// `v` when it lies in `range`; otherwise "V is out of range A..=B" at `v`.
    pub fn range<T: PartialOrd + Display + Copy>(
        &self,
        v: &Option<Spanned<T>>,
        key: &str,
        range: RangeInclusive<T>,
    ) -> Result<Option<T>, ConfigError> {
        self.within(v, key, &range, |v| {
            format!("{v} is out of range {}..={}", range.start(), range.end())
        })
    }

    /// `v` when it lies in `range`; otherwise "must be between A and B" at `v`.
    pub fn between<T: PartialOrd + Display + Copy>(
        &self,
        v: &Option<Spanned<T>>,
        key: &str,
        range: RangeInclusive<T>,
    ) -> Result<Option<T>, ConfigError> {
        self.within(v, key, &range, |_| {
            format!("must be between {} and {}", range.start(), range.end())
        })
    }

    /// A duration that must be more than zero.
    pub fn positive(
        &self,
        v: &Option<Spanned<Dur>>,
        key: &str,
    ) -> Result<Option<Duration>, ConfigError> {
        match v {
            Some(s) if s.get_ref().0.is_zero() => {
                Err(self.error(s.span(), key, "must be more than 0"))
            }
            _ => Ok(v.as_ref().map(|s| s.get_ref().0)),
        }
    }

    /// The value among `choices` that `v` names (`default` when absent); otherwise
    /// "unknown WHAT `V` (expected "a", "b" or "c")" at `v`.
    pub fn choice<T: Copy>(
        &self,
        v: &Option<Spanned<String>>,
        key: &str,
        what: &str,
        choices: &[(&str, T)],
        default: T,
    ) -> Result<T, ConfigError> {
        let Some(v) = v else { return Ok(default) };
        if let Some((_, t)) = choices.iter().find(|(name, _)| *name == v.get_ref()) {
            return Ok(*t);
        }
        let names: Vec<String> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        let expected = match names.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        Err(self.error(
            v.span(),
            key,
            format!("unknown {what} `{}` (expected {expected})", v.get_ref()),
        ))
    }

    fn within<T: PartialOrd + Copy>(
        &self,
        v: &Option<Spanned<T>>,
        key: &str,
        range: &RangeInclusive<T>,
        message: impl FnOnce(&T) -> String,
    ) -> Result<Option<T>, ConfigError> {
        match v {
            None => Ok(None),
            Some(s) if range.contains(s.get_ref()) => Ok(Some(*s.get_ref())),
            Some(s) => Err(self.error(s.span(), key, message(s.get_ref()))),
        }
    }
}

/// The span of `v`, or `fallback` when it is absent.
pub(crate) fn span_or<T>(v: &Option<Spanned<T>>, fallback: &Range<usize>) -> Range<usize> {
    v.as_ref().map_or(fallback.clone(), |s| s.span())
}
