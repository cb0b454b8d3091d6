//! `portcullis plugin new --lang rust|python|js|c NAME`: a working auth plugin to start
//! from, with the WIT and a `build.sh` that turns it into a component.

use anyhow::{bail, Context as _};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
    C,
}

/// The WIT package and the WASI packages it imports (`wit/deps/`), as a project needs
/// them to generate bindings.
const WIT: &[(&str, &str)] = &[
    ("wit/plugin.wit", include_str!("../wit/plugin.wit")),
    (
        "wit/capabilities.wit",
        include_str!("../wit/capabilities.wit"),
    ),
    ("wit/deps/cli.wit", include_str!("../wit/deps/cli.wit")),
    (
        "wit/deps/clocks.wit",
        include_str!("../wit/deps/clocks.wit"),
    ),
    (
        "wit/deps/filesystem.wit",
        include_str!("../wit/deps/filesystem.wit"),
    ),
    ("wit/deps/http.wit", include_str!("../wit/deps/http.wit")),
    ("wit/deps/io.wit", include_str!("../wit/deps/io.wit")),
    (
        "wit/deps/random.wit",
        include_str!("../wit/deps/random.wit"),
    ),
    (
        "wit/deps/sockets.wit",
        include_str!("../wit/deps/sockets.wit"),
    ),
    (
        "wit/deps/keyvalue/atomic.wit",
        include_str!("../wit/deps/keyvalue/atomic.wit"),
    ),
    (
        "wit/deps/keyvalue/batch.wit",
        include_str!("../wit/deps/keyvalue/batch.wit"),
    ),
    (
        "wit/deps/keyvalue/store.wit",
        include_str!("../wit/deps/keyvalue/store.wit"),
    ),
    (
        "wit/deps/keyvalue/watch.wit",
        include_str!("../wit/deps/keyvalue/watch.wit"),
    ),
    (
        "wit/deps/keyvalue/world.wit",
        include_str!("../wit/deps/keyvalue/world.wit"),
    ),
];

/// The WASI preview1 reactor adapter in a C project: `wasm-tools component new` turns the
/// module clang links (which imports `wasi_snapshot_preview1`) into a component with it.
/// It comes from the wasmtime release this gateway embeds, so its WASI imports are ones the
/// host links.
const ADAPTER_FILE: &str = "wasi_snapshot_preview1.reactor.wasm";

fn text(t: &'static str) -> Cow<'static, [u8]> {
    Cow::Borrowed(t.as_bytes())
}

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
    let fill = |t: &str| -> Cow<'static, [u8]> {
        t.replace("{{name}}", name)
            .replace("{{crate}}", &crate_name)
            .into_bytes()
            .into()
    };
    let mut files: Vec<(&str, Cow<'static, [u8]>)> =
        WIT.iter().map(|(path, t)| (*path, text(t))).collect();
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
                text(include_str!("../plugins/python/api-key/app.py")),
            ));
            files.push((
                "requirements.txt",
                text(include_str!("../plugins/python/api-key/requirements.txt")),
            ));
            files.push((
                "build.sh",
                fill(include_str!("../templates/python/build.sh")),
            ));
        }
        Lang::Js => {
            files.push((
                "plugin.js",
                text(include_str!("../plugins/js/bearer/bearer.js")),
            ));
            let package = include_str!("../plugins/js/bearer/package.json")
                .replace("portcullis-plugin-js-bearer", name)
                .replace("bash ../../build-polyglot.sh js", "bash build.sh");
            files.push(("package.json", package.into_bytes().into()));
            files.push(("build.sh", fill(include_str!("../templates/js/build.sh"))));
        }
        Lang::C => {
            // The shipped C plugin as it is: its build.sh names the component after the
            // project's folder and finds the tools on PATH, in $WIT_BINDGEN, $WASM_TOOLS.
            files.push((
                "plugin.c",
                text(include_str!("../plugins/c/api-key/api_key.c")),
            ));
            files.push(("json.c", text(include_str!("../plugins/c/api-key/json.c"))));
            files.push(("json.h", text(include_str!("../plugins/c/api-key/json.h"))));
            files.push((
                "build.sh",
                text(include_str!("../plugins/c/api-key/build.sh")),
            ));
            files.push(("README.md", fill(include_str!("../templates/c/README.md"))));
            files.push((
                ADAPTER_FILE,
                Cow::Borrowed(
                    wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
                ),
            ));
        }
    }
    for (rel, bytes) in &files {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("files are in a folder"))
            .with_context(|| format!("cannot create {}", root.display()))?;
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(root)
}
