//! Every config in `examples/` passes `portcullis validate` (plugins compiled and
//! configured), so the examples stay true as the config grows. `tls.toml` is validated in a
//! scratch copy next to certificates made here by rcgen.

use crate::support::*;
use crate::tls::Pki;
use std::path::{Path, PathBuf};

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        // The endpoint list that discovery-file.toml watches is data, not a config.
        .filter(|p| !p.ends_with("endpoints.toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_config_validates() {
    let files = examples();
    let names: Vec<_> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "ai-gateway.toml",
        "grpc.toml",
        "tls.toml",
        "hot-reload.toml",
        "vision.toml",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    for kind in ["dns", "file", "etcd", "zookeeper", "consul"] {
        let want = format!("discovery-{kind}.toml");
        assert!(names.contains(&want), "{want} missing: {names:?}");
    }
    for file in files.iter().filter(|p| !p.ends_with("tls.toml")) {
        assert_valid(file);
    }
}

#[test]
fn the_tls_example_validates_with_its_certificates_in_place() {
    let pki = Pki::new();
    let (server_cert, server_key) = pki.issue("server", &["localhost"], false);
    let (client_cert, client_key) = pki.issue("gateway", &["gateway.internal"], true);
    let dir = TempDir::new();
    let certs = dir.0.join("certs");
    std::fs::create_dir(&certs).unwrap();
    for (from, to) in [
        (server_cert, "server.pem"),
        (server_key, "server.key"),
        (pki.path("ca.pem"), "internal-ca.pem"),
        (client_cert, "gateway.pem"),
        (client_key, "gateway.key"),
    ] {
        std::fs::copy(from, certs.join(to)).unwrap();
    }
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tls.toml");
    let copy = dir.write("tls.toml", &std::fs::read_to_string(example).unwrap());
    assert_valid(&copy);
    // And without the certificates it is refused, naming the file: the test checks what
    // it claims to.
    std::fs::remove_file(certs.join("server.pem")).unwrap();
    let (ok, text) = validate(&copy);
    assert!(!ok && text.contains("certs/server.pem"), "{text}");
}
