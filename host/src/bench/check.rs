//! The final check's arithmetic: what a target's records add up to, pool by
//! pool. Records come one at a time, in whatever order the database keeps
//! them, so that the check is one sequential pass over the tables however
//! long the run was, and holds no more than a number per pool and a
//! fingerprint per reservation.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};

/// What the final check found.
#[derive(Debug, Default)]
pub struct Verified {
    /// Pools checked.
    pub pools: usize,
    /// Reservations recorded in them.
    pub reservations: u64,
    /// Recorded, though the client never heard it was accepted.
    pub unacknowledged: u64,
    /// What is wrong; empty when all is well.
    pub failures: Vec<String>,
}

/// One pool's records, as far as they have been read.
#[derive(Debug, Default)]
struct Pool {
    found: bool,
    capacity: i64,
    /// The count the design keeps beside the records (the baseline's
    /// counter); Allot keeps none, its count is what its records hold.
    counted: Option<i64>,
    held: i64,
    recorded: u64,
    /// Reservations recorded under an id recorded before: the repeats of
    /// fingerprints, until an exact count replaces them.
    repeated: u64,
}

/// The records of one target, added up.
#[derive(Debug)]
pub struct Tally {
    pools: Vec<Pool>,
    /// A fingerprint of (pool, reservation id) per recorded reservation.
    seen: HashSet<u64>,
    malformed: Vec<String>,
}

impl Tally {
    /// For the pools of a ledger, by index.
    pub fn new(pools: usize) -> Self {
        Self {
            pools: (0..pools).map(|_| Pool::default()).collect(),
            seen: HashSet::new(),
            malformed: Vec::new(),
        }
    }

    /// The pool as the database keeps it: its capacity, and the count the
    /// design keeps, if it keeps one.
    pub fn pool(&mut self, index: usize, capacity: i64, counted: Option<i64>) {
        let pool = &mut self.pools[index];
        pool.found = true;
        pool.capacity = capacity;
        pool.counted = counted;
    }

    /// A reservation recorded in a pool.
    pub fn reserved(&mut self, index: usize, reservation: &str, units: i64) {
        let pool = &mut self.pools[index];
        pool.held += units;
        pool.recorded += 1;
        let mut hasher = DefaultHasher::new();
        (index, reservation).hash(&mut hasher);
        if !self.seen.insert(hasher.finish()) {
            pool.repeated += 1;
        }
    }

    /// Units given back to a pool.
    pub fn released(&mut self, index: usize, units: i64) {
        self.pools[index].held -= units;
    }

    /// A record the check cannot read, as `what` describes it.
    pub fn malformed(&mut self, what: String) {
        self.malformed.push(what);
    }

    /// Pools in which a fingerprint came twice: a repeated id, or (rarely)
    /// two ids with one fingerprint. Their ids must be counted exactly.
    pub fn suspects(&self) -> Vec<usize> {
        (self.pools.iter().enumerate())
            .filter(|(_, pool)| pool.repeated > 0)
            .map(|(index, _)| index)
            .collect()
    }

    /// The exact number of reservations of a suspect pool recorded under an
    /// id recorded before.
    pub fn repeated(&mut self, index: usize, repeated: u64) {
        self.pools[index].repeated = repeated;
    }

    /// What it all adds up to, against what the clients were told: `name`
    /// and `accepted` give each pool's id and its acknowledged reservations.
    pub fn finish<'a>(
        self,
        name: impl Fn(usize) -> &'a str,
        accepted: impl Fn(usize) -> u64,
    ) -> Verified {
        let mut verified = Verified {
            failures: self.malformed,
            ..Verified::default()
        };
        for (index, pool) in self.pools.iter().enumerate() {
            if !pool.found {
                continue;
            }
            let id = name(index);
            verified.pools += 1;
            verified.reservations += pool.recorded;
            let counted = pool.counted.unwrap_or(pool.held);
            if counted > pool.capacity || pool.held > pool.capacity {
                verified.failures.push(format!(
                    "{id}: {} units reserved, capacity {}: overbooked",
                    pool.held.max(counted),
                    pool.capacity
                ));
            }
            if counted != pool.held {
                verified.failures.push(format!(
                    "{id}: the count says {counted} units, the reservations hold {}",
                    pool.held
                ));
            }
            if pool.repeated > 0 {
                verified.failures.push(format!(
                    "{id}: {} reservations recorded under {} ids",
                    pool.recorded,
                    pool.recorded - pool.repeated
                ));
            }
            let acknowledged = accepted(index);
            if pool.recorded < acknowledged {
                verified.failures.push(format!(
                    "{id}: {acknowledged} reservations acknowledged, {} recorded: lost",
                    pool.recorded
                ));
            }
            // Recorded but never acknowledged: the answer was lost (the
            // client gave up); a retry under the same id would get it.
            verified.unacknowledged += pool.recorded.saturating_sub(acknowledged);
        }
        if verified.pools < self.pools.len() {
            verified.failures.push(format!(
                "{} pools were made, {} found",
                self.pools.len(),
                verified.pools
            ));
        }
        verified
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: [&str; 3] = ["p0", "p1", "p2"];

    fn check(tally: Tally, accepted: [u64; 3]) -> Verified {
        tally.finish(|i| NAMES[i], |i| accepted[i])
    }

    /// Two pools of capacity 3, recorded in the interleaved order a table
    /// scan gives.
    fn clean() -> Tally {
        let mut tally = Tally::new(2);
        tally.pool(1, 3, None);
        tally.reserved(1, "a", 2);
        tally.pool(0, 3, None);
        tally.reserved(0, "a", 1);
        tally.released(1, 2);
        tally.reserved(1, "b", 3);
        tally
    }

    #[test]
    fn records_that_add_up_pass_and_unanswered_ones_are_counted() {
        let verified = clean().finish(|i| NAMES[i], |i| [1, 1][i]);
        assert!(verified.failures.is_empty(), "{:?}", verified.failures);
        assert_eq!(verified.pools, 2);
        assert_eq!(verified.reservations, 3);
        assert_eq!(verified.unacknowledged, 1);
    }

    #[test]
    fn more_units_than_the_capacity_is_overbooked() {
        let mut tally = clean();
        tally.reserved(0, "b", 3);
        let failures = check(tally, [0; 3]).failures;
        assert_eq!(failures, ["p0: 4 units reserved, capacity 3: overbooked"]);
    }

    #[test]
    fn a_counter_that_disagrees_with_the_records_fails() {
        let mut tally = Tally::new(1);
        tally.pool(0, 10, Some(4));
        tally.reserved(0, "a", 3);
        let failures = check(tally, [0; 3]).failures;
        assert_eq!(
            failures,
            ["p0: the count says 4 units, the reservations hold 3"]
        );
        let mut tally = Tally::new(1);
        tally.pool(0, 10, Some(11));
        tally.reserved(0, "a", 11);
        let failures = check(tally, [0; 3]).failures;
        assert_eq!(failures, ["p0: 11 units reserved, capacity 10: overbooked"]);
    }

    #[test]
    fn an_id_recorded_twice_makes_its_pool_a_suspect_and_fails_once_counted() {
        let mut tally = clean();
        tally.reserved(1, "a", 0);
        tally.reserved(1, "a", 0);
        assert_eq!(tally.suspects(), [1]);
        tally.repeated(1, 2);
        let failures = check(tally, [0; 3]).failures;
        assert_eq!(failures, ["p1: 4 reservations recorded under 2 ids"]);
    }

    #[test]
    fn a_suspect_whose_exact_count_finds_no_repeat_passes() {
        let mut tally = clean();
        tally.reserved(0, "a", 0);
        assert_eq!(tally.suspects(), [0]);
        tally.repeated(0, 0);
        assert!(check(tally, [0; 3]).failures.is_empty());
    }

    #[test]
    fn the_same_id_in_two_pools_is_not_a_repeat() {
        let tally = clean();
        assert!(tally.suspects().is_empty());
    }

    #[test]
    fn acknowledged_but_unrecorded_is_lost_and_missing_pools_fail() {
        let mut tally = Tally::new(3);
        tally.pool(0, 3, None);
        tally.reserved(0, "a", 1);
        tally.malformed("events: a reserved event without units".into());
        let failures = check(tally, [2, 0, 0]).failures;
        assert_eq!(
            failures,
            [
                "events: a reserved event without units",
                "p0: 2 reservations acknowledged, 1 recorded: lost",
                "3 pools were made, 1 found",
            ]
        );
    }
}
