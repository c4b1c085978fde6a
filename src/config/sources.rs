//! What a configuration is made from, and all the reading it takes: the
//! main file and the runtime file of the API's listeners ([`Sources`]),
//! then what their values point at outside them ([`Fetched`]: the API
//! token file, the addresses of DNS servers named by host), so that the
//! validation after it is pure. The API's listeners are written back here
//! too.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::catalog::{Claims, Refusal};
use super::error::quoted;
use super::names::{parse_dns_servers, system_resolve};
use super::raw::RawConfig;
use super::{ConfigError, MAX_CONFIG_BYTES, Overrides};

/// An API token file larger than this is not a token.
const MAX_TOKEN_BYTES: u64 = 4096;

/// A configuration text and what to call it in errors (usually its path).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Text {
    pub origin: String,
    pub text: String,
}

/// Without the text, which may hold secrets (`consul_token`).
impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Text({:?}, {} bytes)", self.origin, self.text.len())
    }
}

/// What a configuration is made from, kept so that it can be made again with
/// one part replaced: SIGHUP reads the main file anew, an API request
/// changes the API's listeners, and the rest stays as it was.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sources {
    /// The main file's text (empty with the command line alone).
    pub main: Text,
    /// The main file, read again on SIGHUP.
    pub path: Option<PathBuf>,
    pub overrides: Overrides,
    /// The API's listeners: a TOML document of `[listeners.NAME]` tables
    /// only (at start, the runtime file's text).
    pub api: Text,
    /// The listeners the Consul catalog asks for (`[catalog]`).
    pub catalog: CatalogListeners,
}

/// The catalog's listeners, as [`claims`](super::catalog::claims) made them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogListeners {
    /// A TOML document of `[listeners.NAME]` tables.
    pub text: Text,
    /// Each listener's service and `listen` tag.
    pub claimed_by: BTreeMap<String, (String, String)>,
    /// The listeners' names, first claim first.
    pub order: Vec<String>,
    /// The claims refused before validation.
    pub refused: Vec<Refusal>,
}

impl Sources {
    /// Reads `path` (if any) and, if it names one, the runtime file of the
    /// API's listeners.
    pub fn read(path: Option<&Path>, overrides: &Overrides) -> Result<Sources, ConfigError> {
        let main = match path {
            Some(path) => {
                let origin = path.display().to_string();
                let text = read_config(path).map_err(|e| ConfigError::one(&origin, e))?;
                Text { origin, text }
            }
            None => Text {
                origin: "<command line>".into(),
                text: String::new(),
            },
        };
        let api = match runtime_file(&main.text, path) {
            Some(runtime) => {
                let origin = runtime.display().to_string();
                let text = match std::fs::metadata(&runtime) {
                    // None yet: the API has added nothing.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                    _ => read_config(&runtime).map_err(|e| ConfigError::one(&origin, e))?,
                };
                Text { origin, text }
            }
            None => Text::default(),
        };
        Ok(Sources {
            main,
            path: path.map(Path::to_path_buf),
            overrides: overrides.clone(),
            api,
            catalog: CatalogListeners::default(),
        })
    }

    /// These sources with the main file read anew (SIGHUP).
    pub fn reread(&self) -> Result<Sources, ConfigError> {
        let Some(path) = &self.path else {
            return Ok(self.clone());
        };
        let origin = path.display().to_string();
        let text = read_config(path).map_err(|e| ConfigError::one(&origin, e))?;
        Ok(Sources {
            main: Text { origin, text },
            ..self.clone()
        })
    }

    /// `error`'s problems as an API client reads them: those in the API's
    /// listeners name their key (`listeners.web.bind: …`), not a line of a
    /// file the client never wrote.
    pub fn api_problems(&self, error: &ConfigError) -> Vec<String> {
        let in_api = |location: &str| {
            let line = location
                .strip_prefix(self.api.origin.as_str())?
                .strip_prefix(':')?;
            key_at_line(&self.api.text, line.parse().ok()?)
        };
        error
            .problems
            .iter()
            .map(|p| match in_api(&p.location) {
                Some(_) if p.message.starts_with("listeners.") => p.message.clone(),
                Some(key) => format!("{key}: {}", p.message),
                None => p.to_string(),
            })
            .collect()
    }

    /// The API's listeners, as `[listeners.NAME]` tables by name.
    pub fn api_listeners(&self) -> BTreeMap<String, toml::Table> {
        tables(&self.api.text)
    }

    /// These sources with the catalog's listeners replaced by `claims`'.
    pub fn with_catalog(&self, claims: Claims) -> Sources {
        let text = match claims.tables.is_empty() {
            true => String::new(),
            false => document(&claims.tables),
        };
        let catalog = CatalogListeners {
            text: Text {
                origin: CATALOG_ORIGIN.into(),
                text,
            },
            claimed_by: claims.claimed_by,
            order: claims.order,
            refused: claims.refused,
        };
        Sources {
            catalog,
            ..self.clone()
        }
    }

    /// These sources with the API's listeners replaced by `listeners`.
    pub fn with_api_listeners(&self, listeners: &BTreeMap<String, toml::Table>) -> Sources {
        let text = match listeners.is_empty() {
            true => String::new(),
            false => format!("{RUNTIME_FILE_HEADER}{}", document(listeners)),
        };
        Sources {
            api: Text {
                origin: self.api.origin.clone(),
                text,
            },
            ..self.clone()
        }
    }
}

impl Default for CatalogListeners {
    fn default() -> CatalogListeners {
        CatalogListeners {
            text: Text {
                origin: CATALOG_ORIGIN.into(),
                text: String::new(),
            },
            claimed_by: BTreeMap::new(),
            order: Vec::new(),
            refused: Vec::new(),
        }
    }
}

/// What the catalog's listeners are called in messages.
const CATALOG_ORIGIN: &str = "<catalog>";

/// A document of `[listeners.NAME]` tables.
pub(super) fn document(listeners: &BTreeMap<String, toml::Table>) -> String {
    let tables = listeners
        .iter()
        .map(|(name, t)| (name.clone(), toml::Value::Table(t.clone())));
    let mut document = toml::Table::new();
    document.insert("listeners".into(), toml::Value::Table(tables.collect()));
    // Tables only: they always serialize.
    toml::to_string(&document).unwrap_or_default()
}

/// The first lines of a runtime file.
const RUNTIME_FILE_HEADER: &str = "# Listeners added through sluice's API (PUT /v1/listeners/NAME), written by\n\
     # sluice after every change and read at start. Change them through the API.\n\n";

/// The dotted key (or table) that line `line` of a serialized document sets.
fn key_at_line(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().take(line).collect();
    let this = lines.get(line.checked_sub(1)?)?.trim();
    let header = |l: &&str| l.trim().strip_prefix('[')?.strip_suffix(']').map(str::to_string);
    let table = lines.iter().rev().find_map(header)?;
    match this.starts_with('[') {
        true => Some(table),
        false => Some(format!("{table}.{}", this.split_once('=')?.0.trim())),
    }
}

/// Writes the API's listeners to `path` so that no reader ever sees half a
/// file: a temporary file beside it, synced, then renamed over it.
pub fn save_runtime_file(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temporary = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = std::fs::File::create(&temporary).and_then(|mut file| {
        file.write_all(text.as_bytes())?;
        file.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&temporary, path)) {
        let _ = std::fs::remove_file(&temporary);
        return Err(e);
    }
    // The rename itself, durable too.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// The `[listeners.NAME]` tables of a valid document, by name.
pub(super) fn tables(text: &str) -> BTreeMap<String, toml::Table> {
    let document: toml::Table = toml::from_str(text).unwrap_or_default();
    let Some(toml::Value::Table(listeners)) = document.get("listeners") else {
        return BTreeMap::new();
    };
    listeners
        .iter()
        .filter_map(|(name, table)| Some((name.clone(), table.as_table()?.clone())))
        .collect()
}

/// The `runtime_file` the main file names, relative to the main file's
/// directory; what is wrong with it is for the validation to say.
fn runtime_file(text: &str, path: Option<&Path>) -> Option<PathBuf> {
    let document: toml::Table = toml::from_str(text).ok()?;
    let runtime = document.get("runtime_file")?.as_str()?;
    Some(relative_to(path, runtime))
}

/// `file` as named in the configuration at `config`: relative names are
/// taken from the configuration file's directory.
pub(crate) fn relative_to(config: Option<&Path>, file: &str) -> PathBuf {
    let dir = config.and_then(Path::parent).unwrap_or(Path::new(""));
    dir.join(file)
}

/// A configuration file's text, refusing files over [`MAX_CONFIG_BYTES`].
fn read_config(path: &Path) -> Result<String, String> {
    match read_capped(path, MAX_CONFIG_BYTES) {
        Ok(Some(text)) => Ok(text),
        Ok(None) => Err(format!(
            "larger than {MAX_CONFIG_BYTES} bytes, not a configuration file"
        )),
        Err(e) => Err(format!("cannot read: {e}")),
    }
}

/// The API's token from `path`, trimmed.
fn read_token(path: &Path) -> Result<String, String> {
    let shown = path.display();
    let too_large = || format!("{shown} is not a token: over {MAX_TOKEN_BYTES} bytes");
    // A byte more for the line end a token file usually has.
    let token = match read_capped(path, MAX_TOKEN_BYTES + 1) {
        Ok(Some(text)) => text.trim().to_string(),
        Ok(None) => return Err(too_large()),
        Err(e) => return Err(format!("cannot read {shown}: {e}")),
    };
    match token.len() as u64 {
        0 => Err(format!("{shown} is empty")),
        n if n > MAX_TOKEN_BYTES => Err(too_large()),
        _ => Ok(token),
    }
}

/// The file's text, or `None` if it is over `limit` bytes (without reading
/// it whole).
fn read_capped(path: &Path, limit: u64) -> std::io::Result<Option<String>> {
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_string(&mut text)?;
    Ok((text.len() as u64 <= limit).then_some(text))
}

/// What the configuration's values point at outside it, read before
/// validation: validation itself does no I/O.
#[derive(Debug, Default)]
pub(super) struct Fetched {
    /// `api_token_file`'s token, or why there is none.
    pub token: Option<Result<String, String>>,
    /// The DNS servers named by host (and port), as the system resolver
    /// answered.
    hosts: HashMap<(String, u16), Result<Vec<SocketAddr>, String>>,
}

impl Fetched {
    /// Reads the token file `raw` names and looks up its DNS servers' names
    /// (the command line's `--dns` first, as validation takes it).
    pub fn fetch(raw: &RawConfig, sources: &Sources) -> Fetched {
        let path = sources.path.as_deref();
        let token = raw
            .api_token_file
            .as_ref()
            .map(|file| read_token(&relative_to(path, file.get_ref())));
        let mut hosts = HashMap::new();
        let servers = match (&sources.overrides.dns, &raw.dns) {
            (Some(cli), _) => Some(cli.clone()),
            (None, file) => file.as_ref().map(|file| file.get_ref().joined()),
        };
        if let Some(servers) = servers {
            // Its problems are for validation to report.
            let _ = parse_dns_servers(&servers, &mut |host, port| {
                let found = system_resolve(host, port);
                hosts.insert((host.to_string(), port), found.clone());
                found
            });
        }
        Fetched { token, hosts }
    }

    /// The addresses fetched for DNS server `host`.
    pub fn resolved(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        match self.hosts.get(&(host.to_string(), port)) {
            Some(found) => found.clone(),
            None => Err(format!("DNS server {} was not looked up", quoted(host))),
        }
    }
}
