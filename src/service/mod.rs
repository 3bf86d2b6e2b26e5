//! The logic. Each service owns its tables and receives its dependencies through its
//! constructor; `Services::build` wires them in dependency order (no cycles, no globals).

pub mod accounts;
pub mod clock;
pub mod devices;
pub mod passwords;
pub mod uiaa;
pub mod users;

use std::{sync::Arc, time::Duration};

use crate::{Result, config::Config, storage::KvStore};

/// Every service, built once per server.
pub struct Services {
    pub config: Arc<Config>,
    pub users: Arc<users::Users>,
    pub devices: Arc<devices::Devices>,
    pub uiaa: Arc<uiaa::Uiaa>,
    pub accounts: Arc<accounts::Accounts>,
    store: Arc<dyn KvStore>,
}

impl Services {
    /// Wire the services over an opened, migrated store.
    pub fn build(config: Arc<Config>, store: Arc<dyn KvStore>, clock: Arc<dyn clock::Clock>) -> Result<Self> {
        let passwords = Arc::new(passwords::Passwords::new(&config)?);
        let users = Arc::new(users::Users::new(&store, passwords, Arc::clone(&clock)));
        let devices = Arc::new(devices::Devices::new(
            &store,
            Arc::clone(&clock),
            Duration::from_secs(config.refreshable_access_token_lifetime_secs),
        ));
        let uiaa = Arc::new(uiaa::Uiaa::new(
            &store,
            Arc::clone(&users),
            Arc::clone(&clock),
            config.registration_token.clone(),
            config.uiaa_session_lifetime_secs,
        ));
        let accounts = Arc::new(accounts::Accounts::new(
            Arc::clone(&store),
            Arc::clone(&config),
            Arc::clone(&users),
            Arc::clone(&devices),
            Arc::clone(&uiaa),
        ));
        Ok(Self { config, users, devices, uiaa, accounts, store })
    }

    /// Persist what is held in memory and flush storage; called once at shutdown.
    pub fn shutdown(&self) -> Result<()> {
        self.devices.flush_last_seen()?;
        Ok(self.store.flush()?)
    }
}
