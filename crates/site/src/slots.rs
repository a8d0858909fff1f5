//! Per-client bounds on long-running work a request starts (a CSV export streams for as
//! long as the client reads): at most a few at once for each user, and a few more for the
//! whole site. A slot is held by a [`Slot`] and given back when it is dropped, which is when
//! the work ends or its client goes away.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Slots of one kind of work.
pub struct Slots {
    each: usize,
    all: usize,
    held: Arc<Mutex<HashMap<String, usize>>>,
}

/// One slot held by a user; dropping it gives it back.
pub struct Slot {
    user: String,
    held: Arc<Mutex<HashMap<String, usize>>>,
}

impl Slots {
    /// At most `each` at once for one user and `all` for the site.
    pub fn new(each: usize, all: usize) -> Self {
        Self {
            each,
            all,
            held: Arc::default(),
        }
    }

    /// A slot for `user`, or `None` when the user or the site is at its bound.
    pub fn try_take(&self, user: &str) -> Option<Slot> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let mine = held.get(user).copied().unwrap_or(0);
        if mine >= self.each || held.values().sum::<usize>() >= self.all {
            return None;
        }
        held.insert(user.to_owned(), mine + 1);
        Some(Slot {
            user: user.to_owned(),
            held: Arc::clone(&self.held),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_bound_each_user_and_the_site_and_come_back_when_dropped() {
        let slots = Slots::new(2, 3);
        let a1 = slots.try_take("a").unwrap();
        let _a2 = slots.try_take("a").unwrap();
        assert!(slots.try_take("a").is_none(), "a is at its bound");
        let b1 = slots.try_take("b").unwrap();
        assert!(slots.try_take("c").is_none(), "the site is at its bound");
        drop(a1);
        assert!(slots.try_take("c").is_some(), "a slot came back");
        drop(b1);
        assert!(slots.try_take("b").is_some());
    }
}
