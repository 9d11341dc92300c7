//! Memory budgets. A command adds up what it will allocate, from the sizes its inputs declare and
//! with checked arithmetic, before it allocates anything, and refuses (exit 2) what does not fit,
//! naming the amount and the input that drives it. The limit defaults to the memory the system
//! reports available (`MemAvailable`); `--max-memory` overrides it.

use crate::config::LatentDims;
use crate::error::{Error, Result};

/// One allocation a command will make: what it is, and its size in bytes (`None`: so large that
/// computing it overflowed).
#[derive(Clone, Debug, PartialEq)]
pub struct Need {
    pub what: String,
    pub bytes: Option<u128>,
}

impl Need {
    /// `count` elements of `elem_bytes` each, `count` a product of `dims` (checked).
    pub fn elements(what: impl Into<String>, dims: &[usize], elem_bytes: usize) -> Self {
        let bytes = dims.iter().try_fold(elem_bytes as u128, |acc, &d| acc.checked_mul(d as u128));
        Need { what: what.into(), bytes }
    }
    /// f64 values, `dims` multiplied.
    pub fn f64s(what: impl Into<String>, dims: &[usize]) -> Self {
        Self::elements(what, dims, 8)
    }
    /// Caches of `dims` holding `tokens` tokens of `elem_bytes` elements on every path: the
    /// latent cache [c; k^R] and the group caches in both RoPE layouts.
    pub fn caches(dims: &LatentDims, tokens: usize, elem_bytes: usize) -> Self {
        let (g, d_c, d_n, d_r, d_v) = (dims.g(), dims.d_c(), dims.d_n(), dims.d_r(), dims.d_v());
        // Ceilings on every dimension (config.rs) keep these sums far from overflow.
        let width = (d_c + d_r) + (g * (d_n + d_v) + d_r) + g * (d_n + d_r + d_v);
        Self::elements(
            format!("caches of {tokens} tokens at G={g}, d_c={d_c}, d_n={d_n}, d_r={d_r}, d_v={d_v}"),
            &[tokens, width],
            elem_bytes,
        )
    }
}

/// The most memory a command may plan to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    limit: u64,
    explicit: bool,
}

impl Budget {
    /// `max_memory` bytes, or what the system reports available.
    pub fn new(max_memory: Option<u64>) -> Self {
        match max_memory {
            Some(limit) => Budget { limit, explicit: true },
            None => Budget {
                limit: available_memory().unwrap_or(u64::MAX),
                explicit: false,
            },
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Refuse `needs` if together they exceed the limit, naming the largest.
    pub fn check(&self, needs: &[Need]) -> Result<()> {
        let total = needs.iter().try_fold(0u128, |acc, n| n.bytes.and_then(|b| acc.checked_add(b)));
        if total.is_some_and(|t| t <= self.limit as u128) {
            return Ok(());
        }
        let largest = needs
            .iter()
            .max_by_key(|n| n.bytes.unwrap_or(u128::MAX))
            .expect("a refused plan has at least one need");
        let amount = |b: Option<u128>| b.map_or("more than 2^128 bytes".to_string(), human);
        let source = if self.explicit {
            "--max-memory"
        } else {
            "the memory available (MemAvailable; raise or lower it with --max-memory)"
        };
        Err(Error::Budget(format!(
            "this would need {} in all, over the {} limit of {source}; the largest part is {} for {}",
            amount(total),
            human(self.limit as u128),
            amount(largest.bytes),
            largest.what
        )))
    }
}

/// Bytes in binary units, three significant digits.
pub fn human(bytes: u128) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.3} {}", UNITS[u])
    }
}

/// `MemAvailable` from /proc/meminfo, in bytes.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Parse a size: bytes, or a number with a K, M, G or T suffix (binary units; `iB` optional).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (num, shift) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 30),
        Some('T' | 't') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 8G, 512M, 1073741824)"))?;
    let bytes = v * (1u64 << shift) as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("`{s}` is not a size between 1 byte and 16 EiB"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_over_the_limit_names_its_largest_part() {
        let b = Budget::new(Some(1 << 30));
        b.check(&[Need::f64s("a", &[1024, 1024])]).unwrap();
        let e = b
            .check(&[
                Need::f64s("small", &[10]),
                Need::f64s("scores [T, T] of 100000 tokens", &[100_000, 100_000]),
            ])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("74.506 GiB") && e.contains("scores") && e.contains("--max-memory"),
            "{e}"
        );
        let e = b
            .check(&[Need::f64s("huge", &[usize::MAX, usize::MAX, 4])])
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than 2^128"), "{e}");
        assert_eq!(parse_size("8G").unwrap(), 8 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        for bad in ["", "G", "-1G", "NaNG", "1e30T", "0"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
