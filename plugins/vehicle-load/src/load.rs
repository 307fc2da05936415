//! Amounts in the three dimensions a truck is loaded in.

use std::iter::Sum;

use serde::{Deserialize, Serialize};

/// One of the dimensions a load must fit in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dimension {
    /// Weight, in kilograms.
    Weight,
    /// Volume, in litres.
    Volume,
    /// Pallet spaces.
    Pallets,
}

impl Dimension {
    /// Every dimension, in the order messages and cells list them.
    pub const ALL: [Self; 3] = [Self::Weight, Self::Volume, Self::Pallets];

    /// The name of the dimension, also the key of its cell in the view.
    pub fn key(self) -> &'static str {
        match self {
            Self::Weight => "weight",
            Self::Volume => "volume",
            Self::Pallets => "pallets",
        }
    }

    /// The unit amounts of this dimension are counted in.
    pub fn unit(self) -> &'static str {
        match self {
            Self::Weight => "kg",
            Self::Volume => "l",
            Self::Pallets => "pallets",
        }
    }

    /// The JSON field that carries this dimension in configs, requests and events.
    pub fn field(self) -> &'static str {
        match self {
            Self::Weight => "weight_kg",
            Self::Volume => "volume_l",
            Self::Pallets => "pallets",
        }
    }

    /// An amount written for people in messages: `800 kg`, `2000 l`, but a
    /// bare `2` for pallets, which follow the dimension's name already.
    pub(crate) fn amount(self, amount: u64) -> String {
        match self {
            Self::Pallets => amount.to_string(),
            _ => format!("{amount} {}", self.unit()),
        }
    }
}

/// An amount in every dimension: what a reservation takes, what a truck holds.
///
/// Missing fields read as zero, so a request for pallets alone is `{"pallets": 2}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Load {
    /// Weight in kilograms.
    pub weight_kg: u64,
    /// Volume in litres.
    pub volume_l: u64,
    /// Pallet spaces.
    pub pallets: u64,
}

impl Load {
    /// Nothing in any dimension.
    pub const ZERO: Self = Self {
        weight_kg: 0,
        volume_l: 0,
        pallets: 0,
    };

    /// The amount in one dimension.
    pub fn get(self, dimension: Dimension) -> u64 {
        match dimension {
            Dimension::Weight => self.weight_kg,
            Dimension::Volume => self.volume_l,
            Dimension::Pallets => self.pallets,
        }
    }

    /// The same load with one dimension replaced.
    pub fn with(mut self, dimension: Dimension, amount: u64) -> Self {
        match dimension {
            Dimension::Weight => self.weight_kg = amount,
            Dimension::Volume => self.volume_l = amount,
            Dimension::Pallets => self.pallets = amount,
        }
        self
    }

    /// Whether the load is zero in every dimension.
    pub fn is_empty(self) -> bool {
        self == Self::ZERO
    }

    /// The sum per dimension, stopping at `u64::MAX` rather than overflowing.
    pub fn saturating_add(self, other: Self) -> Self {
        Self {
            weight_kg: self.weight_kg.saturating_add(other.weight_kg),
            volume_l: self.volume_l.saturating_add(other.volume_l),
            pallets: self.pallets.saturating_add(other.pallets),
        }
    }

    /// The difference per dimension, zero where `other` is larger.
    pub fn saturating_sub(self, other: Self) -> Self {
        Self {
            weight_kg: self.weight_kg.saturating_sub(other.weight_kg),
            volume_l: self.volume_l.saturating_sub(other.volume_l),
            pallets: self.pallets.saturating_sub(other.pallets),
        }
    }

    /// Whether the load fits within `room` in every dimension.
    pub fn fits_within(self, room: Self) -> bool {
        self.exceeding(room).next().is_none()
    }

    /// The dimensions in which the load is larger than `limit`.
    pub fn exceeding(self, limit: Self) -> impl Iterator<Item = Dimension> {
        Dimension::ALL
            .into_iter()
            .filter(move |&d| self.get(d) > limit.get(d))
    }
}

/// Totals saturate at `u64::MAX` instead of overflowing: a total is compared
/// against a capacity, and a saturated total leaves no room, which is the safe
/// side. Every load was admitted against a capacity, so totals stay far below
/// that anyway.
impl Sum for Load {
    fn sum<I: Iterator<Item = Self>>(loads: I) -> Self {
        loads.fold(Self::ZERO, Self::saturating_add)
    }
}
