//! `portcullis plugin new --lang rust|python|js NAME`: a working auth plugin to start
//! from, with the WIT and a `build.sh` that turns it into a component.

use anyhow::{bail, Context as _};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

const WIT: &str = include_str!("../wit/plugin.wit");

/// Creates `dir/name` with the plugin project; returns its path.
pub fn new_plugin(lang: Lang, name: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.as_bytes()[0].is_ascii_lowercase();
    if !valid {
        bail!("plugin name `{name}` must start with a letter and hold only a-z, 0-9 and `-`");
    }
    let root = dir.join(name);
    if root.exists() {
        bail!("{} already exists", root.display());
    }
    let crate_name = name.replace('-', "_");
    let fill = |t: &str| {
        t.replace("{{name}}", name)
            .replace("{{crate}}", &crate_name)
    };
    let mut files: Vec<(&str, String)> = vec![("wit/plugin.wit", WIT.to_string())];
    match lang {
        Lang::Rust => {
            files.push((
                "Cargo.toml",
                fill(include_str!("../templates/rust/Cargo.toml")),
            ));
            files.push(("src/lib.rs", fill(include_str!("../templates/rust/lib.rs"))));
            files.push(("build.sh", fill(include_str!("../templates/rust/build.sh"))));
        }
        Lang::Python => {
            files.push((
                "app.py",
                include_str!("../plugins/python/api-key/app.py").to_string(),
            ));
            files.push((
                "requirements.txt",
                include_str!("../plugins/python/api-key/requirements.txt").to_string(),
            ));
            files.push((
                "build.sh",
                fill(include_str!("../templates/python/build.sh")),
            ));
        }
        Lang::Js => {
            files.push((
                "plugin.js",
                include_str!("../plugins/js/bearer/bearer.js").to_string(),
            ));
            let package = include_str!("../plugins/js/bearer/package.json")
                .replace("portcullis-plugin-js-bearer", name)
                .replace("bash ../../build-polyglot.sh js", "bash build.sh");
            files.push(("package.json", package));
            files.push(("build.sh", fill(include_str!("../templates/js/build.sh"))));
        }
    }
    for (rel, text) in &files {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("files are in a folder"))
            .with_context(|| format!("cannot create {}", root.display()))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(root)
}
