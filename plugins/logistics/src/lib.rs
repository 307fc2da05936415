//! Delivery slots of a logistics fleet: one pool per delivery area and day.
//!
//! A day is cut into time slots (`08-10`, `10-12`, …). A shared fleet of vans
//! serves them; each van works a shift window at a number of stops per hour
//! and carries up to a maximum weight per slot. A slot's capacity is what the
//! vans assigned to it can do within it:
//!
//! * stops: for each van, `stops_per_hour` × the hours its shift overlaps the slot;
//! * weight: the sum of the vans' `max_weight_kg`.
//!
//! A new van serves every slot its shift overlaps; planners can move it
//! between slots. A reservation takes stops (and weight) in one slot. Slots
//! close `cutoff_minutes` before they start, judged from the command's time,
//! and planners can close and open them by hand.
//!
//! Taking capacity away below what is booked (removing or moving a van) is
//! refused with `would_overbook` unless the command says `"force": true`;
//! the view then shows the slot as overbooked.
//!
//! # Config
//!
//! ```json
//! {
//!   "area": "berlin-mitte",
//!   "date": "2026-11-24",
//!   "utc_offset": "+01:00",
//!   "cutoff_minutes": 120,
//!   "slots": [
//!     { "id": "08-10", "start": "08:00", "end": "10:00" },
//!     { "id": "10-12", "start": "10:00", "end": "12:00" }
//!   ],
//!   "vans": [
//!     { "id": "van-1", "shift_start": "08:00", "shift_end": "16:00",
//!       "stops_per_hour": 6, "max_weight_kg": 800 }
//!   ]
//! }
//! ```
//!
//! # Reserving
//!
//! `{"slot": "08-10", "stops": 1, "weight_kg": 12}` (`stops` defaults to 1,
//! `weight_kg` to 0). Refusals: `slot_closed`, `cutoff_passed`, `slot_full`,
//! `weight_exceeded`, `duplicate_reservation`; invalid: `unknown_slot`,
//! `invalid_stops`.
//!
//! # Planner commands
//!
//! * `add_van {"van": {…}}`
//! * `remove_van {"van_id": "van-1", "force": false}`
//! * `move_van {"van_id": "van-1", "from": "08-10", "to": "16-18", "force": false}`
//! * `close_slot {"slot": "08-10"}`, `open_slot {"slot": "08-10"}`

use std::collections::{BTreeMap, BTreeSet};

use allot_sdk::prelude::*;
use allot_sdk::time::{ClockTime, Day, MINUTE_MS};

#[cfg(test)]
mod tests;

/// The logistics capacity type.
pub struct Logistics;

allot_sdk::export_capacity_type!(Logistics);

/// A pool's config: the area, the day, its slots and the initial fleet.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    area: String,
    date: String,
    #[serde(default = "utc")]
    utc_offset: String,
    #[serde(default = "default_cutoff")]
    cutoff_minutes: u32,
    slots: Vec<SlotConfig>,
    #[serde(default)]
    vans: Vec<Van>,
}

fn utc() -> String {
    "+00:00".into()
}

fn default_cutoff() -> u32 {
    120
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlotConfig {
    id: String,
    start: ClockTime,
    end: ClockTime,
}

/// Upper bounds on a van's figures. They are far beyond any real van and keep
/// every sum of capacities far from overflowing.
const MAX_STOPS_PER_HOUR: u32 = 10_000;
const MAX_VAN_WEIGHT_KG: u64 = 1_000_000;

/// A van of the fleet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Van {
    /// Unique within the pool.
    pub id: String,
    /// When the van's shift starts.
    pub shift_start: ClockTime,
    /// When it ends.
    pub shift_end: ClockTime,
    /// Deliveries it makes per hour.
    pub stops_per_hour: u32,
    /// What it can carry on one tour (one slot).
    pub max_weight_kg: u64,
}

impl Van {
    /// Stops this van can make within a slot.
    fn stops_in(&self, slot: &Slot) -> u64 {
        let start = self.shift_start.max(slot.start).minutes();
        let end = self.shift_end.min(slot.end).minutes();
        let minutes = u64::from(end.saturating_sub(start));
        u64::from(self.stops_per_hour) * minutes / 60
    }

    fn overlaps(&self, slot: &Slot) -> bool {
        self.shift_start < slot.end && slot.start < self.shift_end
    }

    fn check(&self) -> Result<(), Problem> {
        if self.id.is_empty() {
            return Err(Problem::new("invalid_van", "a van needs an id"));
        }
        if self.shift_start >= self.shift_end {
            return Err(Problem::new(
                "invalid_van",
                format!(
                    "van {}: shift_start {} is not before shift_end {}",
                    self.id, self.shift_start, self.shift_end
                ),
            ));
        }
        if self.stops_per_hour == 0 || self.stops_per_hour > MAX_STOPS_PER_HOUR {
            return Err(Problem::new(
                "invalid_van",
                format!(
                    "van {}: stops_per_hour must be between 1 and {MAX_STOPS_PER_HOUR}",
                    self.id
                ),
            ));
        }
        if self.max_weight_kg > MAX_VAN_WEIGHT_KG {
            return Err(Problem::new(
                "invalid_van",
                format!(
                    "van {}: max_weight_kg must be at most {MAX_VAN_WEIGHT_KG}",
                    self.id
                ),
            ));
        }
        Ok(())
    }
}

/// A reservation request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    slot: String,
    #[serde(default = "one")]
    stops: u64,
    #[serde(default)]
    weight_kg: u64,
}

fn one() -> u64 {
    1
}

/// Planner commands.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PlannerCommand {
    /// Adds a van; it serves every slot its shift overlaps.
    AddVan {
        /// The van.
        van: Van,
    },
    /// Takes a van out of the fleet.
    RemoveVan {
        /// Which van.
        van_id: String,
        /// Remove it even if slots end up overbooked.
        #[serde(default)]
        force: bool,
    },
    /// Moves a van's work from one slot to another.
    MoveVan {
        /// Which van.
        van_id: String,
        /// The slot it stops serving.
        from: String,
        /// The slot it starts serving.
        to: String,
        /// Move it even if `from` ends up overbooked.
        #[serde(default)]
        force: bool,
    },
    /// Stops taking reservations for a slot.
    CloseSlot {
        /// Which slot.
        slot: String,
    },
    /// Takes reservations for a slot again.
    OpenSlot {
        /// Which slot.
        slot: String,
    },
}

/// What happens to a logistics pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Stops and weight were reserved in a slot.
    Reserved {
        /// The caller's reservation id.
        reservation_id: String,
        /// The slot.
        slot: String,
        /// Stops taken.
        stops: u64,
        /// Weight taken.
        weight_kg: u64,
    },
    /// A reservation was given back.
    Released {
        /// The reservation id.
        reservation_id: String,
        /// The slot it was in.
        slot: String,
        /// Stops freed.
        stops: u64,
        /// Weight freed.
        weight_kg: u64,
    },
    /// A van joined the fleet, serving these slots.
    VanAdded {
        /// The van.
        van: Van,
        /// The slots it serves.
        slots: Vec<String>,
    },
    /// A van left the fleet.
    VanRemoved {
        /// The van.
        van_id: String,
        /// Whether a planner forced it past booked capacity.
        forced: bool,
    },
    /// A van moved from one slot to another.
    VanMoved {
        /// The van.
        van_id: String,
        /// The slot it left.
        from: String,
        /// The slot it now serves.
        to: String,
        /// Whether a planner forced it past booked capacity.
        forced: bool,
    },
    /// A slot stopped taking reservations.
    SlotClosed {
        /// The slot.
        slot: String,
    },
    /// A slot takes reservations again.
    SlotOpened {
        /// The slot.
        slot: String,
    },
}

/// A logistics pool.
#[derive(Debug, Serialize, Deserialize)]
pub struct State {
    area: String,
    day: Day,
    cutoff_ms: i64,
    /// Sorted by start time: the order of the day.
    slots: Vec<Slot>,
    vans: BTreeMap<String, Assignment>,
    reservations: BTreeMap<String, Booking>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Slot {
    id: String,
    start: ClockTime,
    end: ClockTime,
    open: bool,
    /// Booked stops and weight, kept up to date by `apply` so that a
    /// reservation is decided without summing all bookings.
    stops: u64,
    weight_kg: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Assignment {
    van: Van,
    slots: BTreeSet<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Booking {
    slot: String,
    stops: u64,
    weight_kg: u64,
}

/// Capacity of one slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Capacity {
    stops: u64,
    weight_kg: u64,
}

impl State {
    fn slot(&self, id: &str) -> Result<&Slot, Failure> {
        self.slots.iter().find(|s| s.id == id).ok_or_else(|| {
            Failure::invalid(
                "unknown_slot",
                format!(
                    "{} has no slot `{id}`; slots: {}",
                    self.area,
                    self.slot_ids()
                ),
            )
        })
    }

    fn slot_mut(&mut self, id: &str) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.id == id)
    }

    fn slot_ids(&self) -> String {
        let ids: Vec<_> = self.slots.iter().map(|s| s.id.as_str()).collect();
        ids.join(", ")
    }

    fn van(&self, id: &str) -> Result<&Assignment, Failure> {
        self.vans.get(id).ok_or_else(|| {
            Failure::invalid("unknown_van", format!("no van `{id}` in {}", self.area))
        })
    }

    /// What the vans serving `slot` can do, leaving out `without` (a van
    /// about to be removed from it).
    fn capacity(&self, slot: &Slot, without: Option<&str>) -> Capacity {
        self.vans
            .values()
            .filter(|a| a.slots.contains(&slot.id) && Some(a.van.id.as_str()) != without)
            .fold(Capacity::default(), |c, a| Capacity {
                stops: c.stops + a.van.stops_in(slot),
                weight_kg: c.weight_kg + a.van.max_weight_kg,
            })
    }

    /// Refuses taking `van_id` out of `slots` when that leaves less than is booked.
    fn check_removal(
        &self,
        van_id: &str,
        slots: &BTreeSet<String>,
        force: bool,
    ) -> Result<(), Failure> {
        if force {
            return Ok(());
        }
        for slot in self.slots.iter().filter(|s| slots.contains(&s.id)) {
            let left = self.capacity(slot, Some(van_id));
            if left.stops < slot.stops || left.weight_kg < slot.weight_kg {
                return Err(Failure::rejected(
                    "would_overbook",
                    format!(
                        "without van {van_id}, slot {} would have {} stops / {} kg for {} stops / {} kg booked; \
                         send force: true to do it anyway",
                        slot.id, left.stops, left.weight_kg, slot.stops, slot.weight_kg
                    ),
                ));
            }
        }
        Ok(())
    }

    fn serving(&self, van: &Van) -> Vec<String> {
        self.slots
            .iter()
            .filter(|s| van.overlaps(s))
            .map(|s| s.id.clone())
            .collect()
    }
}

impl CapacityType for Logistics {
    const CAPACITY_TYPE: &'static str = "logistics";

    type Config = Config;
    type Request = Request;
    type Command = PlannerCommand;
    type Event = Event;
    type State = State;

    fn create(config: Config) -> Result<State, Problem> {
        let invalid = |message: String| Err(Problem::new("invalid_config", message));
        if config.area.is_empty() {
            return invalid("area must not be empty".into());
        }
        let day = Day::parse(&config.date, &config.utc_offset)?;
        if config.slots.is_empty() {
            return invalid("a pool needs at least one slot".into());
        }
        let mut slots: Vec<Slot> = Vec::with_capacity(config.slots.len());
        for s in config.slots {
            if s.id.is_empty() {
                return invalid("every slot needs an id".into());
            }
            if s.start >= s.end {
                return invalid(format!(
                    "slot {}: start {} is not before end {}",
                    s.id, s.start, s.end
                ));
            }
            if slots.iter().any(|other| other.id == s.id) {
                return invalid(format!("slot {} is defined twice", s.id));
            }
            slots.push(Slot {
                id: s.id,
                start: s.start,
                end: s.end,
                open: true,
                stops: 0,
                weight_kg: 0,
            });
        }
        slots.sort_by_key(|s| (s.start, s.end));
        // A van serving two overlapping slots would count the shared time twice.
        if let Some(w) = slots.windows(2).find(|w| w[1].start < w[0].end) {
            return invalid(format!("slots {} and {} overlap", w[0].id, w[1].id));
        }
        let mut state = State {
            area: config.area,
            day,
            cutoff_ms: i64::from(config.cutoff_minutes) * MINUTE_MS,
            slots,
            vans: BTreeMap::new(),
            reservations: BTreeMap::new(),
        };
        for van in config.vans {
            van.check()
                .map_err(|p| Problem::new("invalid_config", p.message))?;
            if state.vans.contains_key(&van.id) {
                return invalid(format!("van {} is listed twice", van.id));
            }
            let slots = state.serving(&van);
            Self::apply(&mut state, Event::VanAdded { van, slots });
        }
        Ok(state)
    }

    fn reserve(state: &State, context: &Context, id: &str, request: Request) -> Decision<Event> {
        let slot = state.slot(&request.slot)?;
        if request.stops == 0 {
            return Err(Failure::invalid(
                "invalid_stops",
                "a reservation takes at least one stop",
            ));
        }
        if state.reservations.contains_key(id) {
            return Err(Failure::rejected(
                "duplicate_reservation",
                format!("reservation {id} already exists in {}", state.area),
            ));
        }
        if !slot.open {
            return Err(Failure::rejected(
                "slot_closed",
                format!("slot {} is closed", slot.id),
            ));
        }
        let cutoff = state.day.at(slot.start) - state.cutoff_ms;
        if context.now_ms >= cutoff {
            return Err(Failure::rejected(
                "cutoff_passed",
                format!(
                    "slot {} closed for booking at {}",
                    slot.id,
                    allot_sdk::time::Timestamp(cutoff)
                ),
            ));
        }
        let capacity = state.capacity(slot, None);
        let free_stops = capacity.stops.saturating_sub(slot.stops);
        if request.stops > free_stops {
            return Err(Failure::rejected(
                "slot_full",
                format!(
                    "slot {} has {free_stops} stops left, {} asked",
                    slot.id, request.stops
                ),
            ));
        }
        let free_weight = capacity.weight_kg.saturating_sub(slot.weight_kg);
        if request.weight_kg > free_weight {
            return Err(Failure::rejected(
                "weight_exceeded",
                format!(
                    "slot {} can take {free_weight} kg more, {} kg asked",
                    slot.id, request.weight_kg
                ),
            ));
        }
        Ok(vec![Event::Reserved {
            reservation_id: id.to_owned(),
            slot: slot.id.clone(),
            stops: request.stops,
            weight_kg: request.weight_kg,
        }])
    }

    fn release(state: &State, _: &Context, id: &str) -> Decision<Event> {
        let booking = state.reservations.get(id).ok_or_else(|| {
            Failure::rejected(
                "unknown_reservation",
                format!("no reservation {id} in {}", state.area),
            )
        })?;
        Ok(vec![Event::Released {
            reservation_id: id.to_owned(),
            slot: booking.slot.clone(),
            stops: booking.stops,
            weight_kg: booking.weight_kg,
        }])
    }

    fn command(state: &State, _: &Context, command: PlannerCommand) -> Decision<Event> {
        match command {
            PlannerCommand::AddVan { van } => {
                van.check().map_err(Failure::Invalid)?;
                if state.vans.contains_key(&van.id) {
                    return Err(Failure::rejected(
                        "duplicate_van",
                        format!("van {} already exists", van.id),
                    ));
                }
                let slots = state.serving(&van);
                Ok(vec![Event::VanAdded { van, slots }])
            }
            PlannerCommand::RemoveVan { van_id, force } => {
                let assignment = state.van(&van_id)?;
                state.check_removal(&van_id, &assignment.slots, force)?;
                Ok(vec![Event::VanRemoved {
                    van_id,
                    forced: force,
                }])
            }
            PlannerCommand::MoveVan {
                van_id,
                from,
                to,
                force,
            } => {
                let assignment = state.van(&van_id)?;
                state.slot(&from)?;
                let target = state.slot(&to)?;
                if !assignment.slots.contains(&from) {
                    return Err(Failure::invalid(
                        "not_serving",
                        format!("van {van_id} does not serve slot {from}"),
                    ));
                }
                if assignment.slots.contains(&to) {
                    return Err(Failure::invalid(
                        "already_serving",
                        format!("van {van_id} already serves slot {to}"),
                    ));
                }
                if !assignment.van.overlaps(target) {
                    return Err(Failure::invalid(
                        "outside_shift",
                        format!(
                            "slot {to} ({}-{}) is outside van {van_id}'s shift {}-{}",
                            target.start,
                            target.end,
                            assignment.van.shift_start,
                            assignment.van.shift_end
                        ),
                    ));
                }
                state.check_removal(&van_id, &BTreeSet::from([from.clone()]), force)?;
                Ok(vec![Event::VanMoved {
                    van_id,
                    from,
                    to,
                    forced: force,
                }])
            }
            PlannerCommand::CloseSlot { slot } => {
                let s = state.slot(&slot)?;
                Ok(if s.open {
                    vec![Event::SlotClosed { slot }]
                } else {
                    vec![]
                })
            }
            PlannerCommand::OpenSlot { slot } => {
                let s = state.slot(&slot)?;
                Ok(if s.open {
                    vec![]
                } else {
                    vec![Event::SlotOpened { slot }]
                })
            }
        }
    }

    fn apply(state: &mut State, event: Event) {
        match event {
            Event::Reserved {
                reservation_id,
                slot,
                stops,
                weight_kg,
            } => {
                if let Some(s) = state.slot_mut(&slot) {
                    s.stops += stops;
                    s.weight_kg += weight_kg;
                }
                state.reservations.insert(
                    reservation_id,
                    Booking {
                        slot,
                        stops,
                        weight_kg,
                    },
                );
            }
            Event::Released { reservation_id, .. } => {
                if let Some(booking) = state.reservations.remove(&reservation_id)
                    && let Some(s) = state.slot_mut(&booking.slot)
                {
                    s.stops -= booking.stops;
                    s.weight_kg -= booking.weight_kg;
                }
            }
            Event::VanAdded { van, slots } => {
                let slots = slots.into_iter().collect();
                state.vans.insert(van.id.clone(), Assignment { van, slots });
            }
            Event::VanRemoved { van_id, .. } => {
                state.vans.remove(&van_id);
            }
            Event::VanMoved {
                van_id, from, to, ..
            } => {
                if let Some(a) = state.vans.get_mut(&van_id) {
                    a.slots.remove(&from);
                    a.slots.insert(to);
                }
            }
            Event::SlotClosed { slot } => {
                if let Some(s) = state.slot_mut(&slot) {
                    s.open = false;
                }
            }
            Event::SlotOpened { slot } => {
                if let Some(s) = state.slot_mut(&slot) {
                    s.open = true;
                }
            }
        }
    }

    fn view(state: &State) -> View {
        let mut cells = Vec::with_capacity(state.slots.len() * 2);
        let mut overbooked = Vec::new();
        for slot in &state.slots {
            let capacity = state.capacity(slot, None);
            let (start, end) = (state.day.at(slot.start), state.day.at(slot.end));
            let cell = |key: String, unit: &str, capacity: u64, used: u64| {
                Cell::new(key, unit, capacity)
                    .label("area", &state.area)
                    .label("slot", &slot.id)
                    .between(start, end)
                    .used(used)
                    .open(slot.open)
            };
            if slot.stops > capacity.stops || slot.weight_kg > capacity.weight_kg {
                overbooked.push(slot.id.clone());
            }
            cells.push(cell(slot.id.clone(), "stops", capacity.stops, slot.stops));
            cells.push(cell(
                format!("{}/weight", slot.id),
                "kg",
                capacity.weight_kg,
                slot.weight_kg,
            ));
        }
        let vans: Vec<_> = state
            .vans
            .values()
            .map(|a| serde_json::json!({ "van": a.van, "slots": a.slots }))
            .collect();
        View::new(cells).with_details(serde_json::json!({
            "area": state.area,
            "cutoff_minutes": state.cutoff_ms / MINUTE_MS,
            "reservations": state.reservations.len(),
            "vans": vans,
            "overbooked_slots": overbooked,
        }))
    }
}
