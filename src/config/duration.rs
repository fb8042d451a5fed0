//! Duration strings of `gateway.toml`: an integer followed by `ms`, `s`, `m`,
//! `h` or `d` (`"250ms"`, `"30s"`, `"15m"`). A leading `-` is accepted only
//! by [`parse_signed`] (the `token --ttl` option mints expired test tokens).

use std::time::Duration;

/// Parses a non-negative duration such as `"30s"`.
pub fn parse(s: &str) -> Result<Duration, String> {
    let (negative, duration) = parse_signed(s)?;
    if negative {
        return Err(format!(
            "`{s}` is negative; durations here must be positive"
        ));
    }
    Ok(duration)
}

/// Parses a possibly negative duration; returns (is_negative, magnitude).
pub fn parse_signed(s: &str) -> Result<(bool, Duration), String> {
    let bad = || format!("`{s}` is not a duration such as \"250ms\", \"30s\", \"15m\", \"1h\"");
    let trimmed = s.trim();
    let (negative, rest) = match trimmed.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, trimmed),
    };
    let digits_end = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    if digits_end == 0 {
        return Err(bad());
    }
    let value: u64 = rest[..digits_end].parse().map_err(|_| bad())?;
    let millis_per_unit: u64 = match &rest[digits_end..] {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    let millis = value.checked_mul(millis_per_unit).ok_or_else(bad)?;
    Ok((negative, Duration::from_millis(millis)))
}

/// serde adapter for `Option<Duration>` fields written as strings.
pub mod opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| super::parse(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_the_documented_forms() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_signed("-5m"), Ok((true, Duration::from_secs(300))));
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "s",
            "10",
            "10 s",
            "1.5s",
            "-5m",
            "10sec",
            "99999999999999999999d",
            "+1s",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should fail");
        }
    }

    proptest! {
        #[test]
        fn never_panics(s in ".*") {
            let _ = parse_signed(&s);
        }

        #[test]
        fn round_trips_seconds(n in 0u64..1_000_000) {
            prop_assert_eq!(parse(&format!("{n}s")), Ok(Duration::from_secs(n)));
        }
    }
}
