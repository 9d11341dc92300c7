//! How device work is timed, and how long a wait may last.
//!
//! Timing follows the usual kernel-benchmark rules (as `triton.testing.do_bench`): before each
//! run the L2 cache is flushed by writing a buffer several times its size, each run sits between
//! its own pair of CUDA events, and the figure is the median over the runs, with the 10th and
//! 90th percentiles as the spread. A decode step reads a cache that the other layers have long
//! evicted from L2, so a cold L2 is the honest state; repeated runs over one small buffer would
//! time the cache instead: at context 1k and batch up to 16 the whole latent cache (1–19 MB) fits
//! in an H100's 50 MB L2.

use std::time::Duration;

/// The timings of repeated runs of one piece of device work.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    /// The median run, ms.
    pub median_ms: f64,
    /// The 10th percentile run, ms.
    pub p10_ms: f64,
    /// The 90th percentile run, ms.
    pub p90_ms: f64,
    /// How many runs were timed.
    pub reps: usize,
}

impl Timing {
    /// The median and the 10th/90th percentiles (nearest rank) of `samples` (ms each), or None
    /// when there are none or one is not finite.
    pub fn from_samples(mut samples: Vec<f64>) -> Option<Self> {
        if samples.is_empty() || samples.iter().any(|x| !x.is_finite()) {
            return None;
        }
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        // Nearest rank: the smallest sample with at least q·n samples at or below it.
        let rank = |q: f64| samples[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
        let median = if n % 2 == 1 {
            samples[n / 2]
        } else {
            0.5 * (samples[n / 2 - 1] + samples[n / 2])
        };
        Some(Self {
            median_ms: median,
            p10_ms: rank(0.1),
            p90_ms: rank(0.9),
            reps: n,
        })
    }

    /// The spread (p90 − p10) relative to the median: differences between two kernels smaller than
    /// this are noise.
    pub fn spread(&self) -> f64 {
        (self.p90_ms - self.p10_ms) / self.median_ms
    }

    /// A timing of one wall-clock measurement (the emulator's).
    pub fn single(ms: f64) -> Self {
        Self {
            median_ms: ms,
            p10_ms: ms,
            p90_ms: ms,
            reps: 1,
        }
    }
}

/// Bytes written before each timed run to evict the L2 cache: four times its size, and at least
/// 256 MiB (what `do_bench` writes).
pub fn flush_bytes(l2_bytes: usize) -> usize {
    (4 * l2_bytes).max(256 << 20)
}

/// How long the host waits for the GPU's work before it calls the kernels hung:
/// `GQLA_SYNC_TIMEOUT_S` seconds, 300 unless set (a sanitizer slows kernels a hundredfold, and
/// the largest benchmark points run about a second per timing).
pub fn sync_timeout() -> Duration {
    sync_timeout_from(std::env::var("GQLA_SYNC_TIMEOUT_S").ok().as_deref())
}

/// [`sync_timeout`] for a given setting: positive seconds that a `Duration` holds, else the
/// default.
fn sync_timeout_from(setting: Option<&str>) -> Duration {
    setting
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .unwrap_or(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentiles() {
        let t = Timing::from_samples((1..=10).rev().map(f64::from).collect()).unwrap();
        assert_eq!((t.median_ms, t.p10_ms, t.p90_ms, t.reps), (5.5, 1.0, 9.0, 10));
        let t = Timing::from_samples(vec![3.0, 1.0, 2.0]).unwrap();
        assert_eq!((t.median_ms, t.p10_ms, t.p90_ms), (2.0, 1.0, 3.0));
        assert!((t.spread() - 1.0).abs() < 1e-12);
        let one = Timing::from_samples(vec![0.25]).unwrap();
        assert_eq!(one, Timing::single(0.25));
    }

    /// No samples, or a non-finite one, is no timing (never a NaN median in a table).
    #[test]
    fn no_timing_from_bad_samples() {
        assert_eq!(Timing::from_samples(vec![]), None);
        assert_eq!(Timing::from_samples(vec![1.0, f64::NAN]), None);
        assert_eq!(Timing::from_samples(vec![f64::INFINITY]), None);
    }

    /// An outlier moves the mean, not the median.
    #[test]
    fn median_resists_an_outlier() {
        let mut v = vec![1.0; 20];
        v[7] = 50.0;
        let t = Timing::from_samples(v).unwrap();
        assert_eq!(t.median_ms, 1.0);
        assert_eq!(t.p90_ms, 1.0);
    }

    #[test]
    fn sync_timeout_settings() {
        assert_eq!(sync_timeout_from(None), Duration::from_secs(300));
        assert_eq!(sync_timeout_from(Some(" 2.5 ")), Duration::from_millis(2500));
        for bad in ["0", "-3", "inf", "NaN", "1e300", "soon", ""] {
            assert_eq!(sync_timeout_from(Some(bad)), Duration::from_secs(300), "{bad}");
        }
    }

    #[test]
    fn flush_covers_the_l2() {
        assert_eq!(flush_bytes(50 << 20), 256 << 20);
        assert_eq!(flush_bytes(100 << 20), 400 << 20);
        assert!(flush_bytes(0) >= 256 << 20);
    }
}
