//! What a departure's events fold into, and the events themselves.

use std::collections::BTreeMap;

use allot_sdk::time::Timestamp;
use serde::{Deserialize, Serialize};

use crate::load::Load;

/// The facts of a departure. Stored as JSON forever: only add variants or
/// optional fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A reservation holds capacity until `expires_ms` unless confirmed first.
    Held {
        reservation_id: String,
        load: Load,
        expires_ms: i64,
    },
    /// A reservation was booked outright, without a hold.
    Booked { reservation_id: String, load: Load },
    /// A hold became a booking.
    HoldConfirmed { reservation_id: String, load: Load },
    /// A hold lapsed unconfirmed and no longer takes capacity.
    HoldExpired { reservation_id: String, load: Load },
    /// A hold or booking was given back.
    Released {
        reservation_id: String,
        load: Load,
        was_hold: bool,
    },
    /// The truck's capacity changed. `forced` means the new capacity is below
    /// what was booked and held at the time, accepted on purpose.
    CapacityChanged { capacity: Load, forced: bool },
}

/// One truck departure: its limits, bookings and holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    /// The truck's plate or fleet number, shown on every cell.
    pub(crate) truck: String,
    pub(crate) departure: Timestamp,
    /// When reservations close: the departure minus the cutoff.
    pub(crate) closes_ms: i64,
    pub(crate) max_hold_minutes: u64,
    pub(crate) capacity: Load,
    pub(crate) bookings: BTreeMap<String, Load>,
    /// Every hold not yet confirmed, released or swept by a `hold_expired`
    /// event, so it may include holds whose time has already passed. Ask
    /// [`Hold::expired_at`] before counting one.
    pub(crate) holds: BTreeMap<String, Hold>,
}

/// Capacity a reservation keeps while the customer pays.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) struct Hold {
    pub(crate) load: Load,
    pub(crate) expires_ms: i64,
}

impl Hold {
    /// A hold is over at the very millisecond it expires.
    pub(crate) fn expired_at(&self, now_ms: i64) -> bool {
        self.expires_ms <= now_ms
    }
}

impl State {
    pub(crate) fn new(
        truck: String,
        departure: Timestamp,
        closes_ms: i64,
        max_hold_minutes: u64,
        capacity: Load,
    ) -> Self {
        Self {
            truck,
            departure,
            closes_ms,
            max_hold_minutes,
            capacity,
            bookings: BTreeMap::new(),
            holds: BTreeMap::new(),
        }
    }

    /// Everything booked.
    pub(crate) fn booked(&self) -> Load {
        self.bookings.values().copied().sum()
    }

    /// Everything held, expired or not, as the state records it.
    pub(crate) fn held(&self) -> Load {
        self.holds.values().map(|hold| hold.load).sum()
    }

    /// What counts against capacity at `now_ms`: bookings and the holds that
    /// have not expired.
    pub(crate) fn taken_at(&self, now_ms: i64) -> Load {
        let live_holds = self
            .holds
            .values()
            .filter(|hold| !hold.expired_at(now_ms))
            .map(|hold| hold.load);
        self.bookings.values().copied().chain(live_holds).sum()
    }

    /// Whether `id` names a booking or a hold that has not expired at `now_ms`.
    pub(crate) fn is_live(&self, id: &str, now_ms: i64) -> bool {
        self.bookings.contains_key(id)
            || self
                .holds
                .get(id)
                .is_some_and(|hold| !hold.expired_at(now_ms))
    }

    /// A `hold_expired` event for every recorded hold that has expired at `now_ms`.
    pub(crate) fn expire_holds(&self, now_ms: i64) -> Vec<Event> {
        self.holds
            .iter()
            .filter(|(_, hold)| hold.expired_at(now_ms))
            .map(|(id, hold)| Event::HoldExpired {
                reservation_id: id.clone(),
                load: hold.load,
            })
            .collect()
    }

    /// Folds in an event. Events are facts already decided, so this trusts
    /// them and never refuses.
    pub(crate) fn apply(&mut self, event: Event) {
        match event {
            Event::Held {
                reservation_id,
                load,
                expires_ms,
            } => {
                self.holds.insert(reservation_id, Hold { load, expires_ms });
            }
            Event::Booked {
                reservation_id,
                load,
            } => {
                self.bookings.insert(reservation_id, load);
            }
            Event::HoldConfirmed {
                reservation_id,
                load,
            } => {
                self.holds.remove(&reservation_id);
                self.bookings.insert(reservation_id, load);
            }
            Event::HoldExpired { reservation_id, .. } => {
                self.holds.remove(&reservation_id);
            }
            Event::Released {
                reservation_id,
                was_hold,
                ..
            } => {
                if was_hold {
                    self.holds.remove(&reservation_id);
                } else {
                    self.bookings.remove(&reservation_id);
                }
            }
            Event::CapacityChanged { capacity, .. } => self.capacity = capacity,
        }
    }
}
