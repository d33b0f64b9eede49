//! A set kept in a plain vector.

use std::borrow::Borrow;

/// A set kept in a plain vector, for the rooms of one session.
///
/// Every open connection holds such a set in the gateway and in chat, and
/// most hold one or two rooms. An empty `VecSet` allocates nothing and a
/// one-room set allocates one pointer, against a hash set's table of
/// buckets and control bytes; for a handful of entries a linear scan is
/// as fast as hashing. Order is not kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VecSet<T>(Vec<T>);

impl<T> Default for VecSet<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T: PartialEq> VecSet<T> {
    /// An empty set; allocates nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `value`; false when it was already there.
    ///
    /// The vector grows one slot at a time: a plain `push` would make room
    /// for four items at once, which for the one room most sessions hold is
    /// three slots of waste in every connection.
    pub fn insert(&mut self, value: T) -> bool {
        if self.0.contains(&value) {
            return false;
        }
        self.0.reserve_exact(1);
        self.0.push(value);
        true
    }

    /// Removes `value`; false when it was not there. An emptied set gives
    /// its memory back.
    pub fn remove<Q>(&mut self, value: &Q) -> bool
    where
        T: Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        self.take(value).is_some()
    }

    /// Removes the item equal to `value` and returns it. An emptied set
    /// gives its memory back.
    pub fn take<Q>(&mut self, value: &Q) -> Option<T>
    where
        T: Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        let at = self.0.iter().position(|item| item.borrow() == value)?;
        let item = self.0.swap_remove(at);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        Some(item)
    }

    /// The item equal to `value`, if there is one.
    pub fn get<Q>(&self, value: &Q) -> Option<&T>
    where
        T: Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        self.0.iter().find(|item| (*item).borrow() == value)
    }

    /// The item equal to `value`, to change parts of it that equality
    /// does not look at.
    pub fn get_mut<Q>(&mut self, value: &Q) -> Option<&mut T>
    where
        T: Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        self.0.iter_mut().find(|item| (**item).borrow() == value)
    }

    /// Whether `value` is in the set.
    pub fn contains<Q>(&self, value: &Q) -> bool
    where
        T: Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        self.0.iter().any(|item| item.borrow() == value)
    }
}

impl<T> VecSet<T> {
    /// How many values the set holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The values, in no particular order.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }
}

impl<'a, T> IntoIterator for &'a VecSet<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<T> IntoIterator for VecSet<T> {
    type Item = T;
    type IntoIter = std::vec::IntoIter<T>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<T: PartialEq> FromIterator<T> for VecSet<T> {
    fn from_iter<I: IntoIterator<Item = T>>(values: I) -> Self {
        let mut set = Self::new();
        for value in values {
            set.insert(value);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn behaves_as_a_set() {
        let mut rooms: VecSet<Arc<str>> = VecSet::new();
        assert!(rooms.insert(Arc::from("lobby")));
        assert!(rooms.insert(Arc::from("dev")));
        assert!(!rooms.insert(Arc::from("lobby")), "a value is held once");
        assert_eq!(rooms.len(), 2);
        assert!(rooms.contains("dev"));
        assert!(!rooms.contains("ops"));
        assert_eq!(rooms.get("dev").map(|room| &**room), Some("dev"));
        assert!(rooms.get("ops").is_none());
        assert!(rooms.remove("lobby"));
        assert!(!rooms.remove("lobby"));
        assert_eq!(rooms.take("dev").as_deref(), Some("dev"));
        assert!(rooms.take("dev").is_none());
        assert!(rooms.insert(Arc::from("dev")));
        assert_eq!(
            rooms.iter().map(|room| &**room).collect::<Vec<_>>(),
            ["dev"]
        );
        assert!(rooms.remove("dev"));
        assert!(rooms.is_empty());
    }

    #[test]
    fn one_item_takes_one_slot() {
        let mut rooms: VecSet<Arc<str>> = VecSet::new();
        rooms.insert(Arc::from("lobby"));
        assert_eq!(rooms.0.capacity(), 1);
        rooms.insert(Arc::from("dev"));
        assert_eq!(rooms.0.capacity(), 2);
    }

    #[test]
    fn an_emptied_set_holds_no_memory() {
        let mut rooms: VecSet<Arc<str>> = ["a", "b", "c"].into_iter().map(Arc::from).collect();
        for room in ["a", "b", "c"] {
            rooms.remove(room);
        }
        assert_eq!(rooms.0.capacity(), 0);
    }
}
