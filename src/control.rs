//! How the running server is asked for changes: [`Control`], a cheap handle
//! that sends one [`Command`] at a time to the server's loop and waits for
//! its answer. SIGHUP, the runtime API and embedding code all use it.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::sync::{mpsc, oneshot};

use crate::Error;
use crate::config::Config;

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// New listeners with the address they bound.
    pub added: Vec<(String, SocketAddr)>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

/// What the server is asked to do.
pub(crate) enum Command {
    Apply {
        config: Box<Config>,
        done: oneshot::Sender<Result<ReloadReport, Error>>,
    },
    ReloadFile {
        done: oneshot::Sender<Result<ReloadReport, Error>>,
    },
    /// Set (`Some`) or delete (`None`) one of the API's listeners.
    Listener {
        name: String,
        table: Option<toml::Table>,
        done: oneshot::Sender<Result<ApiChange, ApiError>>,
    },
}

/// Sends changes to a running [`crate::Server`]. Cheap to clone.
#[derive(Clone)]
pub struct Control {
    pub(crate) commands: mpsc::Sender<Command>,
}

impl Control {
    /// Applies `config` as a whole. On error nothing changed.
    pub async fn reload(&self, config: Config) -> Result<ReloadReport, Error> {
        self.ask(|done| Command::Apply {
            config: Box::new(config),
            done,
        })
        .await?
    }

    /// Reads the main file again and applies it with the API's listeners as
    /// they are (SIGHUP). On error nothing changed.
    pub async fn reload_file(&self) -> Result<ReloadReport, Error> {
        self.ask(|done| Command::ReloadFile { done }).await?
    }

    /// Creates or replaces the API's listener `name` from its table.
    pub async fn set_listener(&self, name: &str, table: toml::Table) -> Result<ApiChange, ApiError> {
        let name = name.to_string();
        let asked = self.ask(|done| Command::Listener {
            name,
            table: Some(table),
            done,
        });
        asked.await.map_err(|_| ApiError::Stopped)?
    }

    /// Removes the API's listener `name`; its connections drain.
    pub async fn delete_listener(&self, name: &str) -> Result<ApiChange, ApiError> {
        let name = name.to_string();
        let asked = self.ask(|done| Command::Listener {
            name,
            table: None,
            done,
        });
        asked.await.map_err(|_| ApiError::Stopped)?
    }

    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Error> {
        let (done, answer) = oneshot::channel();
        self.commands
            .send(command(done))
            .await
            .map_err(|_| Error::Stopped)?;
        answer.await.map_err(|_| Error::Stopped)
    }
}

/// What an API request changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiChange {
    Created,
    Replaced,
    Deleted,
}

/// Why an API request changed nothing (or, `NotSaved`, nothing lasting).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no listener named '{0}' was added through the API")]
    NotFound(String),
    #[error("listener '{name}' is defined in {file}: change it there and reload (SIGHUP)")]
    DefinedInFile { name: String, file: String },
    #[error(
        "listener '{name}' comes from the Consul catalog (service '{service}', tag '{tag}'): change the service's tags"
    )]
    FromCatalog {
        name: String,
        service: String,
        tag: String,
    },
    /// The problems, each naming its key; `conflict`: one is an address
    /// another listener has.
    #[error("{}", problems.join("; "))]
    Invalid { problems: Vec<String>, conflict: bool },
    #[error("{0}")]
    Apply(Error),
    #[error("applied, but not saved to {}: {source}; it is lost at restart", path.display())]
    NotSaved { path: PathBuf, source: io::Error },
    #[error("the server has stopped")]
    Stopped,
}
