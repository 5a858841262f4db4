//! Named time windows (`windows:` in `pitcrew.yaml`): weekly schedules in an
//! IANA time zone and absolute ranges, and whether an instant falls inside
//! one. `guardrails.freeze` and `guardrails.only_during` name them.
//!
//! Pure: no IO and no clock; the instant is an input. The time zone
//! database is compiled in (jiff's bundled copy), so a window means the
//! same on every host.
//!
//! Local times and daylight saving time: a window opens at the first
//! instant the local clock reads `from` or later on its day, and closes at
//! the first instant it reads `to` or later. So a time that does not exist
//! (skipped when clocks go forward) opens or closes the window at the jump
//! itself, and a time that exists twice (clocks go back) means its first
//! occurrence. A window of 01:00–03:00 on the night clocks go back is three
//! hours long; one on the night they go forward, one hour.

use std::fmt;

use chrono::{DateTime, Utc};
use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::{AmbiguousOffset, TimeZone};

/// A window's definition could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// Not an IANA time zone name the bundled database knows.
    #[error("unknown time zone {0:?}: expected an IANA name such as Europe/Berlin or UTC")]
    TimeZone(String),
    /// Not one of mon, tue, wed, thu, fri, sat, sun.
    #[error("invalid day {0:?}: expected mon, tue, wed, thu, fri, sat or sun")]
    Day(String),
    /// Not a 24-hour `HH:MM`.
    #[error("invalid time {0:?}: expected HH:MM from 00:00 to 23:59")]
    Time(String),
    /// Not an RFC 3339 time with an offset.
    #[error("invalid time {0:?}: expected RFC 3339, e.g. 2026-11-27T00:00:00Z")]
    Instant(String),
}

/// Days of the week, Monday first, as `days:` names them.
pub const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A named window.
#[derive(Debug, Clone)]
pub struct Window {
    pub name: String,
    pub schedule: Schedule,
}

#[derive(Debug, Clone)]
pub enum Schedule {
    /// Every listed day, from `from` to `to` local time. `to` at or before
    /// `from` ends the next day (a night shift: `22:00`–`06:00`; `00:00`–
    /// `00:00` is the whole day).
    Weekly {
        zone: Zone,
        /// Monday first.
        days: [bool; 7],
        /// Minutes after local midnight.
        from: u16,
        to: u16,
    },
    /// `[start, end)`.
    Absolute { start: DateTime<Utc>, end: DateTime<Utc> },
}

/// A time zone with the name it was given by.
#[derive(Debug, Clone)]
pub struct Zone {
    pub name: String,
    tz: TimeZone,
}

impl Zone {
    pub fn parse(name: &str) -> Result<Zone, WindowError> {
        // The bundled database only: a name means the same on any host.
        let tz = jiff::tz::db().get(name).map_err(|_| WindowError::TimeZone(name.to_string()))?;
        Ok(Zone {
            name: name.to_string(),
            tz,
        })
    }
}

/// `mon` … `sun` → 0 … 6.
pub fn parse_day(text: &str) -> Result<usize, WindowError> {
    DAYS.iter()
        .position(|d| *d == text)
        .ok_or_else(|| WindowError::Day(text.to_string()))
}

/// `HH:MM` (24-hour) → minutes after midnight.
pub fn parse_time(text: &str) -> Result<u16, WindowError> {
    let bad = || WindowError::Time(text.to_string());
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// An RFC 3339 time with its offset.
pub fn parse_instant(text: &str) -> Result<DateTime<Utc>, WindowError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| WindowError::Instant(text.to_string()))
}

fn timestamp(at: DateTime<Utc>) -> Timestamp {
    // Every chrono instant pitcrew handles is within jiff's range (years
    // -9999..=9999); the clamp only keeps this total.
    Timestamp::from_millisecond(at.timestamp_millis()).unwrap_or(if at.timestamp() < 0 { Timestamp::MIN } else { Timestamp::MAX })
}

/// The first instant at which the local clock of `tz` reads `minutes`
/// after midnight of `date`, or later (see the module docs).
fn boundary(tz: &TimeZone, date: Date, minutes: u16) -> Option<Timestamp> {
    let local = date.at((minutes / 60) as i8, (minutes % 60) as i8, 0, 0);
    match tz.to_ambiguous_timestamp(local).offset() {
        AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(local).ok(),
        // Clocks went back: the first time the clock showed it.
        AmbiguousOffset::Fold { before, .. } => before.to_timestamp(local).ok(),
        // Clocks jumped over it: the jump. Read with the offset after the
        // jump, the local time lands before the transition; the next
        // transition from there is the jump.
        AmbiguousOffset::Gap { after, .. } => {
            let before_jump = after.to_timestamp(local).ok()?;
            tz.following(before_jump).next().map(|t| t.timestamp())
        }
    }
}

impl Window {
    /// Whether `at` falls inside the window.
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        match &self.schedule {
            Schedule::Absolute { start, end } => *start <= at && at < *end,
            Schedule::Weekly { zone, days, from, to } => {
                let ts = timestamp(at);
                let today = zone.tz.to_datetime(ts).date();
                // A window that started yesterday may run past midnight.
                let starts = [today.yesterday().ok(), Some(today)];
                starts.into_iter().flatten().any(|day| {
                    if !days[day.weekday().to_monday_zero_offset() as usize] {
                        return false;
                    }
                    let end_day = if to <= from { day.tomorrow().ok() } else { Some(day) };
                    let open = boundary(&zone.tz, day, *from);
                    let close = end_day.and_then(|d| boundary(&zone.tz, d, *to));
                    matches!((open, close), (Some(open), Some(close)) if open <= ts && ts < close)
                })
            }
        }
    }
}

/// One entry of `windows:` as written (the config refuses unknown keys).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    pub name: String,
    pub timezone: Option<String>,
    pub days: Option<Vec<String>>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub start: Option<String>,
    pub end: Option<String>,
}

/// Checks `windows:`, reporting every problem through `problem(path, message)`
/// (paths as the config's positions name them: `windows[0].timezone`).
pub fn compile(raw: Vec<RawWindow>, problem: &mut dyn FnMut(&str, String)) -> Vec<Window> {
    let mut out: Vec<Window> = Vec::new();
    // Every name, valid windows or not: a duplicate is a problem either way.
    let mut names: Vec<String> = Vec::new();
    for (i, w) in raw.into_iter().enumerate() {
        let at = |key: &str| format!("windows[{i}].{key}");
        let mut ok = true;
        let mut fail = |key: &str, message: String| {
            problem(&at(key), message);
            ok = false;
        };
        if w.name.is_empty() || !w.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            fail(
                "name",
                format!("invalid window name {:?}: use lowercase letters, digits and -", w.name),
            );
        }
        if names.contains(&w.name) {
            fail("name", format!("duplicate window name `{}`", w.name));
        }
        names.push(w.name.clone());
        let weekly = w.timezone.is_some() || w.days.is_some() || w.from.is_some() || w.to.is_some();
        let absolute = w.start.is_some() || w.end.is_some();
        let schedule = match (weekly, absolute) {
            (true, true) => {
                fail(
                    "name",
                    format!(
                        "window `{}` mixes a weekly schedule (timezone, days, from, to) with an absolute range (start, end): use one",
                        w.name
                    ),
                );
                None
            }
            (false, false) => {
                fail(
                    "name",
                    format!("window `{}` needs `from` and `to` (weekly) or `start` and `end` (absolute)", w.name),
                );
                None
            }
            (false, true) => {
                let mut instant = |key: &str, text: Option<&String>| match text {
                    None => {
                        fail(key, format!("`{key}` is missing: an absolute window needs start and end"));
                        None
                    }
                    Some(t) => parse_instant(t).map_err(|e| fail(key, e.to_string())).ok(),
                };
                let (start, end) = (instant("start", w.start.as_ref()), instant("end", w.end.as_ref()));
                match (start, end) {
                    (Some(start), Some(end)) if start >= end => {
                        fail("end", "`end` must be after `start`".to_string());
                        None
                    }
                    (Some(start), Some(end)) => Some(Schedule::Absolute { start, end }),
                    _ => None,
                }
            }
            (true, false) => {
                let zone = Zone::parse(w.timezone.as_deref().unwrap_or("UTC"))
                    .map_err(|e| fail("timezone", e.to_string()))
                    .ok();
                let mut days = [w.days.is_none(); 7];
                for (j, d) in w.days.iter().flatten().enumerate() {
                    match parse_day(d) {
                        Ok(n) => days[n] = true,
                        Err(e) => fail(&format!("days[{j}]"), e.to_string()),
                    }
                }
                if w.days.as_ref().is_some_and(Vec::is_empty) {
                    fail("days", "`days` is empty: leave it out for every day".to_string());
                }
                let mut time = |key: &str, text: Option<&String>| match text {
                    None => {
                        fail(key, format!("`{key}` is missing: a weekly window needs from and to"));
                        None
                    }
                    Some(t) => parse_time(t).map_err(|e| fail(key, e.to_string())).ok(),
                };
                let (from, to) = (time("from", w.from.as_ref()), time("to", w.to.as_ref()));
                match (zone, from, to) {
                    (Some(zone), Some(from), Some(to)) => Some(Schedule::Weekly { zone, days, from, to }),
                    _ => None,
                }
            }
        };
        if let (true, Some(schedule)) = (ok, schedule) {
            out.push(Window { name: w.name, schedule });
        }
    }
    out
}

fn hhmm(minutes: u16) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

impl fmt::Display for Window {
    /// The window as decisions name it: `business-hours (mon–fri 09:00–18:00 Europe/Berlin)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schedule {
            Schedule::Absolute { start, end } => write!(
                f,
                "{} ({} – {})",
                self.name,
                start.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                end.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            ),
            Schedule::Weekly { zone, days, from, to } => {
                let names: Vec<&str> = DAYS.iter().zip(days).filter(|(_, on)| **on).map(|(d, _)| *d).collect();
                let days = if names.len() == 7 { "daily".to_string() } else { names.join(",") };
                write!(f, "{} ({days} {}–{} {})", self.name, hhmm(*from), hhmm(*to), zone.name)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weekly(tz: &str, days: &[&str], from: &str, to: &str) -> Window {
        let mut on = [false; 7];
        for d in days {
            on[parse_day(d).unwrap()] = true;
        }
        Window {
            name: "w".into(),
            schedule: Schedule::Weekly {
                zone: Zone::parse(tz).unwrap(),
                days: on,
                from: parse_time(from).unwrap(),
                to: parse_time(to).unwrap(),
            },
        }
    }

    fn at(text: &str) -> DateTime<Utc> {
        parse_instant(text).unwrap()
    }

    /// `(instant, inside?)` pairs against one window.
    fn check(w: &Window, cases: &[(&str, bool)]) {
        for (instant, inside) in cases {
            assert_eq!(w.contains(at(instant)), *inside, "{w} at {instant}");
        }
    }

    #[test]
    fn business_hours_in_berlin_follow_the_local_clock_across_summer_time() {
        let w = weekly("Europe/Berlin", &["mon", "tue", "wed", "thu", "fri"], "09:00", "18:00");
        check(
            &w,
            &[
                // Winter (CET, +01:00): 09:00 local is 08:00 UTC.
                ("2026-01-05T07:59:59Z", false),
                ("2026-01-05T08:00:00Z", true),
                ("2026-01-05T16:59:59Z", true),
                ("2026-01-05T17:00:00Z", false),
                // Summer (CEST, +02:00): 09:00 local is 07:00 UTC.
                ("2026-07-06T06:59:59Z", false),
                ("2026-07-06T07:00:00Z", true),
                ("2026-07-06T15:59:59Z", true),
                ("2026-07-06T16:00:00Z", false),
                // Saturday and Sunday are not listed.
                ("2026-07-04T10:00:00Z", false),
                ("2026-07-05T10:00:00Z", false),
                // The Monday after clocks went forward (Sun 2026-03-29)
                // and after they went back (Sun 2026-10-25).
                ("2026-03-30T07:00:00Z", true),
                ("2026-03-30T06:59:00Z", false),
                ("2026-10-26T08:00:00Z", true),
                ("2026-10-26T07:59:00Z", false),
            ],
        );
    }

    #[test]
    fn a_night_window_on_the_last_sunday_of_october_is_an_hour_longer() {
        // Berlin, Sun 2026-10-25: at 03:00 CEST (01:00 UTC) clocks go back
        // to 02:00 CET; 02:00–02:59 local happens twice.
        let w = weekly("Europe/Berlin", &["sat", "sun"], "01:00", "03:00");
        check(
            &w,
            &[
                // Opens at 01:00 CEST = 23:00 UTC on Saturday.
                ("2026-10-24T22:59:59Z", false),
                ("2026-10-24T23:00:00Z", true),
                // 02:30 CEST, then 02:30 CET an hour later: both inside.
                ("2026-10-25T00:30:00Z", true),
                ("2026-10-25T01:30:00Z", true),
                // Closes when the clock first reads 03:00, which is 03:00
                // CET = 02:00 UTC: three hours of real time.
                ("2026-10-25T01:59:59Z", true),
                ("2026-10-25T02:00:00Z", false),
            ],
        );
        // A window opening at a time that happens twice opens at the first.
        let w = weekly("Europe/Berlin", &["sun"], "02:30", "04:00");
        check(
            &w,
            &[
                ("2026-10-25T00:29:59Z", false),
                ("2026-10-25T00:30:00Z", true),
                ("2026-10-25T02:59:59Z", true),
                ("2026-10-25T03:00:00Z", false),
            ],
        );
        // And one closing at such a time closes at the first too.
        let w = weekly("Europe/Berlin", &["sat"], "22:00", "02:30");
        check(
            &w,
            &[
                ("2026-10-24T20:00:00Z", true),
                ("2026-10-25T00:29:59Z", true),
                ("2026-10-25T00:30:00Z", false),
                // 02:10 CET, the second time: the window has closed.
                ("2026-10-25T01:10:00Z", false),
            ],
        );
    }

    #[test]
    fn a_night_window_on_the_last_sunday_of_march_is_an_hour_shorter() {
        // Berlin, Sun 2026-03-29: at 02:00 CET (01:00 UTC) clocks jump to
        // 03:00 CEST; 02:00–02:59 local never happens.
        let w = weekly("Europe/Berlin", &["sat", "sun"], "01:00", "03:00");
        check(
            &w,
            &[
                ("2026-03-28T23:59:59Z", false),
                // 01:00 CET.
                ("2026-03-29T00:00:00Z", true),
                // 01:59:59 CET, then the jump to 03:00 CEST closes it.
                ("2026-03-29T00:59:59Z", true),
                ("2026-03-29T01:00:00Z", false),
            ],
        );
        // A window opening in the skipped hour opens at the jump.
        let w = weekly("Europe/Berlin", &["sun"], "02:30", "05:00");
        check(
            &w,
            &[
                ("2026-03-29T00:59:59Z", false),
                ("2026-03-29T01:00:00Z", true),
                // 05:00 CEST = 03:00 UTC.
                ("2026-03-29T02:59:59Z", true),
                ("2026-03-29T03:00:00Z", false),
            ],
        );
        // One closing in the skipped hour closes at the jump.
        let w = weekly("Europe/Berlin", &["sat"], "23:00", "02:30");
        check(
            &w,
            &[
                ("2026-03-28T21:59:59Z", false),
                ("2026-03-28T22:00:00Z", true),
                ("2026-03-29T00:59:59Z", true),
                ("2026-03-29T01:00:00Z", false),
            ],
        );
    }

    #[test]
    fn a_window_that_ends_at_or_before_it_starts_runs_past_midnight() {
        // Friday 22:00 to Saturday 06:00, UTC by default.
        let w = weekly("UTC", &["fri"], "22:00", "06:00");
        check(
            &w,
            &[
                ("2026-12-04T21:59:59Z", false),
                ("2026-12-04T22:00:00Z", true),
                ("2026-12-05T00:00:00Z", true),
                ("2026-12-05T05:59:59Z", true),
                ("2026-12-05T06:00:00Z", false),
                // Thursday night is not a Friday start.
                ("2026-12-03T23:00:00Z", false),
                ("2026-12-04T03:00:00Z", false),
            ],
        );
        // The same start and end: the whole day, from the start.
        let w = weekly("UTC", &["mon"], "00:00", "00:00");
        check(
            &w,
            &[
                ("2026-11-29T23:59:59Z", false),
                ("2026-11-30T00:00:00Z", true),
                ("2026-11-30T23:59:59Z", true),
                ("2026-12-01T00:00:00Z", false),
            ],
        );
        // Sunday night into Monday crosses the week's end.
        let w = weekly("America/New_York", &["sun"], "20:00", "02:00");
        check(
            &w,
            &[
                // 20:00 EST = 01:00 UTC Monday.
                ("2026-12-07T00:59:59Z", false),
                ("2026-12-07T01:00:00Z", true),
                ("2026-12-07T06:59:59Z", true),
                ("2026-12-07T07:00:00Z", false),
            ],
        );
    }

    #[test]
    fn absolute_windows_include_their_start_and_not_their_end() {
        let w = Window {
            name: "black-friday".into(),
            schedule: Schedule::Absolute {
                start: at("2026-11-27T00:00:00Z"),
                end: at("2026-12-01T00:00:00+01:00"),
            },
        };
        check(
            &w,
            &[
                ("2026-11-26T23:59:59.999Z", false),
                ("2026-11-27T00:00:00Z", true),
                ("2026-11-30T22:59:59.999Z", true),
                ("2026-11-30T23:00:00Z", false),
            ],
        );
        assert_eq!(w.to_string(), "black-friday (2026-11-27T00:00:00Z – 2026-11-30T23:00:00Z)");
    }

    #[test]
    fn definitions_are_parsed_strictly() {
        assert_eq!(parse_time("09:00"), Ok(540));
        assert_eq!(parse_time("23:59"), Ok(1439));
        for bad in ["9:00", "24:00", "12:60", "12:00:00", "noon", "1200", "-1:00", "+9:00"] {
            assert_eq!(parse_time(bad), Err(WindowError::Time(bad.into())), "{bad}");
        }
        assert_eq!(parse_day("sun"), Ok(6));
        assert!(parse_day("Sunday").is_err());
        assert!(Zone::parse("Europe/Berlin").is_ok());
        assert!(Zone::parse("UTC").is_ok());
        assert_eq!(
            Zone::parse("Europe/Berlinn").unwrap_err(),
            WindowError::TimeZone("Europe/Berlinn".into())
        );
        assert!(parse_instant("2026-11-27T00:00:00").is_err(), "an offset is required");
        assert_eq!(
            weekly("Europe/Berlin", &["mon", "fri"], "09:00", "18:00").to_string(),
            "w (mon,fri 09:00–18:00 Europe/Berlin)"
        );
    }
}
