//! The agent's run: load the manifests and plans, attach to the pools, then drain the kernel's
//! events, aggregate, publish and serve them until SIGINT or SIGTERM.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use pool_obs_common::{counters::Counter, maps};
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
    time::{MissedTickBehavior, interval},
};
use tracing::{info, warn};

use crate::{
    anomaly::Anomaly,
    attach::{self, cpu::CpuClocks, plan, sampling::Sampler, symbols::SymbolTable},
    cli::Options,
    clock::{WallClock, monotonic_ns},
    error::{Class, Refusal},
    export::{
        compression::GzipDemand,
        health::{self, ProbeTotals, ProbeWindow, Thresholds},
        http::{self, RenderedHealth},
    },
    follow::{Executable, Fleet, Selector, targets},
    kernel::{
        self,
        facilities::{Detected, Serves},
    },
    manifest, privileges, profile,
    publish::Metrics,
    ring::{EventRing, KernelCounters, KernelLogs},
    target::Target,
};

/// How often the window statistics, the health report, the lost-event count and the target's
/// liveness are refreshed.
const REFRESH_INTERVAL: Duration = Duration::from_millis(200);

pub async fn run(options: Options) -> Result<()> {
    // First, so that a signal arriving while we attach still detaches cleanly and exits 0.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let targets = match &options.targets {
        Some(file) => targets::from_file(file)?,
        None => targets::from_flags(&options.pid, &options.exe, &options.manifest)?,
    };
    // A manifest's mistakes are said before anything else is asked of the machine.
    let manifests = targets.iter().map(|(_, path)| manifest::load(path)).collect::<Result<Vec<_>, _>>()?;
    privileges::require_capabilities()?;
    privileges::require_uprobes()?;
    let debug_file = options.debug.debug_file.as_deref();
    if targets.len() > 1 && debug_file.is_some() {
        return Err(Refusal::new(
            Class::Other,
            "--debug-file names one binary's debug info: with several pools, put each beside its binary",
        )
        .into());
    }
    // Each pool's plan, made from its binary: the process's, or the file its processes run.
    let mut plans = Vec::new();
    let mut pids = Vec::new();
    let mut executables = Vec::new();
    for ((target, _), manifest) in targets.iter().zip(&manifests) {
        match target {
            targets::Target::Pid(pid) => {
                let target = Target::open(*pid)?;
                let exe = std::path::Path::new(&target.exe);
                let symbols = SymbolTable::open(&target.exe_link, exe, &target.shown(), debug_file)?;
                plans.push(plan_for(manifest, &symbols)?);
                pids.push(target);
            }
            targets::Target::Exe(exe) => {
                let executable = tokio::select! {
                    executable = locate(exe) => executable?,
                    _ = interrupt.recv() => return Ok(()),
                    _ = terminate.recv() => return Ok(()),
                };
                let file = &executable.file;
                let symbols = SymbolTable::open(file, file, &executable.shown, debug_file)?;
                plans.push(plan_for(manifest, &symbols)?);
                executables.push(executable);
            }
        }
    }
    let plan = plan::Plan::merge(plans)?;
    let selector = if executables.is_empty() {
        Selector::Pids(pids.iter().map(|target| target.pid).collect())
    } else {
        Selector::Exe(executables)
    };
    http::raise_open_file_limit();
    let listener = TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}: choose another --listen address", options.listen))?;

    let facilities = kernel::require_facilities()?;
    let mut features_off: Vec<String> = Vec::new();
    let mut ebpf = attach::load(&plan, &options.load_settings())?;
    let cpu = optional(&facilities, Serves::CpuTime, &mut features_off, || CpuClocks::start(&mut ebpf));
    let mut sampler = optional(&facilities, Serves::Profiles, &mut features_off, || {
        Sampler::attach(&mut ebpf, profile::SAMPLE_HZ)
    });
    features_off.extend(facilities.missing.iter().map(|facility| facility.missing_line()));
    let metrics = Arc::new(Metrics::with_buckets(options.bucketed()));
    let mut fleet = Fleet::new(
        selector,
        cpu,
        metrics.clone(),
        options.aggregation_settings(),
        options.max_processes.max(1),
        Duration::from_secs(options.keep_exited_secs),
    );
    for (index, target) in pids.into_iter().enumerate() {
        fleet.follow(&mut ebpf, &plan, target, index)?;
    }
    fleet.discover(&mut ebpf, &plan);
    let functions = plan.probes.iter().map(|probe| probe.function.clone()).collect();
    let mut kernel_logs = options.debug_probes.then(|| KernelLogs::new(&mut ebpf, functions)).transpose()?;
    let mut ring = EventRing::new(ebpf.take_map(maps::EVENTS))?;
    let kernel_counters = KernelCounters::new(&mut ebpf)?;
    let wall = WallClock::now();
    // With --pid, nothing more is attached: every capability goes. With --exe, processes that
    // start later are attached as they come.
    if matches!(fleet.selector, Selector::Pids(_)) {
        privileges::drop_all_capabilities().context("giving up capabilities after attaching")?;
    }

    let mut observer = Observer {
        thresholds: options.health_thresholds(),
        observing_since: SystemTime::now(),
        kernel_counters,
        kernel_counted: [0; Counter::COUNT as usize],
        probes: ProbeWindow::new(Duration::from_secs(options.window_secs.max(1)), plan.probe_names()),
        read_failures_by_probe: vec![0; plan.probes.len()],
        features_off,
    };
    let gzip_demand = GzipDemand::new();
    let (health_sender, health) = watch::channel(observer.refresh(&mut fleet, &metrics));
    let (query_sender, mut queries) = mpsc::channel::<http::RequestQuery>(64);
    let (stop_sender, mut stop) = watch::channel(false);
    let (profile_sender, mut profile_orders) = mpsc::channel::<http::ProfileOrder>(4);
    let endpoints = http::Endpoints {
        metrics: metrics.clone(),
        health,
        gzip_demand: gzip_demand.clone(),
        requests: query_sender,
        profiles: profile_sender,
    };
    // The profile being taken: when it ends, and who waits for it.
    let mut profiling: Option<(Instant, http::ProfileReply)> = None;
    let server = tokio::spawn(http::serve(listener, endpoints, options.http_limits(), async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    }));
    info!(
        following = %fleet.selector.shown(),
        processes = fleet.processes.len(),
        probes = plan.attachments.len(),
        capabilities = privileges::held_capabilities(),
        "attached; serving http://{}/metrics, /health and /requests/{{id}}",
        options.listen
    );

    let mut drain_tick = interval(Duration::from_millis(options.drain_interval_ms.max(1)));
    drain_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut refresh_tick = interval(REFRESH_INTERVAL);
    let mut memory_tick = interval(Duration::from_millis(options.memory_interval_ms.max(10)));
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            woken = ring.woken() => {
                woken?;
                ring.drain(|record| fleet.apply(record));
            }
            _ = drain_tick.tick() => {
                ring.drain(|record| fleet.apply(record));
            }
            _ = refresh_tick.tick() => {
                ring.drain(|record| fleet.apply(record));
                // What an exited process wrote is counted before it is marked gone.
                fleet.check_exits(&mut ebpf, Instant::now());
                fleet.discover(&mut ebpf, &plan);
                fleet.sample_cpu();
                let health = observer.refresh(&mut fleet, &metrics).compressed_for(&gzip_demand);
                let _ = health_sender.send(health);
                if options.exit_with_target && !fleet.processes.is_empty() && fleet.all_exited() {
                    warn!("the target exited: detaching and exiting (--exit-with-target)");
                    break;
                }
            }
            _ = memory_tick.tick() => fleet.sample_memory(),
            forwarded = forward_kernel_logs(&mut kernel_logs) => forwarded?,
            Some(order) = profile_orders.recv() => {
                let ends = Instant::now() + Duration::from_secs(order.selection.seconds);
                match fleet.start_profile(sampler.as_mut(), order.selection) {
                    Ok(()) => profiling = Some((ends, order.reply)),
                    Err(why) => _ = order.reply.send(Err(why)),
                }
            }
            _ = until(profiling.as_ref().map(|(ends, _)| *ends)) => {
                fleet.stop_sampling(sampler.as_mut());
                ring.drain(|record| fleet.apply(record));
                if let (Some((_, reply)), Some(collector)) = (profiling.take(), fleet.profile.take()) {
                    // Symbolising reads the binaries' debug info: off the event loop.
                    tokio::task::spawn_blocking(move || _ = reply.send(Ok(collector.finish())));
                }
            }
            Some(query) = queries.recv() => {
                ring.drain(|record| fleet.apply(record));
                let timeline = fleet
                    .processes
                    .values()
                    .find_map(|process| process.aggregator.timeline(query.request_id, &wall));
                let _ = query.reply.send(timeline);
            }
        }
    }

    drop(kernel_logs);
    drop(ebpf);
    // The probes are gone, but what they wrote before is still in the ring: count it too.
    let drained = ring.drain(|record| fleet.apply(record));
    drop(ring);
    for process in fleet.processes.values_mut() {
        process.aggregator.flush_request_logs();
    }
    info!(final_events = drained, "probes detached");
    let _ = stop_sender.send(true);
    server.await.context("serving HTTP")?;
    Ok(())
}

/// The plan of one manifest against one binary: source paths are compiled against its debug
/// info, and register values checked with it.
/// Starts what `serves` needs where the kernel has it; where starting fails, the feature is off,
/// said once in the log and in `/health`.
fn optional<T>(
    facilities: &Detected,
    serves: Serves,
    features_off: &mut Vec<String>,
    start: impl FnOnce() -> Result<T>,
) -> Option<T> {
    if !facilities.has(serves) {
        return None;
    }
    match start() {
        Ok(started) => Some(started),
        Err(error) => {
            warn!("{} off: {error:#}", serves.feature());
            features_off.push(format!("{}: {error:#}", serves.feature()));
            None
        }
    }
}

fn plan_for(manifest: &manifest::Manifest, symbols: &SymbolTable) -> Result<plan::Plan> {
    let source = symbols.read_debug_info().map_err(|error| Refusal::new(Class::Other, error))?;
    plan::plan(manifest, symbols, source.as_ref())
}

/// The executable of `--exe`. By name, as an agent per node starts before the pool may, it
/// waits for a process of that name to run.
async fn locate(exe: &std::path::Path) -> Result<Executable> {
    let mut said = false;
    while Executable::is_name(exe) && !Executable::runs_somewhere(exe) {
        if !said {
            info!(exe = %exe.display(), "waiting for a process of the executable to run");
            said = true;
        }
        tokio::time::sleep(REFRESH_INTERVAL).await;
    }
    Ok(Executable::locate(exe)?)
}

/// Resolves at `instant`, or never when there is none.
async fn until(instant: Option<Instant>) {
    match instant {
        Some(instant) => tokio::time::sleep_until(instant.into()).await,
        None => std::future::pending().await,
    }
}

/// Forwards the kernel's log records, if it was asked for them; else never resolves.
async fn forward_kernel_logs(logs: &mut Option<KernelLogs>) -> std::io::Result<()> {
    match logs {
        Some(logs) => logs.forward().await,
        None => std::future::pending().await,
    }
}

/// What is refreshed on a timer rather than per event.
struct Observer {
    thresholds: Thresholds,
    observing_since: SystemTime,
    kernel_counters: KernelCounters,
    /// How much of each kernel counter the metrics already hold, by counter index.
    kernel_counted: [u64; Counter::COUNT as usize],
    probes: ProbeWindow,
    /// Failed reads by probe, as last read: read again only when the total grows.
    read_failures_by_probe: Vec<u64>,
    /// What this kernel keeps the agent from doing, as said at start.
    features_off: Vec<String>,
}

impl Observer {
    fn refresh(&mut self, fleet: &mut Fleet, metrics: &Metrics) -> RenderedHealth {
        let failed_before = self.kernel_counted[Counter::ReadFailures.index() as usize];
        self.catch_up_kernel_counters(metrics);
        // One map lookup per probe: only when some read failed since the last refresh.
        if self.kernel_counted[Counter::ReadFailures.index() as usize] != failed_before {
            self.read_failures_by_probe =
                self.kernel_counters.read_failures_by_probe(self.read_failures_by_probe.len());
        }
        let now = monotonic_ns();
        let probes = self.read_failures_by_probe.len();
        let (mut events, mut contradictions) = (vec![0; probes], vec![0; probes]);
        for process in fleet.processes.values_mut() {
            process.aggregator.refresh(now);
            let counts = process.aggregator.by_probe();
            for (total, count) in events.iter_mut().zip(&counts.events) {
                *total += count;
            }
            for (total, count) in contradictions.iter_mut().zip(&counts.contradictions) {
                *total += count;
            }
        }
        let anomalies = metrics.anomalies.counted();
        let totals = ProbeTotals {
            events,
            contradictions,
            read_failures: self.read_failures_by_probe.clone(),
            anomalies: anomalies
                .iter()
                .filter(|(kind, _)| kind.doubts_the_values())
                .map(|(_, count)| count)
                .sum(),
        };
        let probe_reasons = self.probes.observe(Instant::now(), totals);
        let processes = fleet
            .processes
            .values()
            .map(|process| health::ProcessInputs {
                target: &process.target,
                up: process.exited.is_none(),
                memory: process.memory.last(),
                models: process.aggregator.views(),
            })
            .collect();
        health::render(&health::Inputs {
            following: &fleet.selector.shown(),
            processes,
            thresholds: &self.thresholds,
            observing_since: self.observing_since,
            events_lost: self.kernel_counted[Counter::EventsLost.index() as usize],
            anomalies,
            probe_reasons: &probe_reasons,
            features_off: &self.features_off,
        })
    }

    /// Adds what the kernel programs counted since the last refresh to the metrics.
    fn catch_up_kernel_counters(&mut self, metrics: &Metrics) {
        for counter in Counter::ALL {
            let counted = &mut self.kernel_counted[counter.index() as usize];
            let grown = self.kernel_counters.read(counter).saturating_sub(*counted);
            *counted += grown;
            match counter {
                Counter::EventsLost => {
                    metrics.events_lost.inc_by(grown);
                    if grown > 0 {
                        warn!(lost = grown, "ring buffer full: events lost");
                    }
                }
                Counter::ReadFailures => _ = metrics.read_failures.inc_by(grown),
                Counter::ReturnsWithoutEntry => metrics.anomalies.add(Anomaly::ReturnWithoutEntry, grown),
                Counter::UnknownProbes => metrics.anomalies.add(Anomaly::UnknownProbe, grown),
                Counter::CallsUnwound => metrics.anomalies.add(Anomaly::Unwound, grown),
                Counter::CallsTooDeep => metrics.anomalies.add(Anomaly::CallTooDeep, grown),
                Counter::PollsMerged => metrics.anomalies.add(Anomaly::PollsMerged, grown),
                Counter::SamplesDropped => _ = metrics.samples_dropped.inc_by(grown),
                Counter::HandoffsLost => metrics.anomalies.add(Anomaly::HandoffLost, grown),
            }
        }
    }
}
