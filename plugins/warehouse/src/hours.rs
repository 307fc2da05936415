//! The day's picking grid: capacity and booked items for each of the 24 hours,
//! and the backward scheduling that places an order into it.

use std::ops::Range;

use allot_sdk::prelude::*;

use crate::HourAllocation;

/// Hours in a day; hour `h` covers `[h:00, h+1:00)` local time.
pub(crate) const HOURS_PER_DAY: u32 = 24;

/// Capacity and bookings of one hour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Hour {
    /// Items the hour's pickers can handle.
    pub(crate) capacity: u64,
    /// Items of placed orders picked in this hour. Above `capacity` only after
    /// a planner forced a reduction.
    pub(crate) allocated: u64,
}

impl Hour {
    pub(crate) fn free(&self) -> u64 {
        self.capacity.saturating_sub(self.allocated)
    }

    pub(crate) fn overbooked(&self) -> bool {
        self.allocated > self.capacity
    }
}

/// All hours of the day, indexed by hour.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Grid([Hour; HOURS_PER_DAY as usize]);

impl Grid {
    /// A day where the hours in `open` have `items_per_hour` capacity and the
    /// others none.
    pub(crate) fn opening(open: Range<u32>, items_per_hour: u64) -> Self {
        let mut grid = Self::default();
        for hour in open {
            grid.0[hour as usize].capacity = items_per_hour;
        }
        grid
    }

    /// The hour, or an empty one for an hour outside the day.
    pub(crate) fn hour(&self, hour: u32) -> Hour {
        self.0.get(hour as usize).copied().unwrap_or_default()
    }

    /// The hours with their numbers, from midnight on.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, Hour)> + '_ {
        (0..).zip(self.0.iter().copied())
    }

    /// Places `items` into the hours of `usable`, filling the latest hour first
    /// so that earlier hours stay free for orders due earlier.
    ///
    /// Returns the allocation ordered by hour, or, when the usable hours cannot
    /// take it all, how many items they could take.
    pub(crate) fn plan_backward(
        &self,
        usable: Range<u32>,
        items: u64,
    ) -> Result<Vec<HourAllocation>, u64> {
        let available = usable
            .clone()
            .map(|h| self.hour(h).free())
            .fold(0u64, u64::saturating_add);
        if available < items {
            return Err(available);
        }
        let mut remaining = items;
        let mut allocation = Vec::new();
        for hour in usable.rev() {
            if remaining == 0 {
                break;
            }
            let take = self.hour(hour).free().min(remaining);
            if take > 0 {
                allocation.push(HourAllocation { hour, items: take });
                remaining -= take;
            }
        }
        allocation.reverse();
        Ok(allocation)
    }

    /// Whether adding `items` to every hour of `hours` keeps each capacity
    /// representable.
    pub(crate) fn can_add(&self, hours: Range<u32>, items: u64) -> bool {
        hours
            .map(|h| self.hour(h).capacity)
            .all(|capacity| capacity.checked_add(items).is_some())
    }

    // The mutators below are called from `apply` with hours taken from stored
    // events; they skip hours outside the day instead of panicking, because a
    // panic in `apply` would make the pool impossible to rebuild.

    pub(crate) fn book(&mut self, allocation: &[HourAllocation]) {
        for share in allocation {
            if let Some(hour) = self.0.get_mut(share.hour as usize) {
                hour.allocated = hour.allocated.saturating_add(share.items);
            }
        }
    }

    pub(crate) fn unbook(&mut self, allocation: &[HourAllocation]) {
        for share in allocation {
            if let Some(hour) = self.0.get_mut(share.hour as usize) {
                hour.allocated = hour.allocated.saturating_sub(share.items);
            }
        }
    }

    pub(crate) fn set_capacity(&mut self, hour: u32, items: u64) {
        if let Some(hour) = self.0.get_mut(hour as usize) {
            hour.capacity = items;
        }
    }

    pub(crate) fn add_capacity(&mut self, hours: Range<u32>, items: u64) {
        for hour in hours {
            if let Some(hour) = self.0.get_mut(hour as usize) {
                hour.capacity = hour.capacity.saturating_add(items);
            }
        }
    }
}
