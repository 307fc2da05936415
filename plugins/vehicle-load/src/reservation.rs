//! Reserving, confirming and releasing loads.

use allot_sdk::time::Timestamp;
use allot_sdk::{Decision, Failure};
use serde::Deserialize;

use crate::config::minutes_to_ms;
use crate::load::Load;
use crate::state::{Event, State};

/// A reservation: the load to carry and, for checkout, how long to hold it.
///
/// Unknown fields are refused, so a misspelt `weight` is an error rather than
/// a load of zero kilograms.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Weight in kilograms.
    #[serde(default)]
    pub weight_kg: u64,
    /// Volume in litres.
    #[serde(default)]
    pub volume_l: u64,
    /// Pallet spaces.
    #[serde(default)]
    pub pallets: u64,
    /// Hold the load this long, awaiting confirmation; without it the load is
    /// booked at once.
    #[serde(default)]
    pub hold_minutes: Option<u64>,
}

impl Request {
    /// The load asked for.
    pub fn load(&self) -> Load {
        Load {
            weight_kg: self.weight_kg,
            volume_l: self.volume_l,
            pallets: self.pallets,
        }
    }
}

pub(crate) fn reserve(state: &State, now_ms: i64, id: &str, request: Request) -> Decision<Event> {
    let load = request.load();
    if load.is_empty() {
        return Err(Failure::invalid(
            "empty_load",
            "the load is zero in weight_kg, volume_l and pallets",
        ));
    }
    if let Some(minutes) = request.hold_minutes
        && !(1..=state.max_hold_minutes).contains(&minutes)
    {
        return Err(Failure::invalid(
            "invalid_hold",
            format!(
                "hold_minutes must be between 1 and {} (max_hold_minutes), got {minutes}",
                state.max_hold_minutes
            ),
        ));
    }
    // An expired hold is as good as gone even before it is swept, so its id
    // may be reserved again: otherwise whether a retry succeeds would depend
    // on whether anything else happened to sweep the hold first.
    if state.is_live(id, now_ms) {
        return Err(Failure::rejected(
            "duplicate_reservation",
            format!("reservation {id} already exists on truck {}", state.truck),
        ));
    }
    if now_ms >= state.closes_ms {
        return Err(Failure::rejected(
            "cutoff_passed",
            format!(
                "reservations for truck {} closed at {} (departure {})",
                state.truck,
                Timestamp(state.closes_ms),
                state.departure
            ),
        ));
    }
    let free = state.capacity.saturating_sub(state.taken_at(now_ms));
    if !load.fits_within(free) {
        let shortfalls: Vec<String> = load
            .exceeding(free)
            .map(|d| {
                format!(
                    "{}: {} needed, {} free",
                    d.key(),
                    d.amount(load.get(d)),
                    free.get(d)
                )
            })
            .collect();
        return Err(Failure::rejected(
            "capacity_exceeded",
            shortfalls.join("; "),
        ));
    }

    let mut events = state.expire_holds(now_ms);
    let reservation_id = id.to_owned();
    events.push(match request.hold_minutes {
        Some(minutes) => Event::Held {
            reservation_id,
            load,
            // Cannot fail: hold_minutes is at most max_hold_minutes, which
            // the config check proved converts.
            expires_ms: now_ms.saturating_add(minutes_to_ms(minutes).unwrap_or(i64::MAX)),
        },
        None => Event::Booked {
            reservation_id,
            load,
        },
    });
    Ok(events)
}

pub(crate) fn confirm(state: &State, now_ms: i64, id: &str) -> Decision<Event> {
    if state.bookings.contains_key(id) {
        return Err(Failure::rejected(
            "already_confirmed",
            format!("reservation {id} is already a booking"),
        ));
    }
    let Some(hold) = state.holds.get(id) else {
        return Err(unknown(state, id));
    };
    if hold.expired_at(now_ms) {
        return Err(Failure::rejected(
            "hold_expired",
            format!(
                "the hold on reservation {id} expired at {}",
                Timestamp(hold.expires_ms)
            ),
        ));
    }
    Ok(vec![Event::HoldConfirmed {
        reservation_id: id.to_owned(),
        load: hold.load,
    }])
}

/// Releasing a hold that has expired but is not yet swept is accepted: the
/// caller wants the capacity back, and it is.
pub(crate) fn release(state: &State, id: &str) -> Decision<Event> {
    let (load, was_hold) = match (state.bookings.get(id), state.holds.get(id)) {
        (Some(&load), _) => (load, false),
        (None, Some(hold)) => (hold.load, true),
        (None, None) => return Err(unknown(state, id)),
    };
    Ok(vec![Event::Released {
        reservation_id: id.to_owned(),
        load,
        was_hold,
    }])
}

fn unknown(state: &State, id: &str) -> Failure {
    Failure::rejected(
        "unknown_reservation",
        format!("no reservation {id} on truck {}", state.truck),
    )
}
