//! The Consul catalog as a source of listeners (`[catalog]`): one blocking
//! query on `/v1/catalog/services`, by the same rules as the health watches
//! (index, backoff, jitter, token), publishing each service's tags as they
//! change. Consul unreachable or answering garbage: the last catalog stays,
//! so no port closes because the agent restarted.

use tokio::sync::watch;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::consul::{Connection, Pacing};
use crate::alarm::Alarm;
use crate::config::{ConsulSettings, Services};

/// Watches the catalog until `shutdown`; `catalog` gets every change
/// (`None` until the first answer).
pub(crate) async fn watch(
    settings: ConsulSettings,
    datacenter: Option<String>,
    catalog: watch::Sender<Option<Services>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let mut connection = Connection::new(settings, tracker);
    let mut pacing = Pacing::default();
    let failing = Alarm::new();
    let params = datacenter.map_or_else(String::new, |dc| format!("dc={dc}"));
    loop {
        let started = Instant::now();
        let answer = tokio::select! {
            answer = connection.blocking_get::<Services>("/v1/catalog/services", &params, pacing.index) => answer,
            _ = shutdown.cancelled() => return,
        };
        let pause = pacing.after(started, answer.as_ref().map(|(index, _)| *index));
        match answer {
            Err(e) => {
                if let Some(repeated) = failing.raise() {
                    warn!(error = %e, repeated, "Consul catalog watch failed, its listeners stay as they are");
                }
            }
            Ok((_, services)) => {
                if failing.clear() {
                    info!("Consul catalog answers again");
                }
                catalog.send_if_modified(|current| {
                    let changed = current.as_ref() != Some(&services);
                    *current = Some(services);
                    changed
                });
            }
        }
        tokio::select! {
            _ = sleep(pause) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
