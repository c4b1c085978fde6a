//! Changes to the running configuration from outside, one at a time: a
//! whole new configuration ([`crate::Control::reload`]), the main file read anew
//! (SIGHUP), or one listener set or deleted through the API. Each is made
//! into a configuration by the same validation as the file, applied by the
//! same `Running::reload`, logged once and counted by origin and result.
//! The API's listeners are saved to `runtime_file` after each change.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

use tracing::{error, info, warn};

use super::Running;
use crate::Error;
use crate::config::{Config, ConfigError, Origin, ProblemKind, save_runtime_file};
use crate::control::{ApiChange, ApiError, Command};
use crate::notify;

impl Running {
    pub(super) async fn handle(&mut self, command: Command) {
        match command {
            Command::Apply { config, done } => {
                let result = self.reload(*config, Origin::File).await;
                let _ = done.send(result);
            }
            Command::ReloadFile { done } => {
                notify::reloading();
                let sources = self.config.sources.clone();
                let result = match compose(move || Config::compose(sources.reread()?)).await {
                    Ok(config) => self.reload(config, Origin::File).await,
                    Err(e) => {
                        error!("reload rejected, the running configuration stays:\n{e}");
                        self.services.metrics.config_change(Origin::File, false);
                        Err(Error::Invalid(e))
                    }
                };
                // Serving again either way: the new configuration, or the old one.
                notify::ready(&self.summary());
                let _ = done.send(result);
            }
            Command::Listener { name, table, done } => {
                let result = self.change_listener(&name, table).await;
                match &result {
                    Ok(change) => info!(listener = name, ?change, "listener changed through the API"),
                    Err(e) => warn!(listener = name, error = %e, "API change rejected"),
                }
                // Those refused before `apply`, which counts the rest.
                let refused = matches!(
                    &result,
                    Err(ApiError::NotFound(_)
                        | ApiError::DefinedInFile { .. }
                        | ApiError::FromCatalog { .. }
                        | ApiError::Invalid { .. })
                );
                if refused {
                    self.services.metrics.config_change(Origin::Api, false);
                }
                let _ = done.send(result);
            }
        }
    }

    async fn change_listener(
        &mut self,
        name: &str,
        table: Option<toml::Table>,
    ) -> Result<ApiChange, ApiError> {
        let origin = self
            .config
            .listeners
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.origin);
        if origin == Some(Origin::File) {
            let file = self.config.sources.main.origin.clone();
            return Err(ApiError::DefinedInFile {
                name: name.into(),
                file,
            });
        }
        if origin == Some(Origin::Catalog) {
            let claimed_by = self.config.sources.catalog.claimed_by.get(name);
            let (service, tag) = claimed_by.cloned().unwrap_or_default();
            return Err(ApiError::FromCatalog {
                name: name.into(),
                service,
                tag,
            });
        }
        let mut listeners: BTreeMap<String, toml::Table> = self.config.sources.api_listeners();
        let change = match (table, listeners.contains_key(name)) {
            (None, false) => return Err(ApiError::NotFound(name.into())),
            (None, true) => {
                listeners.remove(name);
                ApiChange::Deleted
            }
            (Some(table), existed) => {
                listeners.insert(name.into(), table);
                if existed {
                    ApiChange::Replaced
                } else {
                    ApiChange::Created
                }
            }
        };
        let sources = self.config.sources.with_api_listeners(&listeners);
        let candidate = sources.clone();
        let config = compose(move || Config::compose(candidate)).await.map_err(|e| {
            let conflict = e.problems.iter().any(|p| p.kind == ProblemKind::Conflict);
            let problems = sources.api_problems(&e);
            ApiError::Invalid { problems, conflict }
        })?;
        self.reload(config, Origin::Api).await.map_err(ApiError::Apply)?;
        self.save_api_listeners()
            .map_err(|(path, source)| ApiError::NotSaved { path, source })?;
        Ok(change)
    }

    /// Writes the API's listeners to `runtime_file`, if there is one.
    fn save_api_listeners(&self) -> Result<(), (PathBuf, io::Error)> {
        let Some(path) = &self.config.runtime_file else {
            return Ok(());
        };
        save_runtime_file(path, &self.config.sources.api.text).map_err(|e| {
            error!(path = %path.display(), error = %e, "cannot save the API's listeners");
            (path.clone(), e)
        })
    }
}

/// Making a configuration off the runtime's threads: before validating, it
/// reads files and resolves DNS server names.
pub(super) async fn compose(
    make: impl FnOnce() -> Result<Config, ConfigError> + Send + 'static,
) -> Result<Config, ConfigError> {
    match tokio::task::spawn_blocking(make).await {
        Ok(result) => result,
        Err(e) => Err(ConfigError::one(
            "configuration",
            format!("validation failed unexpectedly: {e}"),
        )),
    }
}
