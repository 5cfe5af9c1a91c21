//! gzip for `/health`, compressed when the report is rendered rather than when it is served;
//! and for `/metrics`, whose every scrape is encoded anew, compressed as it is served.
//!
//! At 10,000 models the report is megabytes, and moving them through the socket is most of
//! what a request costs. Compressing it takes milliseconds, too much for each request and, at
//! every refresh, too much to pay for clients that never ask: so the report is compressed at
//! each refresh only while clients that accept gzip keep asking for it ([`GzipDemand`]). The
//! first such request after a quiet spell gets the plain report, as HTTP allows.

use std::{
    io::Write,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{body::Bytes, http::HeaderMap, http::header::ACCEPT_ENCODING};
use flate2::{Compression, write::GzEncoder};

/// How long after the last request that accepted gzip the report is still compressed.
pub const GZIP_DEMAND_LASTS: Duration = Duration::from_secs(60);

/// When a client last asked for a report it could take gzipped: written by the HTTP handlers,
/// read at each refresh.
#[derive(Clone, Debug)]
pub struct GzipDemand {
    since: Instant,
    /// Milliseconds from `since` to the last request that accepted gzip, plus one (0: never).
    last_asked_ms: Arc<AtomicU64>,
}

impl GzipDemand {
    pub fn new() -> Self {
        Self { since: Instant::now(), last_asked_ms: Arc::new(AtomicU64::new(0)) }
    }

    pub fn note(&self, now: Instant) {
        self.last_asked_ms.fetch_max(self.millis(now), Ordering::Relaxed);
    }

    /// Whether a client asked within [`GZIP_DEMAND_LASTS`] of `now`.
    pub fn wanted(&self, now: Instant) -> bool {
        match self.last_asked_ms.load(Ordering::Relaxed) {
            0 => false,
            asked => self.millis(now).saturating_sub(asked) <= GZIP_DEMAND_LASTS.as_millis() as u64,
        }
    }

    /// Milliseconds from `since` to `now`, plus one: 0 stays "never".
    fn millis(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.since).as_millis() as u64 + 1
    }
}

/// Whether a request's `Accept-Encoding` takes gzip (RFC 9110, 12.5.3): `gzip`, `x-gzip` or
/// `*`, with a weight other than 0.
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let weight = parts
                .filter_map(|parameter| parameter.trim().strip_prefix("q="))
                .find_map(|weight| weight.trim().parse::<f64>().ok())
                .unwrap_or(1.0);
            ["gzip", "x-gzip", "*"].iter().any(|accepted| name.eq_ignore_ascii_case(accepted)) && weight > 0.0
        })
}

/// `body` gzipped, at the fastest level: a report of repeated field names shrinks some 20-fold
/// even so.
pub fn gzip(body: &[u8]) -> Bytes {
    let mut encoder = GzEncoder::new(Vec::with_capacity(body.len() / 8), Compression::fast());
    encoder.write_all(body).expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail").into()
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use axum::http::HeaderValue;
    use flate2::read::GzDecoder;

    use super::*;

    fn accepts(value: &str) -> bool {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_str(value).expect("header"));
        accepts_gzip(&headers)
    }

    #[test]
    fn gzip_is_taken_when_named_or_matched_by_a_star_unless_its_weight_is_zero() {
        assert!(accepts("gzip"));
        assert!(accepts("deflate, GZIP;q=0.5"));
        assert!(accepts("x-gzip"));
        assert!(accepts("*"));
        assert!(accepts("br;q=1.0, gzip ; q=0.001"));
        assert!(!accepts("identity"));
        assert!(!accepts("gzip;q=0"));
        assert!(!accepts("gzip;q=0.000, deflate"));
        assert!(!accepts("gzipped"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn demand_lasts_a_minute_after_the_last_request_that_asked() {
        let demand = GzipDemand::new();
        let start = Instant::now();
        assert!(!demand.wanted(start));
        demand.note(start);
        assert!(demand.wanted(start));
        assert!(demand.wanted(start + GZIP_DEMAND_LASTS));
        assert!(!demand.wanted(start + GZIP_DEMAND_LASTS + Duration::from_secs(1)));
        // An older note does not move it back.
        demand.note(start + Duration::from_secs(30));
        demand.note(start);
        assert!(demand.wanted(start + GZIP_DEMAND_LASTS + Duration::from_secs(1)));
    }

    #[test]
    fn the_gzipped_body_is_the_body() {
        let body = br#"{"models":[{"registry_key":"a"},{"registry_key":"b"}]}"#.repeat(100);
        let mut unzipped = Vec::new();
        GzDecoder::new(&gzip(&body)[..]).read_to_end(&mut unzipped).expect("gzip");
        assert_eq!(unzipped, body);
    }
}
