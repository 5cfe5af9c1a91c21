//! The kernel stamps events with `CLOCK_MONOTONIC` nanoseconds; people read wall-clock time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we pass; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Converts event timestamps to wall-clock time, from one reading of both clocks.
#[derive(Clone, Copy)]
pub struct WallClock {
    wall_at_zero: SystemTime,
}

impl WallClock {
    pub fn now() -> Self {
        let monotonic = monotonic_ns();
        let wall = SystemTime::now();
        Self { wall_at_zero: wall - Duration::from_nanos(monotonic) }
    }

    pub fn at(&self, monotonic_ns: u64) -> SystemTime {
        self.wall_at_zero + Duration::from_nanos(monotonic_ns)
    }
}

/// Seconds since the epoch as an RFC 3339 UTC timestamp with milliseconds.
pub fn rfc3339(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (days, day_seconds) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        day_seconds / 3600,
        day_seconds / 60 % 60,
        day_seconds % 60,
        since_epoch.subsec_millis()
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let at = |millis: u64| rfc3339(UNIX_EPOCH + Duration::from_millis(millis));
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(1_795_744_146_123), "2026-11-27T01:49:06.123Z");
        assert_eq!(at(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
