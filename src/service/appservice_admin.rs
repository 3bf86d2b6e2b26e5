//! Application services registered, listed and removed while the server runs (the admin
//! API's `/_conduit/admin/v1/appservices` and `conduit appservice add|remove`): the
//! registration goes through `Appservices` (checked as a file is, stored, audited), then the
//! delivery side follows at once — an added appservice's sender account exists and its
//! queue starts from now, as after a reload; a removed one's queues end without waiting for
//! their backoff, so nothing more is sent to it. Nothing depends on this service.

use std::sync::Arc;

use serde_json::{Value as JsonValue, json};

use super::{
    appservice_ephemeral::AppserviceEphemeral,
    appservice_sender::AppserviceSender,
    appservices::{Appservices, Registry, Source, summary},
    context::RequestContext,
    outbox::{Courier, Outbox},
};
use crate::{Error, Result, matrix::appservice::Registration};

pub struct AppserviceAdmin {
    appservices: Arc<Appservices>,
    sender: Arc<AppserviceSender>,
    outbox: Arc<Outbox>,
}

impl AppserviceAdmin {
    pub fn new(appservices: Arc<Appservices>, sender: Arc<AppserviceSender>, outbox: Arc<Outbox>) -> Self {
        Self { appservices, sender, outbox }
    }

    /// Every registration: those in force (from files and added at run time) in the order
    /// they are checked, then those added at run time that are not in force, with why.
    pub fn list(&self) -> Vec<JsonValue> {
        let registry = self.appservices.registry();
        let mut all: Vec<JsonValue> = registry.list.iter().map(|r| describe(&registry, r)).collect();
        all.extend(registry.shelved.iter().map(|shelved| {
            json!({
                "id": shelved.id,
                "source": "admin_api",
                "added_ts": shelved.added_ms,
                "in_force": false,
                "problem": shelved.problem,
            })
        }));
        all
    }

    /// One registration, as `list` shows it.
    pub fn get(&self, id: &str) -> Result<JsonValue> {
        self.list()
            .into_iter()
            .find(|entry| entry["id"] == id)
            .ok_or_else(|| Error::not_found(format!("No application service `{id}` is registered")))
    }

    /// Register the appservice `text` describes (YAML or JSON) and start serving it.
    pub fn register(&self, context: &RequestContext, text: &str) -> Result<JsonValue> {
        let registration = self.appservices.add(context, text)?;
        self.sender.open_queues()?;
        tracing::info!(appservice = %registration.id, "application service registered through the admin API");
        let registry = self.appservices.registry();
        Ok(describe(&registry, &registration))
    }

    /// Remove an appservice added at run time: its token stops working at once and its
    /// queues end.
    pub fn remove(&self, context: &RequestContext, id: &str) -> Result<()> {
        self.appservices.remove(context, id)?;
        self.outbox.recheck(AppserviceSender::KIND, id);
        self.outbox.recheck(AppserviceEphemeral::KIND, id);
        tracing::info!(appservice = %id, "application service removed through the admin API");
        Ok(())
    }
}

/// A registration in force as the admin API shows it: what it claims and where it comes
/// from, never its tokens.
fn describe(registry: &Registry, registration: &Registration) -> JsonValue {
    let mut entry = summary(registration);
    match registry.source(&registration.id) {
        Some(Source::File(path)) => {
            entry["source"] = "file".into();
            entry["file"] = path.display().to_string().into();
        }
        Some(Source::Stored { added_ms }) => {
            entry["source"] = "admin_api".into();
            entry["added_ts"] = (*added_ms).into();
        }
        None => {}
    }
    entry["in_force"] = true.into();
    entry
}
