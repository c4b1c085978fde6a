//! The catalog's listeners in the running server: the watch on Consul's
//! catalog started with `[catalog]` (and again when Consul's address or the
//! datacenter changes), each answer held against `empty_grace` (a service
//! that stops claiming a port keeps it that long, so a flapping
//! registration never closes and reopens it), then applied as a reload
//! from the `catalog` origin, through the same plan and apply as any other.

use std::collections::{BTreeMap, BTreeSet};

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use super::Running;
use super::changes::compose;
use crate::Error;
use crate::config::{
    CatalogSettings, Claims, Config, ConsulSettings, Origin, Refusal, RefusalReason, Services, catalog_claims,
};
use crate::discovery::catalog;

/// The watch of the catalog, and what the server remembers of it.
pub(super) struct Feed {
    answers: watch::Receiver<Option<Services>>,
    stop: CancellationToken,
    /// What the watch was started with.
    started_with: (ConsulSettings, Option<String>),
    /// Each service that claimed a port: its tags, when it last did, and
    /// whether it still does.
    seen: BTreeMap<String, Seen>,
    /// The refusals logged, so that each is logged once while it lasts.
    logged: BTreeSet<Refusal>,
}

struct Seen {
    tags: Vec<String>,
    last: Instant,
    claiming: bool,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What the server waits on for the catalog: a new answer, or the end of a
/// service's grace. Owns no borrow of the server.
pub(super) async fn next_event(
    answers: Option<watch::Receiver<Option<Services>>>,
    grace_ends: Option<Instant>,
) {
    let Some(mut answers) = answers else {
        return std::future::pending().await;
    };
    let grace = async {
        match grace_ends {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        changed = answers.changed() => if changed.is_err() { std::future::pending::<()>().await },
        () = grace => {}
    }
}

impl Feed {
    /// The services to serve at `now`: those claiming a port, and those
    /// that stopped within their grace.
    fn hold(&mut self, settings: &CatalogSettings, services: &Services, now: Instant) -> Services {
        for seen in self.seen.values_mut() {
            seen.claiming = false;
        }
        for (service, tags) in services.iter().filter(|(_, tags)| settings.claims_a_port(tags)) {
            let tags = tags.clone();
            let seen = Seen {
                tags,
                last: now,
                claiming: true,
            };
            self.seen.insert(service.clone(), seen);
        }
        self.seen.retain(|_, seen| {
            seen.claiming || now.saturating_duration_since(seen.last) < settings.empty_grace
        });
        self.seen
            .iter()
            .map(|(service, seen)| (service.clone(), seen.tags.clone()))
            .collect()
    }
}

impl Running {
    /// Starts, restarts or stops the catalog's watch as the running
    /// configuration asks.
    pub(super) fn follow_catalog(&mut self) {
        let Some(settings) = &self.config.catalog else {
            self.catalog = None;
            return;
        };
        let wanted = (self.config.consul.clone(), settings.datacenter.clone());
        if self
            .catalog
            .as_ref()
            .is_some_and(|feed| feed.started_with == wanted)
        {
            return;
        }
        let (tx, answers) = watch::channel(None);
        let stop = self.services.shutdown.child_token();
        let tracker = &self.services.tracker;
        let watching = catalog::watch(
            wanted.0.clone(),
            wanted.1.clone(),
            tx,
            stop.clone(),
            tracker.clone(),
        );
        tracker.spawn(watching);
        let (seen, logged) = match self.catalog.take() {
            Some(mut old) => (std::mem::take(&mut old.seen), std::mem::take(&mut old.logged)),
            None => Default::default(),
        };
        self.catalog = Some(Feed {
            answers,
            stop,
            started_with: wanted,
            seen,
            logged,
        });
    }

    /// What [`next_event`] waits on now.
    pub(super) fn catalog_waits(&self) -> (Option<watch::Receiver<Option<Services>>>, Option<Instant>) {
        let Some(feed) = &self.catalog else {
            return (None, None);
        };
        let grace = self.config.catalog.as_ref().map(|c| c.empty_grace);
        let leaving = feed.seen.values().filter(|seen| !seen.claiming);
        let grace_ends = leaving.map(|seen| seen.last).min().zip(grace);
        (
            Some(feed.answers.clone()),
            grace_ends.map(|(last, grace)| last + grace),
        )
    }

    /// Whether the catalog has yet to answer once.
    pub(super) fn catalog_pending(&self) -> bool {
        self.catalog
            .as_ref()
            .is_some_and(|feed| feed.answers.borrow().is_none())
    }

    /// Applies the catalog as it is now (a new answer, or a grace over).
    pub(super) async fn refresh_catalog(&mut self) {
        let (Some(feed), Some(settings)) = (&mut self.catalog, &self.config.catalog) else {
            return;
        };
        let Some(services) = feed.answers.borrow_and_update().clone() else {
            return;
        };
        let held = feed.hold(settings, &services, Instant::now());
        let serving: Vec<String> = self.config.sources.catalog.claimed_by.keys().cloned().collect();
        let mut claims = catalog_claims(settings, &held, &serving);
        // A port another program holds refuses that claim, not the catalog:
        // left out, and the others applied without it.
        for _ in 0..=claims.order.len() {
            let sources = self.config.sources.with_catalog(claims.clone());
            if sources.catalog == self.config.sources.catalog {
                break;
            }
            let config = match compose(move || Config::compose(sources)).await {
                Ok(config) => config,
                Err(e) => {
                    error!("the catalog's listeners cannot be applied:\n{e}");
                    break;
                }
            };
            match self.reload(config, Origin::Catalog).await {
                Err(Error::Bind {
                    listener,
                    addr,
                    source,
                }) if claims.tables.contains_key(&listener) => {
                    let message = format!("cannot bind {addr}: {source}");
                    unclaim(&mut claims, &listener, message);
                }
                _ => break,
            }
        }
        self.log_refusals();
        self.publish();
    }

    /// Logs each refused claim once while it lasts.
    fn log_refusals(&mut self) {
        let Some(feed) = &mut self.catalog else {
            return;
        };
        let refused: BTreeSet<Refusal> = self.config.catalog_refused.iter().cloned().collect();
        for refusal in refused.difference(&feed.logged) {
            warn!(
                service = refusal.service,
                tag = refusal.tag,
                reason = refusal.reason.label(),
                "catalog claim refused: {}",
                refusal.message
            );
        }
        feed.logged = refused;
    }
}

/// Takes the listener `name` out of `claims`, refused as a `conflict`.
fn unclaim(claims: &mut Claims, name: &str, message: String) {
    claims.tables.remove(name);
    claims.order.retain(|n| n != name);
    let (service, tag) = claims.claimed_by.remove(name).unwrap_or_default();
    claims.refused.push(Refusal {
        service,
        tag,
        reason: RefusalReason::Conflict,
        message,
    });
    claims.refused.sort();
}
