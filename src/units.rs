//! Durations, rates and percentages as they are written in runbooks and config.
//!
//! Parsed once into real types; nothing downstream handles the strings again.
//! Hand-written on purpose: no maintained crate parses the Prometheus duration
//! syntax (`1h30m`, `7d`, `2w`, `500ms`) and prints it back the same way.

use std::fmt;
use std::str::FromStr;
use std::time::Duration as StdDuration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A unit string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// Not a Prometheus-style duration.
    #[error("invalid duration {0:?}: expected e.g. 30s, 5m, 1h30m, 7d (units ms, s, m, h, d, w, y)")]
    Duration(String),
    /// A duration (or a rate's window) longer than [`Duration::MAX`].
    #[error("{0:?} is longer than the limit of 100y")]
    TooLong(String),
    /// Not `N/DURATION`.
    #[error("invalid rate {0:?}: expected N/DURATION, e.g. 3/1h")]
    Rate(String),
    /// Not a percentage or fraction.
    #[error("invalid percentage {0:?}: expected e.g. 99.9% or 0.999")]
    Percent(String),
    /// Not a byte size.
    #[error("invalid size {0:?}: expected e.g. 1MiB, 512KiB, 1048576")]
    Size(String),
}

/// A duration in Prometheus syntax, kept to millisecond precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(StdDuration);

const UNITS: [(&str, u64); 7] = [
    ("y", 365 * 24 * 3600 * 1000),
    ("w", 7 * 24 * 3600 * 1000),
    ("d", 24 * 3600 * 1000),
    ("h", 3600 * 1000),
    ("m", 60 * 1000),
    ("s", 1000),
    ("ms", 1),
];

/// Milliseconds in 100 years.
const MAX_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

impl Duration {
    pub const ZERO: Duration = Duration(StdDuration::ZERO);
    /// The longest duration anything accepts. Far beyond any sensible
    /// cooldown or silence, and far inside what time arithmetic (chrono
    /// date-times, tokio deadlines) can add to "now" without overflowing, so
    /// a value from an alert label can never panic a worker.
    pub const MAX: Duration = Duration(StdDuration::from_millis(MAX_MS));

    pub const fn from_secs(secs: u64) -> Self {
        Duration(StdDuration::from_secs(secs))
    }
    pub const fn from_millis(ms: u64) -> Self {
        Duration(StdDuration::from_millis(ms))
    }
    pub fn std(self) -> StdDuration {
        self.0
    }
    pub fn as_millis(self) -> u64 {
        self.0.as_millis() as u64
    }
    /// As a chrono duration. Parsed durations are at most [`Duration::MAX`],
    /// which always fits; the clamp keeps a constant built past it from
    /// wrapping.
    pub fn chrono(self) -> chrono::Duration {
        chrono::Duration::try_milliseconds(self.as_millis().min(MAX_MS) as i64).unwrap_or(chrono::Duration::MAX)
    }
}

impl FromStr for Duration {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let err = || UnitError::Duration(s.to_string());
        let text = s.trim();
        if text.is_empty() {
            return Err(err());
        }
        if text == "0" {
            return Ok(Duration::ZERO);
        }
        let mut rest = text;
        let mut total: u64 = 0;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(err());
            }
            // All digits: parsing fails only when the number is too big.
            let n: u64 = rest[..digits].parse().map_err(|_| UnitError::TooLong(s.to_string()))?;
            rest = &rest[digits..];
            let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let scale = UNITS.iter().find(|(name, _)| *name == unit).map(|(_, ms)| *ms).ok_or_else(err)?;
            // Checked first: a huge count must be "too long", not wrap.
            total = n
                .checked_mul(scale)
                .and_then(|v| total.checked_add(v))
                .filter(|&t| t <= MAX_MS)
                .ok_or_else(|| UnitError::TooLong(s.to_string()))?;
        }
        Ok(Duration::from_millis(total))
    }
}

impl fmt::Display for Duration {
    /// Prints the shortest Prometheus form, e.g. `1h30m`; `0s` for zero.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (name, scale) in UNITS {
            if ms >= scale {
                write!(f, "{}{}", ms / scale, name)?;
                ms %= scale;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = StringOrNumber::deserialize(d)?.0;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `N/DURATION`: at most `count` events within any `per` window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl FromStr for Rate {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let err = || UnitError::Rate(s.to_string());
        let (n, per) = s.trim().split_once('/').ok_or_else(err)?;
        let count: u32 = n.trim().parse().map_err(|_| err())?;
        let per: Duration = per.trim().parse().map_err(|e| match e {
            UnitError::TooLong(_) => UnitError::TooLong(s.to_string()),
            _ => err(),
        })?;
        if count == 0 || per == Duration::ZERO {
            return Err(err());
        }
        Ok(Rate { count, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.per)
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = StringOrNumber::deserialize(d)?.0;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A fraction in `[−∞, 1]`, written `99.9%` or `0.999`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Ratio(pub f64);

impl FromStr for Ratio {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let err = || UnitError::Percent(s.to_string());
        let t = s.trim();
        let value = match t.strip_suffix('%') {
            // Rounded so that 99.9% is exactly 0.999, as written.
            Some(p) => (p.trim().parse::<f64>().map_err(|_| err())? * 1e10).round() / 1e12,
            None => t.parse::<f64>().map_err(|_| err())?,
        };
        if !value.is_finite() || value > 1.0 {
            return Err(err());
        }
        Ok(Ratio(value))
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = format!("{:.4}", self.0 * 100.0);
        let pct = pct.trim_end_matches('0').trim_end_matches('.');
        write!(f, "{pct}%")
    }
}

impl Serialize for Ratio {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = StringOrNumber::deserialize(d)?.0;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A byte size: `1MiB`, `512KiB`, `64KB`, or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let err = || UnitError::Size(s.to_string());
        let t = s.trim();
        let digits = t.bytes().take_while(u8::is_ascii_digit).count();
        let n: u64 = t[..digits].parse().map_err(|_| err())?;
        let scale: u64 = match t[digits..].trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            _ => return Err(err()),
        };
        n.checked_mul(scale).map(ByteSize).ok_or_else(err)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = StringOrNumber::deserialize(d)?.0;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// YAML writes `30` and `"30"` alike for us; accept both as text.
struct StringOrNumber(String);

impl<'de> Deserialize<'de> for StringOrNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            S(String),
            I(u64),
            F(f64),
        }
        Ok(StringOrNumber(match Either::deserialize(d)? {
            Either::S(s) => s,
            Either::I(i) => i.to_string(),
            Either::F(f) => f.to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip_in_prometheus_syntax() {
        for (text, ms, back) in [
            ("30s", 30_000, "30s"),
            ("5m", 300_000, "5m"),
            ("1h30m", 5_400_000, "1h30m"),
            ("90m", 5_400_000, "1h30m"),
            ("7d", 604_800_000, "1w"),
            ("500ms", 500, "500ms"),
            ("2w", 1_209_600_000, "2w"),
            ("0", 0, "0s"),
        ] {
            let d: Duration = text.parse().unwrap();
            assert_eq!(d.as_millis(), ms, "{text}");
            assert_eq!(d.to_string(), back, "{text}");
        }
    }

    #[test]
    fn bad_durations_are_refused() {
        for text in ["", "5", "m5", "5x", "1.5h", "-5m", "5 m", "99999999999999999999y"] {
            assert!(text.parse::<Duration>().is_err(), "{text:?} should fail");
        }
    }

    #[test]
    fn durations_and_rates_stop_at_100_years() {
        assert_eq!("100y".parse::<Duration>().unwrap(), Duration::MAX);
        assert_eq!("99y52w".parse::<Duration>().unwrap().to_string(), "99y52w");
        for text in ["300000y", "100y1ms", "5218w", "18446744073709551615ms", "99999999999999999999y"] {
            let err = text.parse::<Duration>().unwrap_err();
            assert_eq!(err, UnitError::TooLong(text.to_string()), "{text}");
        }
        assert_eq!(
            "1/300000y".parse::<Rate>().unwrap_err().to_string(),
            "\"1/300000y\" is longer than the limit of 100y"
        );
        // The longest accepted duration is safe to add to any date we run at.
        let far = chrono::DateTime::<chrono::Utc>::MAX_UTC - chrono::Duration::days(366 * 200);
        assert!(far.checked_add_signed(Duration::MAX.chrono()).is_some());
    }

    #[test]
    fn rates_and_ratios() {
        let r: Rate = "3/1h".parse().unwrap();
        assert_eq!((r.count, r.per.as_millis()), (3, 3_600_000));
        assert!("0/1h".parse::<Rate>().is_err());
        assert!("3".parse::<Rate>().is_err());
        assert_eq!("99.9%".parse::<Ratio>().unwrap().0, 0.999);
        assert_eq!("0.25".parse::<Ratio>().unwrap().0, 0.25);
        assert!("120%".parse::<Ratio>().is_err());
        assert_eq!(Ratio(0.999).to_string(), "99.9%");
        assert_eq!("1MiB".parse::<ByteSize>().unwrap().0, 1 << 20);
    }
}
