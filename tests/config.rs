//! Config fixtures: every file in `fixtures/config/valid` loads, and every
//! file in `fixtures/config/invalid` fails with exactly the text of its
//! `.err` twin (set SLUICE_BLESS=1 to rewrite the twins after a deliberate change).

use std::fs;
use std::path::{Path, PathBuf};

use sluice::config::{Config, Overrides};

fn fixtures(kind: &str, ext: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(kind);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

fn load(path: &Path) -> Result<Config, sluice::config::ConfigError> {
    let text = fs::read_to_string(path).unwrap();
    let origin = path.file_name().unwrap().to_string_lossy();
    Config::parse(&text, &origin, &Overrides::default())
}

#[test]
fn valid_configs_load() {
    for path in fixtures("valid", "toml") {
        if let Err(e) = load(&path) {
            panic!("{}:\n{e}", path.display());
        }
    }
}

#[test]
fn invalid_configs_fail_with_their_expected_errors() {
    let bless = std::env::var_os("SLUICE_BLESS").is_some();
    let mut wrong = Vec::new();
    for path in fixtures("invalid", "toml") {
        let got = match load(&path) {
            Ok(_) => "(loaded without error)".to_string(),
            Err(e) => e.to_string(),
        };
        let err_file = path.with_extension("err");
        if bless {
            fs::write(&err_file, format!("{got}\n")).unwrap();
        }
        let want = fs::read_to_string(&err_file).unwrap_or_default();
        if got != want.trim_end() {
            wrong.push(format!(
                "{}:\n  want: {}\n  got:  {got}",
                path.display(),
                want.trim_end()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn full_example_has_the_documented_values() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config/valid");
    let config = load(&dir.join("full.toml")).unwrap();
    assert_eq!(config.dns.servers, ["127.0.0.1:8600".parse().unwrap()]);
    let names: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["carbon", "graphite", "redis", "web"]);
    let redis = &config.listeners[2];
    assert_eq!(redis.bind, "[::]:6379".parse().unwrap());
    let sluice::config::BackendSource::Dns(query) = &redis.backends else {
        panic!()
    };
    assert_eq!(query.name, "primary.redis.service.consul.");
    assert!(query.tcp);
    assert_eq!(query.empty_grace, std::time::Duration::from_secs(5));
}

#[test]
fn an_endless_file_is_refused_without_reading_it_all() {
    let err = Config::load(Some(Path::new("/dev/zero")), &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("/dev/zero: larger than 1048576 bytes"), "{err}");
}
