//! Who is connected: every open connection by id, by key and by topic, with the limits
//! checked on the way in. Only the manager's own predicates run under its lock; user
//! filters run on a snapshot, after it is released.

use std::collections::HashMap;
use std::sync::Arc;

use super::connection::Connection;
use super::error::ConnectError;
use super::sync::{AtomicBool, IdMap, Ordering, RwLock};

/// The caps checked when a connection registers.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Caps {
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_per_key: Option<usize>,
}

#[derive(Debug)]
pub(crate) struct Registry<M> {
    maps: RwLock<Maps<M>>,
}

#[derive(Debug)]
struct Maps<M> {
    conns: IdMap<Arc<Connection<M>>>,
    by_key: HashMap<Arc<str>, Vec<Arc<Connection<M>>>>,
    by_topic: HashMap<Arc<str>, IdMap<Arc<Connection<M>>>>,
}

impl<M> Default for Registry<M> {
    fn default() -> Self {
        Registry {
            maps: RwLock::new(Maps {
                conns: IdMap::default(),
                by_key: HashMap::new(),
                by_topic: HashMap::new(),
            }),
        }
    }
}

impl<M> Registry<M> {
    /// Registers `conn` under its key and `topics`, unless `closing` is set or a cap is
    /// reached. `closing` is read under the lock that [`all`](Self::all) takes, so a
    /// shutdown that collects every connection never misses one registered meanwhile.
    pub(crate) fn insert(
        &self,
        conn: &Arc<Connection<M>>,
        topics: &[Arc<str>],
        caps: Caps,
        closing: &AtomicBool,
    ) -> Result<(), ConnectError> {
        let mut maps = self.maps.write();
        if closing.load(Ordering::Acquire) {
            return Err(ConnectError::ShutDown);
        }
        if let Some(limit) = caps.max_connections {
            if maps.conns.len() >= limit {
                return Err(ConnectError::TooManyConnections { limit });
            }
        }
        if let (Some(limit), Some(key)) = (caps.max_per_key, conn.key()) {
            if maps.by_key.get(key).map_or(0, Vec::len) >= limit {
                return Err(ConnectError::TooManyForKey { limit });
            }
        }
        let id = conn.id().as_u64();
        maps.conns.insert(id, conn.clone());
        if let Some(key) = conn.key() {
            match maps.by_key.get_mut(key) {
                Some(list) => list.push(conn.clone()),
                None => {
                    maps.by_key.insert(Arc::from(key), vec![conn.clone()]);
                }
            }
        }
        for topic in topics {
            maps.by_topic
                .entry(topic.clone())
                .or_default()
                .insert(id, conn.clone());
        }
        Ok(())
    }

    /// Removes `conn` from every index; `topics` are those it is subscribed to now.
    /// Returns `false` if it was not registered.
    pub(crate) fn remove(&self, conn: &Connection<M>, topics: &[Arc<str>]) -> bool {
        let id = conn.id().as_u64();
        let mut maps = self.maps.write();
        if maps.conns.remove(&id).is_none() {
            return false;
        }
        if let Some(key) = conn.key() {
            if let Some(list) = maps.by_key.get_mut(key) {
                list.retain(|c| c.id() != conn.id());
                if list.is_empty() {
                    maps.by_key.remove(key);
                }
            }
        }
        for topic in topics {
            maps.remove_topic(id, topic);
        }
        maps.shrink();
        true
    }

    /// Records that `conn` reads `topic`, if it is still registered.
    pub(crate) fn add_topic(&self, conn: &Arc<Connection<M>>, topic: &Arc<str>) -> bool {
        let id = conn.id().as_u64();
        let mut maps = self.maps.write();
        if !maps.conns.contains_key(&id) {
            return false;
        }
        maps.by_topic
            .entry(topic.clone())
            .or_default()
            .insert(id, conn.clone());
        true
    }

    pub(crate) fn remove_topic(&self, conn: &Connection<M>, topic: &str) {
        self.maps.write().remove_topic(conn.id().as_u64(), topic);
    }

    pub(crate) fn get(&self, id: u64) -> Option<Arc<Connection<M>>> {
        self.maps.read().conns.get(&id).cloned()
    }

    pub(crate) fn len(&self) -> usize {
        self.maps.read().conns.len()
    }

    pub(crate) fn key(&self, key: &str) -> Vec<Arc<Connection<M>>> {
        self.maps
            .read()
            .by_key
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    pub(crate) fn topic(&self, topic: &str) -> Vec<Arc<Connection<M>>> {
        self.maps
            .read()
            .by_topic
            .get(topic)
            .map(|set| set.values().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn all(&self) -> Vec<Arc<Connection<M>>> {
        self.maps.read().conns.values().cloned().collect()
    }

    /// The connections `pick` selects. `pick` is the manager's own, never a user's: it runs
    /// under the lock.
    pub(crate) fn select(
        &self,
        topic: Option<&str>,
        pick: impl Fn(&Connection<M>) -> bool,
    ) -> Vec<Arc<Connection<M>>> {
        let maps = self.maps.read();
        match topic {
            None => maps.conns.values().filter(|c| pick(c)).cloned().collect(),
            Some(topic) => maps
                .by_topic
                .get(topic)
                .map(|set| set.values().filter(|c| pick(c)).cloned().collect())
                .unwrap_or_default(),
        }
    }

    pub(crate) fn per_topic(&self) -> HashMap<String, usize> {
        self.maps
            .read()
            .by_topic
            .iter()
            .map(|(t, set)| (t.to_string(), set.len()))
            .collect()
    }
}

impl<M> Maps<M> {
    fn remove_topic(&mut self, id: u64, topic: &str) {
        if let Some(set) = self.by_topic.get_mut(topic) {
            set.remove(&id);
            if set.is_empty() {
                self.by_topic.remove(topic);
            }
        }
    }

    /// After a flood has gone, give the memory of the indexes back.
    fn shrink(&mut self) {
        fn shrink<K: Eq + std::hash::Hash, V, S: std::hash::BuildHasher>(
            map: &mut HashMap<K, V, S>,
        ) {
            if map.capacity() > 1024 && map.len() * 8 < map.capacity() {
                map.shrink_to(map.len() * 2);
            }
        }
        shrink(&mut self.conns);
        shrink(&mut self.by_key);
        shrink(&mut self.by_topic);
    }
}
