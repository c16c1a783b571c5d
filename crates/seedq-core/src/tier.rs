//! Ark's service tier as a type.
//!
//! Ark's `service_tier` is a string with exactly two values, `"default"` (online inference) and
//! `"flex"` (offline inference at half price, quota counted by tokens per day), and `"default"`
//! when omitted (docs/ark-api.md §2, echoed on get in §3, the list filter in §4). The tier
//! decides a job's limits, its price and which list query finds it, so the domain carries a
//! `Tier` instead of a string: a typo is a compile error, not a job that no limit applies to.
//! The wire strings stay exactly Ark's, in JSON (serde), in the store's TEXT column and in metric
//! labels, so nothing outside changes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Ark's service tier (docs/ark-api.md §2 `service_tier`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// Online inference: Ark's default when `service_tier` is omitted.
    #[default]
    Default,
    /// Offline inference: half price, a tokens-per-day quota, may wait for capacity.
    Flex,
}

impl Tier {
    /// Every tier, in the order seedq lists them (default first, as Ark's docs do).
    pub const ALL: [Tier; 2] = [Tier::Default, Tier::Flex];

    /// Ark's wire value (docs/ark-api.md §2): also the store's column value and the metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Tier::Default => "default",
            Tier::Flex => "flex",
        }
    }

    /// True for [`Tier::Flex`].
    pub const fn is_flex(self) -> bool {
        matches!(self, Tier::Flex)
    }

    /// `Flex` when `flex`, else `Default`: for the many places that hold a `flex: bool`.
    pub const fn from_flex(flex: bool) -> Tier {
        if flex { Tier::Flex } else { Tier::Default }
    }
}

impl fmt::Display for Tier {
    /// `pad`, not `write_str`: tables print tiers in aligned columns (`{:<7}`), which must
    /// look exactly as they did when the tier was a string.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A string that is not one of Ark's tiers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("service_tier {value:?} is not a tier (allowed: default, flex)")]
pub struct UnknownTier {
    pub value: String,
}

impl FromStr for Tier {
    type Err = UnknownTier;

    /// Exact, case-sensitive match: Ark's own validation refuses anything but the two lowercase
    /// values (docs/ark-api.md §12), so seedq does not widen it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "default" => Ok(Tier::Default),
            "flex" => Ok(Tier::Flex),
            other => Err(UnknownTier {
                value: other.to_string(),
            }),
        }
    }
}

impl Serialize for Tier {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Tier {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Borrowing would fail on JSON strings with escapes; a tier is short, so own it.
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_strings_round_trip() {
        for t in Tier::ALL {
            assert_eq!(t.as_str().parse::<Tier>(), Ok(t));
            assert_eq!(t.to_string(), t.as_str());
        }
        assert_eq!(Tier::Default.as_str(), "default");
        assert_eq!(Tier::Flex.as_str(), "flex");
        assert_eq!(Tier::default(), Tier::Default);
        assert!(Tier::Flex.is_flex() && !Tier::Default.is_flex());
        assert_eq!(Tier::from_flex(true), Tier::Flex);
        assert_eq!(Tier::from_flex(false), Tier::Default);
        assert!(Tier::Default < Tier::Flex);
        // Widths and alignment behave as they do for the string.
        assert_eq!(format!("[{:<7}]", Tier::Flex), format!("[{:<7}]", "flex"));
        assert_eq!(format!("[{:>9}]", Tier::Default), "[  default]");
    }

    #[test]
    fn unknown_values_are_refused_by_name() {
        for bad in ["", "Flex", "DEFAULT", " flex", "scale", "priority"] {
            let e = bad.parse::<Tier>().expect_err(bad);
            assert_eq!(e.value, bad);
            let msg = e.to_string();
            assert!(msg.contains(&format!("{bad:?}")), "{msg}");
            assert!(msg.contains("default, flex"), "{msg}");
        }
    }

    #[test]
    fn serde_uses_the_wire_string() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Row {
            tier: Tier,
            opt: Option<Tier>,
        }
        let row = Row {
            tier: Tier::Flex,
            opt: Some(Tier::Default),
        };
        let json = serde_json::to_string(&row).expect("serialize");
        assert_eq!(json, r#"{"tier":"flex","opt":"default"}"#);
        assert_eq!(serde_json::from_str::<Row>(&json).expect("parse"), row);
        let none: Row = serde_json::from_str(r#"{"tier":"default","opt":null}"#).expect("parse");
        assert_eq!(none.opt, None);
        let e = serde_json::from_str::<Row>(r#"{"tier":"turbo","opt":null}"#).expect_err("turbo");
        assert!(e.to_string().contains("\"turbo\""), "{e}");
        // Escaped JSON strings decode to the same value.
        let esc: Row = serde_json::from_str(r#"{"tier":"fl\u0065x","opt":null}"#).expect("parse");
        assert_eq!(esc.tier, Tier::Flex);
    }
}
