//! Identifiers that travel between the stages.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Number of shards pools are spread over. Fixed for the life of a cluster:
/// the shard of a pool is stored with it.
pub const SHARDS: u32 = 256;

/// A pool's id, chosen by whoever creates the pool: `berlin-mitte/2026-11-24`.
///
/// 1 to 128 characters of ASCII letters, digits and `-_.:/`, so that ids are
/// safe in URLs, logs and file names alike.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PoolId(Arc<str>);

impl PoolId {
    /// Checks and wraps an id.
    pub fn new(id: &str) -> Result<Self, InvalidId> {
        let valid_char = |c: char| c.is_ascii_alphanumeric() || "-_.:/".contains(c);
        if id.is_empty() || id.len() > 128 || !id.chars().all(valid_char) {
            return Err(InvalidId(id.chars().take(160).collect()));
        }
        Ok(Self(Arc::from(id)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shard the pool belongs to: FNV-1a of the id, so that every node
    /// and every version computes the same.
    pub fn shard(&self) -> u32 {
        (fnv1a(self.0.as_bytes()) % u64::from(SHARDS)) as u32
    }
}

/// FNV-1a, 64 bits: a hash that is the same on every machine and in every
/// version, for placing things by name.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl fmt::Display for PoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl TryFrom<String> for PoolId {
    type Error = InvalidId;
    fn try_from(s: String) -> Result<Self, InvalidId> {
        Self::new(&s)
    }
}

impl From<PoolId> for String {
    fn from(id: PoolId) -> String {
        id.0.to_string()
    }
}

/// An id that breaks the rules of [`PoolId`].
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a valid id: use 1 to 128 ASCII letters, digits or -_.:/")]
pub struct InvalidId(String);

/// A position in a pool's history: the number of events before and
/// including an event. Zero is the empty history.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct SeqNr(pub i64);

impl SeqNr {
    /// The position `n` events later.
    pub fn after(self, n: usize) -> SeqNr {
        SeqNr(self.0 + n as i64)
    }
}

impl fmt::Display for SeqNr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(PoolId::new("berlin-mitte/2026-11-24").is_ok());
        assert!(PoolId::new("").is_err());
        assert!(PoolId::new("a b").is_err());
        assert!(PoolId::new(&"x".repeat(129)).is_err());
    }

    #[test]
    fn shards_are_stable() {
        let id = PoolId::new("berlin-mitte/2026-11-24").unwrap();
        assert_eq!(id.shard(), id.clone().shard());
        assert!(id.shard() < SHARDS);
        // Pinned: a change here would move every pool to another shard.
        assert_eq!(
            PoolId::new("a").unwrap().shard(),
            (0xaf63_dc4c_8601_ec8c_u64 % 256) as u32
        );
    }
}
