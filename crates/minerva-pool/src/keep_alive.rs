//! How long a model stays loaded after its last request, as Ollama's `keep_alive` says it:
//! a duration (`"5m"`, `"30s"`, `"1h30m"`, or a number of seconds), `0` to unload as soon
//! as the request is done, or a negative value to keep the model until it is unloaded.

use std::fmt;
use std::time::Duration;

/// A model's keep-alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    /// Unload this long after the last request ends (`0` = at once).
    For(Duration),
    /// Never unload for being idle.
    Forever,
}

/// A keep-alive that could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("invalid keep_alive {0:?}: use a duration such as \"5m\", \"30s\" or \"1h\", seconds, 0 or -1")]
pub struct InvalidKeepAlive(pub String);

impl KeepAlive {
    /// Ollama's default: five minutes.
    pub const DEFAULT: Self = Self::For(Duration::from_secs(300));

    /// From a number of seconds; negative means forever.
    pub fn from_seconds(seconds: f64) -> Result<Self, InvalidKeepAlive> {
        if seconds.is_nan() {
            return Err(InvalidKeepAlive(seconds.to_string()));
        }
        if seconds < 0.0 {
            return Ok(Self::Forever);
        }
        Duration::try_from_secs_f64(seconds)
            .map(Self::For)
            .map_err(|_| InvalidKeepAlive(seconds.to_string()))
    }

    /// Parses `"5m"`, `"30s"`, `"1h30m"`, `"250ms"`, `"300"`, `"0"`, `"-1"`, `"-1m"`.
    pub fn parse(text: &str) -> Result<Self, InvalidKeepAlive> {
        let invalid = || InvalidKeepAlive(text.to_owned());
        let trimmed = text.trim();
        if let Ok(seconds) = trimmed.parse::<f64>() {
            return Self::from_seconds(seconds);
        }
        if let Some(magnitude) = trimmed.strip_prefix('-') {
            // Any negative duration means "forever", as in Ollama.
            if magnitude.starts_with('-') {
                return Err(invalid());
            }
            return Self::parse(magnitude).map(|_| Self::Forever);
        }
        // Durations with units ("5m", "1h30m", "250ms") as humantime reads them; it refuses
        // a sum that overflows.
        humantime::parse_duration(trimmed).map(Self::For).map_err(|_| invalid())
    }

    /// When a model idle since `idle_since` should be unloaded (`None` = never).
    pub fn deadline(self, idle_since: tokio::time::Instant) -> Option<tokio::time::Instant> {
        match self {
            Self::For(d) => idle_since.checked_add(d),
            Self::Forever => None,
        }
    }
}

impl fmt::Display for KeepAlive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::For(d) => write!(f, "{}s", d.as_secs_f64()),
            Self::Forever => f.write_str("-1"),
        }
    }
}

impl std::str::FromStr for KeepAlive {
    type Err = InvalidKeepAlive;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> serde::Deserialize<'de> for KeepAlive {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(f64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Seconds(s) => Self::from_seconds(s),
            Raw::Text(t) => Self::parse(&t),
        }
        .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ollama_forms() {
        assert_eq!(
            KeepAlive::parse("5m").unwrap(),
            KeepAlive::For(Duration::from_secs(300))
        );
        assert_eq!(
            KeepAlive::parse("1h30m").unwrap(),
            KeepAlive::For(Duration::from_secs(5400))
        );
        assert_eq!(
            KeepAlive::parse("250ms").unwrap(),
            KeepAlive::For(Duration::from_millis(250))
        );
        assert_eq!(KeepAlive::parse("90").unwrap(), KeepAlive::For(Duration::from_secs(90)));
        assert_eq!(KeepAlive::parse("0").unwrap(), KeepAlive::For(Duration::ZERO));
        assert_eq!(KeepAlive::parse("-1").unwrap(), KeepAlive::Forever);
        assert_eq!(KeepAlive::parse("-5m").unwrap(), KeepAlive::Forever);
        let json: KeepAlive = serde_json::from_str("-1").unwrap();
        assert_eq!(json, KeepAlive::Forever);
        let json: KeepAlive = serde_json::from_str("\"10s\"").unwrap();
        assert_eq!(json, KeepAlive::For(Duration::from_secs(10)));
    }

    #[test]
    fn rejects_garbage() {
        // The last one: each part fits a duration, their sum does not.
        for bad in [
            "",
            "m",
            "5x",
            "five",
            "5m3",
            "NaN",
            "--1",
            "10000000000000000000s10000000000000000000s",
        ] {
            assert!(KeepAlive::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
