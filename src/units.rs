//! Sizes as people type them (`64G`, `512M`, `4096`) and as they read them.
//!
//! Units are binary: `K` is 1024 bytes, `G` is 2^30. `KiB`/`KB`/`k` spellings
//! are accepted as the same unit.

/// What is wrong with a size argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {input:?}: {why}")]
pub struct SizeError {
    pub what: &'static str,
    pub input: String,
    pub why: String,
}

/// Parses a byte count with an optional binary unit suffix.
pub fn parse_size(what: &'static str, input: &str) -> Result<u64, SizeError> {
    let err = |why: String| SizeError {
        what,
        input: input.to_owned(),
        why,
    };
    let s = input.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return Err(err(
            "expected a number of bytes, optionally followed by K, M, G, T or P".into(),
        ));
    }
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        "P" | "PB" | "PIB" => 50,
        _ => {
            return Err(err(format!(
                "unknown unit {unit:?} (use K, M, G, T or P, or a plain byte count)"
            )))
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| err("the number is too large".into()))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| err("the size is too large".into()))
}

/// Formats bytes for people: `64 GiB`, `1.5 MiB`, `512 B`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    let mut value = bytes as f64;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_size("size", "4096").unwrap(), 4096);
        assert_eq!(parse_size("size", "64G").unwrap(), 64 << 30);
        assert_eq!(parse_size("size", "512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("size", "1T").unwrap(), 1 << 40);
        assert_eq!(parse_size("size", "64k").unwrap(), 64 << 10);
        assert_eq!(parse_size("size", "2GiB").unwrap(), 2 << 30);
    }

    #[test]
    fn refuses_nonsense() {
        for (s, why) in [
            ("", "expected a number"),
            ("G", "expected a number"),
            ("12X", "unknown unit \"X\""),
            ("-1", "expected a number"),
            ("1.5G", "unknown unit \".5G\""),
            ("99999999999999999999", "too large"),
            ("100000P", "too large"),
        ] {
            let e = parse_size("size", s).unwrap_err().to_string();
            assert!(e.contains(why), "{s:?}: {e}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(64 << 30), "64 GiB");
        assert_eq!(format_size(3 << 19), "1.5 MiB");
    }
}
