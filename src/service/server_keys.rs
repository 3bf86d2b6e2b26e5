//! This server's ed25519 signing key: generated on first start, persisted, and used to sign
//! every event the server creates. Owns the `server_signing_keys` table.

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::STANDARD};
use rand::{Rng, distributions::Alphanumeric};
use ruma::{OwnedServerName, ServerName, signatures::Ed25519KeyPair};

use super::clock::Clock;
use crate::{
    Error, Result,
    storage::{
        KvStore,
        tables::{SERVER_SIGNING_KEYS, SigningKeyRecord},
    },
};

const CURRENT: &str = "current";

pub struct ServerKeys {
    server_name: OwnedServerName,
    key_pair: Ed25519KeyPair,
}

impl ServerKeys {
    /// Load the current key pair, creating and storing one if this is the first start.
    pub fn load_or_create(
        store: &Arc<dyn KvStore>,
        server_name: OwnedServerName,
        clock: &dyn Clock,
    ) -> Result<Self> {
        let table = SERVER_SIGNING_KEYS.open(store);
        let record = match table.get(&CURRENT.to_owned())? {
            Some(record) => record,
            None => {
                let version: String =
                    rand::thread_rng().sample_iter(Alphanumeric).take(8).map(char::from).collect();
                let der = Ed25519KeyPair::generate();
                let record = SigningKeyRecord {
                    version,
                    pkcs8: STANDARD.encode(der.as_slice()),
                    created_ms: clock.now_ms(),
                };
                table.insert(&CURRENT.to_owned(), &record)?;
                tracing::info!(key_id = %format!("ed25519:{}", record.version), "generated the server signing key");
                record
            }
        };
        let der = STANDARD
            .decode(&record.pkcs8)
            .map_err(|e| Error::internal(format!("stored signing key: {e}")))?;
        let key_pair = Ed25519KeyPair::from_der(&der, record.version)
            .map_err(|e| Error::internal(format!("stored signing key: {e}")))?;
        Ok(Self { server_name, key_pair })
    }

    pub fn server_name(&self) -> &ServerName {
        &self.server_name
    }

    pub fn key_pair(&self) -> &Ed25519KeyPair {
        &self.key_pair
    }
}
