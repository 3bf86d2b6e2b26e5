//! Auth chains: for an event, every event reachable from it through `auth_events`, the event
//! itself not included. State resolution needs the chains of the forks' state events (for the
//! auth difference, and to know which events it may read), and `/event_auth` and
//! `/state_ids` answer with them. Owns the `auth_chains` table.
//!
//! An event's chain is the union of its auth events and their chains, so it is computed once
//! from those and kept: in the table for state events (the ones other chains and resolutions
//! come back to) and in memory for any event. It is written only when every event on it is
//! stored here: a chain with a gap (an auth event this server never got) is answered as far as
//! it is known and computed again next time. Local sends write nothing here (their chains are
//! computed on first use), so the send path stays as it was.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use ruma::{EventId, OwnedEventId};

use super::events::Events;
use crate::{
    Result,
    matrix::pdu::Pdu,
    service::cache::BoundedCache,
    storage::{KvStore, Table, WriteBatch, tables::AUTH_CHAINS},
};

/// The events of one auth chain.
pub type Chain = HashSet<OwnedEventId>;

/// Bytes an event ID in a cached chain is counted as.
const ID_BYTES: usize = 96;

fn chain_weight(chain: &Arc<Chain>) -> usize {
    64 + chain.len() * ID_BYTES
}

pub struct AuthChains {
    events: Arc<Events>,
    table: Table<OwnedEventId, Vec<OwnedEventId>>,
    cache: BoundedCache<OwnedEventId, Arc<Chain>>,
    store: Arc<dyn KvStore>,
}

/// A chain worked out, and whether every event on it is stored.
#[derive(Clone)]
struct Found {
    chain: Arc<Chain>,
    complete: bool,
}

impl AuthChains {
    /// `cache_bytes`: memory the chains kept in memory may hold.
    pub fn new(store: &Arc<dyn KvStore>, events: Arc<Events>, cache_bytes: usize) -> Self {
        Self {
            events,
            table: AUTH_CHAINS.open(store),
            cache: BoundedCache::new(cache_bytes, chain_weight),
            store: Arc::clone(store),
        }
    }

    /// The auth chain of a stored event (empty for an event this server does not have).
    pub fn chain_of(&self, event_id: &EventId) -> Result<Arc<Chain>> {
        let mut fresh = Vec::new();
        let found = self.find(event_id, None, &mut fresh)?;
        self.keep(fresh)?;
        Ok(found.chain)
    }

    /// The auth chain of an event not stored yet (the one being accepted): its auth events
    /// and their chains.
    pub fn chain_of_pdu(&self, pdu: &Pdu) -> Result<Arc<Chain>> {
        let mut fresh = Vec::new();
        let found = self.find(&pdu.event_id, Some(pdu), &mut fresh)?;
        self.keep(fresh.into_iter().filter(|(id, _, _)| *id != pdu.event_id).collect())?;
        Ok(found.chain)
    }

    /// The union of the auth chains of `event_ids`.
    pub fn chain_of_all<'a>(&self, event_ids: impl IntoIterator<Item = &'a OwnedEventId>) -> Result<Chain> {
        let mut union = Chain::new();
        for id in event_ids {
            union.extend(self.chain_of(id)?.iter().cloned());
        }
        Ok(union)
    }

    /// Queue the chain row of an event being stored in `batch`, when all of its chain is
    /// stored; [`Self::committed`] then keeps it in memory. Returns the chain.
    pub fn put_in(&self, batch: &mut WriteBatch, pdu: &Pdu) -> Result<Arc<Chain>> {
        let mut fresh = Vec::new();
        let found = self.find(&pdu.event_id, Some(pdu), &mut fresh)?;
        // Chains of stored events found on the way are written at once: each is a fact about
        // events already stored, whatever becomes of this one.
        self.keep(fresh.into_iter().filter(|(id, _, _)| *id != pdu.event_id).collect())?;
        if found.complete {
            self.table.put(batch, &pdu.event_id, &sorted(&found.chain))?;
        }
        Ok(found.chain)
    }

    /// An event whose chain was queued by [`Self::put_in`] is committed.
    pub fn committed(&self, event_id: &EventId, chain: Arc<Chain>) {
        self.cache.insert(event_id.to_owned(), chain);
    }

    /// A chain known without a walk: in memory, or in the table.
    fn known(&self, event_id: &EventId) -> Result<Option<Arc<Chain>>> {
        let key = event_id.to_owned();
        if let Some(hit) = self.cache.get(&key) {
            return Ok(Some(hit));
        }
        let Some(ids) = self.table.get(&key)? else { return Ok(None) };
        let chain = Arc::new(ids.into_iter().collect::<Chain>());
        self.cache.insert(key, Arc::clone(&chain));
        Ok(Some(chain))
    }

    /// Work out the chain of `start` (given as `pdu` when it is not stored), from the known
    /// chains of the events it reaches; the chains worked out on the way, with whether each is
    /// complete and for a state event, go to `fresh`. A walk by an explicit stack, so a long
    /// chain cannot overflow the call stack; an event that cites itself through a cycle (only
    /// possible where the origin picks event IDs) ends the walk there, as a gap.
    fn find(
        &self,
        start: &EventId,
        pdu: Option<&Pdu>,
        fresh: &mut Vec<(OwnedEventId, Found, bool)>,
    ) -> Result<Found> {
        if pdu.is_none()
            && let Some(chain) = self.known(start)?
        {
            return Ok(Found { chain, complete: true });
        }
        let mut memo: HashMap<OwnedEventId, Found> = HashMap::new();
        // The auth events and whether it is a state event, of each event being expanded.
        let mut pending: HashMap<OwnedEventId, (Vec<OwnedEventId>, bool)> = HashMap::new();
        let mut stack: Vec<(OwnedEventId, bool)> = vec![(start.to_owned(), false)];
        while let Some((id, expanded)) = stack.pop() {
            if expanded {
                let Some((auth_events, is_state)) = pending.remove(&id) else { continue };
                let mut chain = Chain::new();
                let mut complete = true;
                for auth in &auth_events {
                    chain.insert(auth.clone());
                    match memo.get(auth) {
                        Some(found) => {
                            chain.extend(found.chain.iter().cloned());
                            complete &= found.complete;
                        }
                        None => complete = false,
                    }
                }
                let found = Found { chain: Arc::new(chain), complete };
                fresh.push((id.clone(), found.clone(), is_state));
                memo.insert(id, found);
                continue;
            }
            if memo.contains_key(&id) || pending.contains_key(&id) {
                continue;
            }
            let is_start = *id == *start;
            if !(is_start && pdu.is_some())
                && let Some(chain) = self.known(&id)?
            {
                memo.insert(id, Found { chain, complete: true });
                continue;
            }
            let (auth_events, is_state) = match (is_start, pdu) {
                (true, Some(pdu)) => (pdu.auth_events.clone(), pdu.state_key.is_some()),
                _ => match self.events.get_any(&id)? {
                    Some(event) => (event.pdu.auth_events.clone(), event.pdu.state_key.is_some()),
                    None => {
                        // Not stored: a gap in every chain through it.
                        memo.insert(id, Found { chain: Arc::new(Chain::new()), complete: false });
                        continue;
                    }
                },
            };
            stack.push((id.clone(), true));
            stack.extend(
                auth_events
                    .iter()
                    .filter(|a| !memo.contains_key(*a) && !pending.contains_key(*a))
                    .map(|a| (a.clone(), false)),
            );
            pending.insert(id, (auth_events, is_state));
        }
        Ok(memo.remove(start).unwrap_or_else(|| Found { chain: Arc::new(Chain::new()), complete: false }))
    }

    /// Keep chains worked out by a walk: complete ones of state events in the table, all in
    /// memory.
    fn keep(&self, fresh: Vec<(OwnedEventId, Found, bool)>) -> Result<()> {
        let mut batch = WriteBatch::new();
        let mut written = false;
        for (id, found, is_state) in fresh {
            if found.complete && is_state {
                self.table.put(&mut batch, &id, &sorted(&found.chain))?;
                written = true;
            }
            if found.complete {
                self.cache.insert(id, found.chain);
            }
        }
        if written {
            self.store.write(batch)?;
        }
        Ok(())
    }
}

fn sorted(chain: &Chain) -> Vec<OwnedEventId> {
    let mut ids: Vec<OwnedEventId> = chain.iter().cloned().collect();
    ids.sort();
    ids
}
