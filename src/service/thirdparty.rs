//! Third-party networks (spec: Client-Server API, "Third-party networks"), answered by the
//! application services that bridge them: a protocol is offered by every appservice whose
//! registration lists it in `protocols`, and each lookup asks those appservices over HTTP
//! (Application Service API, "Third-party networks"), all at once and each within the
//! query timeout, so an appservice that hangs or fails delays or loses only its own part.
//!
//! Answers are merged as Synapse merges them: a protocol's metadata is the first
//! appservice's (in registration order), with the `instances` of all of them, each instance
//! given the `instance_id` (`{appservice_id}|{network_id}`) that `/publicRooms` takes as
//! `third_party_instance_id`; lookups list every appservice's results, keeping those of the
//! shape the spec gives (the searched field and `protocol` as strings, `fields` an object).
//! Unlike Synapse (which answers an empty list), a lookup that finds nothing answers
//! `404 M_NOT_FOUND`, as the spec says; the reverse lookups (`?alias=`, `?userid=`), which
//! Synapse leaves unanswered, ask the appservices whose namespaces hold the alias or user.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{RoomAliasId, UserId};
use serde_json::{Map, Value as JsonValue};

use super::appservices::{Appservices, encode_segment};
use crate::{
    Error, Result,
    matrix::appservice::{NamespaceKind, Registration, instance_id},
};

/// What a lookup looks for: the field each result must name it by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entity {
    /// Portal rooms: results carry `alias`.
    Location,
    /// Users: results carry `userid`.
    User,
}

impl Entity {
    fn path(self) -> &'static str {
        match self {
            Self::Location => "location",
            Self::User => "user",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::Location => "alias",
            Self::User => "userid",
        }
    }
}

pub struct ThirdParty {
    appservices: Arc<Appservices>,
}

impl ThirdParty {
    pub fn new(appservices: Arc<Appservices>) -> Self {
        Self { appservices }
    }

    /// The registered appservices that offer `protocol` and can be asked (they have a URL).
    fn offering(&self, protocol: &str) -> Vec<Arc<Registration>> {
        self.appservices
            .registry()
            .list
            .iter()
            .filter(|a| a.url.is_some() && a.protocols.iter().any(|p| p == protocol))
            .cloned()
            .collect()
    }

    /// `GET /thirdparty/protocols`: every registered protocol whose appservices answered
    /// with its metadata, merged.
    pub async fn protocols(&self) -> Result<BTreeMap<String, JsonValue>> {
        let registry = self.appservices.registry();
        let mut names: Vec<&String> = registry.list.iter().flat_map(|a| &a.protocols).collect();
        names.sort();
        names.dedup();
        let mut asked = tokio::task::JoinSet::new();
        for name in names {
            let name = name.clone();
            let appservices = Arc::clone(&self.appservices);
            let offering = self.offering(&name);
            asked.spawn(async move {
                let merged = metadata(&appservices, &offering, &name).await;
                (name, merged)
            });
        }
        let mut protocols = BTreeMap::new();
        while let Some(joined) = asked.join_next().await {
            match joined {
                Ok((name, Some(merged))) => {
                    protocols.insert(name, merged);
                }
                Ok((_, None)) => {}
                Err(e) => return Err(Error::internal(format!("third-party protocol lookup: {e}"))),
            }
        }
        Ok(protocols)
    }

    /// `GET /thirdparty/protocol/{protocol}`: its metadata, or `M_NOT_FOUND` when no
    /// appservice offers it (or none of those answered).
    pub async fn protocol(&self, protocol: &str) -> Result<JsonValue> {
        let offering = self.offering(protocol);
        if offering.is_empty() {
            return Err(unknown_protocol(protocol));
        }
        metadata(&self.appservices, &offering, protocol).await.ok_or_else(|| {
            Error::not_found(format!("No application service answered for protocol {protocol:?}"))
        })
    }

    /// `GET /thirdparty/location/{protocol}` and `/thirdparty/user/{protocol}`: what the
    /// appservices offering `protocol` find for `fields`.
    pub async fn lookup(
        &self,
        entity: Entity,
        protocol: &str,
        fields: &BTreeMap<String, String>,
    ) -> Result<Vec<JsonValue>> {
        let offering = self.offering(protocol);
        if offering.is_empty() {
            return Err(unknown_protocol(protocol));
        }
        // The client's own token, if it came in the query string, is not the appservice's
        // business.
        let query: Vec<(String, String)> = fields
            .iter()
            .filter(|(key, _)| key.as_str() != "access_token")
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let path = format!("/_matrix/app/v1/thirdparty/{}/{}", entity.path(), encode_segment(protocol));
        self.results(entity, &offering, &path, &query).await
    }

    /// `GET /thirdparty/location?alias=`: the third-party locations the appservices whose
    /// alias namespaces hold `alias` say it bridges.
    pub async fn locations_of_alias(&self, alias: &RoomAliasId) -> Result<Vec<JsonValue>> {
        self.reverse(Entity::Location, NamespaceKind::Aliases, alias.as_str()).await
    }

    /// `GET /thirdparty/user?userid=`: the third-party users the appservices whose user
    /// namespaces hold `user_id` say it stands for.
    pub async fn users_of_user_id(&self, user_id: &UserId) -> Result<Vec<JsonValue>> {
        self.reverse(Entity::User, NamespaceKind::Users, user_id.as_str()).await
    }

    async fn reverse(&self, entity: Entity, kind: NamespaceKind, id: &str) -> Result<Vec<JsonValue>> {
        let claiming: Vec<Arc<Registration>> = self
            .appservices
            .registry()
            .list
            .iter()
            .filter(|a| a.url.is_some() && a.claims(kind, id))
            .cloned()
            .collect();
        let path = format!("/_matrix/app/v1/thirdparty/{}", entity.path());
        let query = [(entity.key().to_owned(), id.to_owned())];
        self.results(entity, &claiming, &path, &query).await
    }

    /// Ask `appservices` and list their valid results; `M_NOT_FOUND` when there are none.
    async fn results(
        &self,
        entity: Entity,
        appservices: &[Arc<Registration>],
        path: &str,
        query: &[(String, String)],
    ) -> Result<Vec<JsonValue>> {
        let mut found = Vec::new();
        for (appservice, answer) in self.appservices.get_json_from_each(appservices, path, query).await {
            let JsonValue::Array(results) = answer else {
                tracing::warn!(appservice = %appservice.id, path, "third-party lookup: the answer is not a list");
                continue;
            };
            for result in results {
                if valid_result(&result, entity.key()) {
                    found.push(result);
                } else {
                    tracing::warn!(appservice = %appservice.id, path, "third-party lookup: a result of the wrong shape was left out");
                }
            }
        }
        if found.is_empty() {
            return Err(Error::not_found(match entity {
                Entity::Location => "No third-party locations were found",
                Entity::User => "No third-party users were found",
            }));
        }
        Ok(found)
    }
}

fn unknown_protocol(protocol: &str) -> Error {
    Error::not_found(format!("Unknown protocol {protocol:?}: no application service offers it"))
}

/// Ask `offering` for `protocol`'s metadata and merge the answers: the first valid one's
/// fields, every valid one's instances, each named by its appservice. `None` when no
/// appservice gave a valid answer.
async fn metadata(
    appservices: &Appservices,
    offering: &[Arc<Registration>],
    protocol: &str,
) -> Option<JsonValue> {
    let path = format!("/_matrix/app/v1/thirdparty/protocol/{}", encode_segment(protocol));
    let mut merged: Option<Map<String, JsonValue>> = None;
    for (appservice, answer) in appservices.get_json_from_each(offering, &path, &[]).await {
        let JsonValue::Object(mut info) = answer else {
            tracing::warn!(appservice = %appservice.id, protocol, "protocol metadata is not an object");
            continue;
        };
        let Some(JsonValue::Array(instances)) = info.get_mut("instances") else {
            tracing::warn!(appservice = %appservice.id, protocol, "protocol metadata without a list of instances");
            continue;
        };
        for instance in instances.iter_mut() {
            name_instance(&appservice.id, instance);
        }
        match &mut merged {
            None => merged = Some(info),
            Some(first) => {
                let Some(JsonValue::Array(more)) = info.remove("instances") else { continue };
                if let Some(JsonValue::Array(all)) = first.get_mut("instances") {
                    all.extend(more);
                }
            }
        }
    }
    merged.map(JsonValue::Object)
}

/// Give an instance the ID clients name its network by: `{appservice_id}|{network_id}`.
fn name_instance(appservice_id: &str, instance: &mut JsonValue) {
    if let JsonValue::Object(fields) = instance
        && let Some(network_id) = fields.get("network_id").and_then(JsonValue::as_str)
    {
        let id = instance_id(appservice_id, network_id);
        fields.insert("instance_id".to_owned(), id.into());
    }
}

/// Whether a lookup result has the shape the spec gives it: `key` and `protocol` as strings,
/// and `fields` an object.
fn valid_result(result: &JsonValue, key: &str) -> bool {
    result.get(key).is_some_and(JsonValue::is_string)
        && result.get("protocol").is_some_and(JsonValue::is_string)
        && result.get("fields").is_some_and(JsonValue::is_object)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn instances_are_named_by_appservice_and_network() {
        let mut instance = json!({"network_id": "libera", "desc": "Libera.Chat", "fields": {}});
        name_instance("irc", &mut instance);
        assert_eq!(instance["instance_id"], "irc|libera");
        let mut nameless = json!({"desc": "no network", "fields": {}});
        name_instance("irc", &mut nameless);
        assert!(nameless.get("instance_id").is_none());
    }

    #[test]
    fn results_of_the_wrong_shape_are_refused() {
        let good = json!({"alias": "#irc_x:example.org", "protocol": "irc", "fields": {"channel": "#x"}});
        assert!(valid_result(&good, "alias"));
        assert!(!valid_result(&good, "userid"));
        for bad in [
            json!({"alias": 5, "protocol": "irc", "fields": {}}),
            json!({"alias": "#a:b", "fields": {}}),
            json!({"alias": "#a:b", "protocol": "irc", "fields": []}),
            json!("#a:b"),
        ] {
            assert!(!valid_result(&bad, "alias"), "{bad}");
        }
    }
}
