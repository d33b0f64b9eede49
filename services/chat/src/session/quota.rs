//! Sessions per user on this replica (`CHAT_MAX_SESSIONS_PER_USER`): one
//! count over every gateway stream and `Chat` stream, so no user can hold
//! the replica's memory with sessions (README, "How the gateway carries
//! sessions").

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// The counts. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct UserSessions {
    counts: Arc<Mutex<HashMap<Arc<str>, u32>>>,
}

/// One counted session; dropping it gives the place back.
#[derive(Debug)]
pub(crate) struct Slot {
    counts: Arc<Mutex<HashMap<Arc<str>, u32>>>,
    user_id: Arc<str>,
}

impl UserSessions {
    /// A place for one more session of `user_id`, unless it holds `max`.
    pub(crate) fn acquire(&self, user_id: &str, max: u32) -> Option<Slot> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        // The user's sessions share the count's copy of the id.
        let user_id = match counts.get_key_value(user_id) {
            Some((shared, _)) => shared.clone(),
            None => Arc::from(user_id),
        };
        let count = counts.entry(user_id.clone()).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Slot {
            counts: self.counts.clone(),
            user_id,
        })
    }
}

impl Slot {
    /// The user's id, one copy for all of their sessions here.
    pub(crate) fn user_id(&self) -> &Arc<str> {
        &self.user_id
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.user_id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.user_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_per_user_and_given_back() {
        let sessions = UserSessions::default();
        let first = sessions.acquire("ada", 2).unwrap();
        let second = sessions.acquire("ada", 2).unwrap();
        assert!(
            Arc::ptr_eq(first.user_id(), second.user_id()),
            "one copy of the id"
        );
        assert!(sessions.acquire("ada", 2).is_none());
        assert!(
            sessions.acquire("bob", 2).is_some(),
            "others are not affected"
        );
        drop(first);
        assert!(sessions.acquire("ada", 2).is_some());
    }
}
