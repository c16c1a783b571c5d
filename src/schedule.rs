//! Parsing of the `[maintenance]` time settings: zones, cron expressions, the flex window.
//!
//! Pure functions, used both by `config::validate` (so `seedq config check` catches a bad
//! schedule) and by the maintenance scheduler. Errors are the "allowed" half of a
//! `ConfigError::Invalid`, so they say what a good value looks like.

use chrono::{DateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

/// Seconds in a day.
const DAY_S: u32 = 86_400;

/// Parses an IANA zone name such as `Asia/Shanghai` or `UTC`.
///
/// # Errors
/// The name is not in the time zone database.
pub fn parse_tz(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| "an IANA time zone name such as Asia/Shanghai or UTC".to_string())
}

/// Parses a 6-field cron expression (`sec min hour day-of-month month day-of-week`, the
/// syntax tokio-cron-scheduler accepts); empty means the job is off (`None`).
///
/// # Errors
/// The expression does not parse.
pub fn parse_cron(expr: &str) -> Result<Option<Cron>, String> {
    if expr.trim().is_empty() {
        return Ok(None);
    }
    CronParser::builder()
        .seconds(Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expr.trim())
        .map(Some)
        .map_err(|_| {
            "a 6-field cron expression: sec min hour day-of-month month day-of-week, \
             e.g. \"0 30 3 * * *\" (daily at 03:30), or \"\" to disable"
                .to_string()
        })
}

/// The first firing of `cron` strictly after `now`, evaluated in `tz` (so a daily 03:30 stays
/// at 03:30 local time across DST changes).
pub fn next_after<Z: TimeZone>(cron: &Cron, now: DateTime<Utc>, tz: &Z) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&now.with_timezone(tz), false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A daily window `[start, end)` in seconds after local midnight; `end < start` wraps
/// midnight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlexWindow {
    pub start: u32,
    pub end: u32,
}

impl FlexWindow {
    /// Parses `HH:MM[:SS]-HH:MM[:SS]`; empty means no window (`None`: any time).
    ///
    /// # Errors
    /// Malformed times, or an empty window (start = end).
    pub fn parse(s: &str) -> Result<Option<Self>, String> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        let bad = || {
            "HH:MM-HH:MM (seconds optional), e.g. \"00:00-08:00\"; it may wrap midnight, \
             \"\" means any time"
                .to_string()
        };
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let (start, end) = (
            time_of_day(a).ok_or_else(bad)?,
            time_of_day(b).ok_or_else(bad)?,
        );
        if start == end {
            return Err(bad());
        }
        Ok(Some(Self { start, end }))
    }

    /// Whether `t` (seconds after local midnight) lies in the window.
    pub fn contains(&self, t: u32) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&t)
        } else {
            t >= self.start || t < self.end
        }
    }

    /// Whether the window is open at `now_ms` (unix milliseconds) in `tz`.
    pub fn open_at(&self, now_ms: i64, tz: Tz) -> bool {
        self.contains(seconds_of_day(now_ms, tz))
    }
}

/// Seconds after local midnight in `tz` at `now_ms`.
pub fn seconds_of_day(now_ms: i64, tz: Tz) -> u32 {
    tz.timestamp_millis_opt(now_ms)
        .single()
        .map_or(0, |t| t.num_seconds_from_midnight() % DAY_S)
}

fn time_of_day(s: &str) -> Option<u32> {
    let mut parts = s.trim().split(':');
    let h: u32 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let sec: u32 = match parts.next() {
        Some(p) => p.parse().ok()?,
        None => 0,
    };
    if parts.next().is_some() || m > 59 || sec > 59 || h > 24 || (h == 24 && (m, sec) != (0, 0)) {
        return None;
    }
    Some((h * 3600 + m * 60 + sec) % DAY_S)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_wrap_midnight() {
        let w = FlexWindow::parse("00:00-08:00").expect("ok").expect("some");
        assert_eq!((w.start, w.end), (0, 8 * 3600));
        assert!(w.contains(0) && w.contains(8 * 3600 - 1));
        assert!(!w.contains(8 * 3600) && !w.contains(23 * 3600));
        let night = FlexWindow::parse("22:00-06:30:15")
            .expect("ok")
            .expect("some");
        assert!(night.contains(23 * 3600) && night.contains(3600));
        assert!(!night.contains(12 * 3600));
        assert!(night.contains(6 * 3600 + 30 * 60 + 14));
        assert!(!night.contains(6 * 3600 + 30 * 60 + 15));
        assert_eq!(FlexWindow::parse(" "), Ok(None));
        for bad in [
            "08:00",
            "8-9",
            "25:00-01:00",
            "01:00-01:00",
            "01:60-02:00",
            "1:2:3:4-5:00",
        ] {
            assert!(FlexWindow::parse(bad).is_err(), "{bad}");
        }
        assert!(FlexWindow::parse("20:00-24:00").is_ok());
    }

    #[test]
    fn shanghai_is_eight_hours_ahead_of_utc() {
        let tz = parse_tz("Asia/Shanghai").expect("tz");
        // 2026-05-14T16:00:00Z is midnight in Shanghai.
        assert_eq!(seconds_of_day(1_778_774_400_000, tz), 0);
        assert_eq!(seconds_of_day(1_778_774_400_000 + 3_600_000, tz), 3600);
        assert!(parse_tz("Mars/Olympus").is_err());
    }

    #[test]
    fn cron_expressions_need_six_fields() {
        assert!(parse_cron("0 30 3 * * *").is_ok_and(|c| c.is_some()));
        assert!(parse_cron("*/2 * * * * *").is_ok_and(|c| c.is_some()));
        assert_eq!(parse_cron(" ").map(|c| c.is_none()), Ok(true));
        assert!(parse_cron("every day").is_err());
        assert!(parse_cron("30 3 * * *").is_err(), "five fields");
        assert!(parse_cron("0 61 * * * *").is_err());
    }

    #[test]
    fn firings_follow_local_time_across_dst() {
        let daily = parse_cron("0 30 3 * * *").expect("ok").expect("some");
        let berlin = parse_tz("Europe/Berlin").expect("tz");
        // Summer time starts on 2026-03-29: 03:30 on the 28th is CET (UTC+1), on the 29th
        // CEST (UTC+2).
        let now = Utc
            .with_ymd_and_hms(2026, 3, 27, 12, 0, 0)
            .single()
            .expect("time");
        let first = next_after(&daily, now, &berlin).expect("next");
        assert_eq!(
            first,
            Utc.with_ymd_and_hms(2026, 3, 28, 2, 30, 0)
                .single()
                .expect("t")
        );
        let second = next_after(&daily, first, &berlin).expect("next");
        assert_eq!(
            second,
            Utc.with_ymd_and_hms(2026, 3, 29, 1, 30, 0)
                .single()
                .expect("t")
        );
        let shanghai = parse_tz("Asia/Shanghai").expect("tz");
        let midnight = parse_cron("0 0 0 * * *").expect("ok").expect("some");
        assert_eq!(
            next_after(&midnight, now, &shanghai),
            Utc.with_ymd_and_hms(2026, 3, 27, 16, 0, 0).single()
        );
    }
}
