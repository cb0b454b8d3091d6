//! `discovery = { kind = "file", … }`: the keys as written and their validation into
//! [`FileConfig`].

use crate::config::discovery::source_keys;
use crate::config::section::Section;
use crate::config::units::Dur;
use crate::config::ConfigError;
use std::path::{Path, PathBuf};
use std::time::Duration;

source_keys! {
    /// `kind = "file"`, as written.
    struct RawFile {
        /// `path = "endpoints.toml"` (relative to the config file).
        path: String,
        /// `format = "toml" | "json"` (default: from the file's extension).
        format: String,
        /// `interval = "1s"`: how often the file is checked for changes.
        interval: Dur,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileConfig {
    /// Resolved against the config file's folder.
    pub path: PathBuf,
    pub format: FileFormat,
    pub interval: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    Toml,
    Json,
}

impl FileConfig {
    /// What is read, for logs and error messages.
    pub fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

pub(crate) fn validate(cx: &Section<'_>, r: RawFile) -> Result<FileConfig, ConfigError> {
    let path = cx.required(r.path, "path", "discovery kind `file`")?;
    let path_span = path.span();
    let rel = cx.non_empty(path, "path")?;
    let format = match (&r.format, Path::new(&rel).extension()) {
        (Some(f), _) => match f.get_ref().as_str() {
            "toml" => FileFormat::Toml,
            "json" => FileFormat::Json,
            other => {
                return Err(cx.error(
                    f.span(),
                    "format",
                    format!("unknown format `{other}` (expected \"toml\" or \"json\")"),
                ))
            }
        },
        (None, Some(e)) if e == "toml" => FileFormat::Toml,
        (None, Some(e)) if e == "json" => FileFormat::Json,
        (None, _) => {
            return Err(cx.error(
                path_span,
                "path",
                format!("cannot tell the format of `{rel}` from its extension; set format = \"toml\" or \"json\""),
            ))
        }
    };
    Ok(FileConfig {
        path: cx.src.file.parent().unwrap_or(Path::new(".")).join(rel),
        format,
        interval: cx
            .between(&r.interval, "interval", Dur::millis(10)..=Dur::secs(3600))?
            .map_or(Duration::from_secs(1), |d| d.0),
    })
}
