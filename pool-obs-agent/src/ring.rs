//! Reads the kernel's side: the `EVENTS` ring buffer and the per-CPU `COUNTERS`.

use std::os::fd::AsRawFd;

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf,
    maps::{Map, MapData, PerCpuArray, RingBuf},
};
use aya_log::EbpfLogger;
use pool_obs_common::{counters::Counter, maps};
use tokio::io::{Interest, unix::AsyncFd};

pub struct EventRing {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl EventRing {
    pub fn new(map: Option<Map>) -> Result<Self> {
        let ring = RingBuf::try_from(map.context("the kernel object has no EVENTS map")?)?;
        // SAFETY: the AsyncFd owns the RingBuf, and with it the fd, for as long as it is registered.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(|error| {
            let (ring, error) = error.into_parts();
            anyhow!("watching the ring buffer (fd {}): {error}", ring.as_raw_fd())
        })?;
        Ok(Self { ring })
    }

    /// Resolves when the kernel has woken us because data piled up.
    pub async fn woken(&mut self) -> std::io::Result<()> {
        self.ring.readable_mut().await?.clear_ready();
        Ok(())
    }

    /// Hands every waiting record to `handle`; returns how many there were.
    pub fn drain(&mut self, mut handle: impl FnMut(&[u8])) -> usize {
        let ring = self.ring.get_mut();
        let mut records = 0;
        while let Some(record) = ring.next() {
            handle(&record);
            records += 1;
        }
        records
    }
}

/// The counters the kernel programs keep, summed over CPUs.
pub struct KernelCounters {
    array: PerCpuArray<MapData, u64>,
    read_failures_by_probe: PerCpuArray<MapData, u64>,
}

impl KernelCounters {
    pub fn new(ebpf: &mut Ebpf) -> Result<Self> {
        let mut take = |name: &str| -> Result<PerCpuArray<MapData, u64>> {
            let map = ebpf.take_map(name).with_context(|| format!("the kernel object has no {name} map"))?;
            Ok(PerCpuArray::try_from(map)?)
        };
        Ok(Self { array: take(maps::COUNTERS)?, read_failures_by_probe: take(maps::PROBE_READ_FAILURES)? })
    }

    /// Failed reads of each of the first `probes` probes.
    pub fn read_failures_by_probe(&self, probes: usize) -> Vec<u64> {
        (0..probes as u32)
            .map(|probe| self.read_failures_by_probe.get(&probe, 0).map_or(0, |values| values.iter().sum()))
            .collect()
    }

    pub fn read(&self, counter: Counter) -> u64 {
        self.array.get(&counter.index(), 0).map_or(0, |values| values.iter().sum())
    }
}

/// The kernel programs' own log records (`--debug-probes`), handed to `tracing`.
pub struct KernelLogs {
    logger: AsyncFd<EbpfLogger<NamedProbes>>,
}

impl KernelLogs {
    /// `functions` names each probe, by index.
    pub fn new(ebpf: &mut Ebpf, functions: Vec<String>) -> Result<Self> {
        let logger = EbpfLogger::init_with_logger(ebpf, NamedProbes { functions })
            .context("reading the kernel programs' logs")?;
        // SAFETY: the AsyncFd owns the logger, and with it the fd, for as long as it is registered.
        let logger = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
            .map_err(|error| anyhow!("watching the kernel programs' logs: {}", error.into_parts().1))?;
        Ok(Self { logger })
    }

    /// Waits for records and logs them.
    pub async fn forward(&mut self) -> std::io::Result<()> {
        let mut ready = self.logger.readable_mut().await?;
        ready.get_inner_mut().flush();
        ready.clear_ready();
        Ok(())
    }
}

/// Adds each probe's function to the kernel's records, which name the probe by index only:
/// `probe 2 cannot read …` becomes `probe 2 (kv_pool::Worker::execute) cannot read …`.
pub struct NamedProbes {
    functions: Vec<String>,
}

impl NamedProbes {
    fn name(&self, text: String) -> String {
        let Some((index, rest)) = text.strip_prefix("probe ").and_then(|rest| rest.split_once(' ')) else {
            return text;
        };
        match index.parse::<usize>().ok().and_then(|index| self.functions.get(index)) {
            Some(function) => format!("probe {index} ({function}) {rest}"),
            None => text,
        }
    }
}

impl log::Log for NamedProbes {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        log::logger().enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        let text = self.name(record.args().to_string());
        log::logger().log(
            &log::Record::builder()
                .args(format_args!("{text}"))
                .level(record.level())
                .target(record.target())
                .build(),
        );
    }

    fn flush(&self) {
        log::logger().flush();
    }
}
