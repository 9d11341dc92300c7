//! Memory budgets. A command adds up what it will allocate, from the sizes its inputs declare and
//! with checked arithmetic, before it allocates anything, and refuses (exit 2) what does not fit,
//! naming the amount and the input that drives it. The limit defaults to the smallest of what
//! the system reports available (`MemAvailable`), the address space left under `RLIMIT_AS`
//! (`ulimit -v`) and the memory left under the process's cgroup limits (`memory.max`, a
//! container's); `--max-memory` overrides it.

use gqla_reference::config::LatentDims;
use gqla_reference::error::{Error, Result};

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

/// The most memory a command may plan to use, and where that limit comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    limit: u64,
    source: String,
}

impl Budget {
    /// `max_memory` bytes, or the tightest of the system's limits ([`MemoryLimit::detect`]).
    pub fn new(max_memory: Option<u64>) -> Self {
        match max_memory {
            Some(limit) => Budget {
                limit,
                source: "the explicit limit".into(),
            },
            None => match MemoryLimit::detect().into_iter().min_by_key(|l| l.bytes) {
                Some(l) => Budget {
                    limit: l.bytes,
                    source: format!("{} (an explicit limit raises or lowers it)", l.what),
                },
                None => Budget {
                    limit: u64::MAX,
                    source: "no known limit".into(),
                },
            },
        }
    }

    /// The same budget, its messages naming the caller's way to set the limit (a CLI flag).
    pub fn overridden_by(mut self, how: &str) -> Self {
        self.source = match self.source.strip_suffix(" (an explicit limit raises or lowers it)") {
            Some(detected) => format!("{detected} (raise or lower it with {how})"),
            None if self.source == "the explicit limit" => how.to_string(),
            None => self.source,
        };
        self
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Where the limit comes from (`--max-memory`, `MemAvailable`, `RLIMIT_AS`, a cgroup).
    pub fn source(&self) -> &str {
        &self.source
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
        Err(Error::Budget(format!(
            "this would need {} in all, over the {} limit of {}; the largest part is {} for {}",
            amount(total),
            human(self.limit as u128),
            self.source,
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

/// One limit on what this process can still allocate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryLimit {
    /// Bytes that can still be allocated under it.
    pub bytes: u64,
    /// What it is, for messages: "the memory available (MemAvailable)", ...
    pub what: String,
}

impl MemoryLimit {
    /// Every limit this process runs under that can be read: `MemAvailable`, the address space
    /// left under `RLIMIT_AS` (its limit less the process's current `VmSize`), and for each
    /// cgroup (v2, the process's and its ancestors'; or v1) with a `memory.max` its limit less
    /// its current use.
    pub fn detect() -> Vec<MemoryLimit> {
        let mut limits = Vec::new();
        if let Some(bytes) = meminfo_kib("/proc/meminfo", "MemAvailable:").and_then(|k| k.checked_mul(1024)) {
            limits.push(MemoryLimit {
                bytes,
                what: "the memory available (MemAvailable)".into(),
            });
        }
        if let Some(l) = address_space_left() {
            limits.push(l);
        }
        limits.extend(cgroup_limits());
        limits
    }
}

/// A `Key:  N kB` line of a /proc file, in KiB.
fn meminfo_kib(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `RLIMIT_AS` less the address space already mapped (None: unlimited or unreadable).
fn address_space_left() -> Option<MemoryLimit> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut r) } != 0 || r.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    let limit: u64 = r.rlim_cur;
    let used = meminfo_kib("/proc/self/status", "VmSize:").map_or(0, |k| k.saturating_mul(1024));
    Some(MemoryLimit {
        bytes: limit.saturating_sub(used),
        what: format!(
            "the address space left under RLIMIT_AS (ulimit -v: {} limit, {} mapped)",
            human(limit as u128),
            human(used as u128)
        ),
    })
}

/// The memory left under each cgroup limit of this process.
fn cgroup_limits() -> Vec<MemoryLimit> {
    let read_u64 = |p: &std::path::Path| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    let Ok(membership) = std::fs::read_to_string("/proc/self/cgroup") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in membership.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        // v2 (one unified hierarchy, no controller list): the cgroup and every ancestor may limit.
        // v1: the memory controller's own hierarchy.
        let (root, max_file, current_file) = if controllers.is_empty() {
            ("/sys/fs/cgroup", "memory.max", "memory.current")
        } else if controllers.split(',').any(|c| c == "memory") {
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes")
        } else {
            continue;
        };
        let mut dir = std::path::PathBuf::from(root).join(path.trim_start_matches('/'));
        loop {
            if let Some(max) = read_u64(&dir.join(max_file)) {
                // v1 writes "no limit" as a page-rounded i64::MAX.
                if max < (1u64 << 62) {
                    let current = read_u64(&dir.join(current_file)).unwrap_or(0);
                    out.push(MemoryLimit {
                        bytes: max.saturating_sub(current),
                        what: format!(
                            "the memory left in cgroup {} ({max_file} {}, {} in use)",
                            dir.display(),
                            human(max as u128),
                            human(current as u128)
                        ),
                    });
                }
            }
            if dir.as_os_str().len() <= root.len() || !dir.pop() {
                break;
            }
        }
    }
    out
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
        let b = Budget::new(Some(1 << 30)).overridden_by("--max-memory");
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
