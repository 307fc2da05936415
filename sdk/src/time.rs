//! Calendar helpers for configs: days, clock times and timestamps.
//!
//! Pools usually cover a local day ("Berlin-Mitte on 24 November") while the
//! host speaks milliseconds since the Unix epoch. These types read the human
//! forms from JSON and turn them into milliseconds. The sandbox has no time
//! zone database, so a day is given with its UTC offset.

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime, UtcOffset};

use crate::Problem;

/// Milliseconds in a minute.
pub const MINUTE_MS: i64 = 60_000;
/// Milliseconds in an hour.
pub const HOUR_MS: i64 = 60 * MINUTE_MS;

/// A local calendar day: a date and its offset from UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Day {
    /// Start of the day (local midnight) in ms since the Unix epoch.
    pub midnight_ms: i64,
}

impl Day {
    /// Reads a date such as `2026-11-24` and an offset such as `+01:00`.
    pub fn parse(date: &str, utc_offset: &str) -> Result<Self, Problem> {
        let date = Date::parse(date, format_description!("[year]-[month]-[day]")).map_err(|e| {
            Problem::new(
                "invalid_config",
                format!("date `{date}` is not YYYY-MM-DD: {e}"),
            )
        })?;
        let offset = UtcOffset::parse(
            utc_offset,
            format_description!("[offset_hour sign:mandatory]:[offset_minute]"),
        )
        .map_err(|e| {
            Problem::new(
                "invalid_config",
                format!("utc_offset `{utc_offset}` is not ±HH:MM: {e}"),
            )
        })?;
        let midnight = date.midnight().assume_offset(offset);
        Ok(Self {
            midnight_ms: (midnight.unix_timestamp_nanos() / 1_000_000) as i64,
        })
    }

    /// The instant of a clock time on this day, in ms since the Unix epoch.
    pub fn at(&self, time: ClockTime) -> i64 {
        self.midnight_ms + i64::from(time.minutes()) * MINUTE_MS
    }
}

/// A time of day, `HH:MM`, from `00:00` to `24:00` (the end of the day).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClockTime(u16);

impl ClockTime {
    /// The clock time `hour:minute`, if it is one.
    pub fn new(hour: u16, minute: u16) -> Option<Self> {
        (minute < 60 && (hour < 24 || (hour == 24 && minute == 0)))
            .then_some(Self(hour * 60 + minute))
    }

    /// Minutes since midnight.
    pub fn minutes(self) -> u16 {
        self.0
    }

    /// Reads `HH:MM`.
    pub fn parse(s: &str) -> Option<Self> {
        let (h, m) = s.split_once(':')?;
        if h.len() != 2 || m.len() != 2 {
            return None;
        }
        Self::new(h.parse().ok()?, m.parse().ok()?)
    }
}

impl std::fmt::Display for ClockTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

impl Serialize for ClockTime {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_u16(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for ClockTime {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let s = String::deserialize(deserializer)?;
            Self::parse(&s).ok_or_else(|| {
                de::Error::custom(format!("`{s}` is not a time of day HH:MM (00:00 to 24:00)"))
            })
        } else {
            let minutes = u16::deserialize(deserializer)?;
            Self::new(minutes / 60, minutes % 60)
                .ok_or_else(|| de::Error::custom("time of day out of range"))
        }
    }
}

/// An instant, written in JSON as RFC 3339 (`2026-11-24T18:00:00+01:00`) and
/// held as ms since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Reads an RFC 3339 timestamp.
    pub fn parse(s: &str) -> Option<Self> {
        let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
        Some(Self((t.unix_timestamp_nanos() / 1_000_000) as i64))
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .map_err(|_| std::fmt::Error)?;
        let s = t.format(&Rfc3339).map_err(|_| std::fmt::Error)?;
        f.write_str(&s)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_i64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let s = String::deserialize(deserializer)?;
            Self::parse(&s)
                .ok_or_else(|| de::Error::custom(format!("`{s}` is not an RFC 3339 timestamp")))
        } else {
            i64::deserialize(deserializer).map(Self)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_starts_at_local_midnight() {
        let day = Day::parse("2026-11-24", "+01:00").unwrap();
        assert_eq!(
            Timestamp(day.midnight_ms).to_string(),
            "2026-11-23T23:00:00Z"
        );
        let eight = day.at(ClockTime::parse("08:00").unwrap());
        assert_eq!(
            Timestamp(eight),
            Timestamp::parse("2026-11-24T08:00:00+01:00").unwrap()
        );
    }

    #[test]
    fn clock_times_stay_within_the_day() {
        assert_eq!(ClockTime::parse("24:00").unwrap().minutes(), 1440);
        assert!(ClockTime::parse("24:01").is_none());
        assert!(ClockTime::parse("8:00").is_none());
        assert!(ClockTime::parse("12:60").is_none());
    }

    #[test]
    fn bad_dates_name_the_field() {
        let p = Day::parse("24.11.2026", "+01:00").unwrap_err();
        assert!(p.message.contains("24.11.2026"), "{p}");
        let p = Day::parse("2026-11-24", "CET").unwrap_err();
        assert!(p.message.contains("utc_offset"), "{p}");
    }
}
