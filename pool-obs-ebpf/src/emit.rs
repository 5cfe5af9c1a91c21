//! Fills each event's wire struct (defined in `pool_obs_common::event`) and writes it into the
//! `EVENTS` ring buffer.

use aya_ebpf::EbpfContext;
use pool_obs_common::{
    counters::Counter,
    event::{
        CallEnding, EventKind, FutureDropped, FuturePolled, HandoffRan, Header, MODEL_ABSENT, ModelKey,
        RequestEnded, RequestStarted, RequestSubmitted, WorkerCrashed, WorkerEvicted, WorkerSpawned,
    },
    probe::ProbeSpec,
};

use crate::{
    EVENTS,
    calls::OpenCall,
    count, cpu, current_ids, events_lost_so_far, lost_event,
    read::{self, Reader},
    registers::Registers,
    wakeup_flags,
};

/// One probe hit: which spec fired, and when.
#[derive(Clone, Copy)]
pub struct Hit {
    pub probe: u32,
    pub now: u64,
}

/// Where an event's values come from. [`write`] asks only for the values its kind takes, so
/// that the verifier sees one path per kind rather than every combination of reads.
trait Source {
    /// Writes the event's model key into `key` (a reserved event's field).
    ///
    /// # Safety
    /// `key` is valid for writes.
    unsafe fn model_into(&self, key: *mut ModelKey);
    fn worker_id(&self) -> u64;
    fn request_id(&self) -> u64;
    fn memory_bytes(&self) -> u64;
    fn outcome_value(&self) -> u64;
    fn outcome_detail(&self) -> u64;
    fn entered_ns(&self) -> u64;
    fn entered_cpu_ns(&self) -> u64;
    fn ending(&self) -> CallEnding;
    /// A request future's address, and its state when its poll started and ended.
    fn future(&self) -> u64;
    fn state_before(&self, future: u64) -> u64;
    fn state_after(&self, future: u64) -> u64;
}

/// At an entry: everything is read now.
struct AtEntry<'a, C: EbpfContext>(&'a Reader<'a, C>);

impl<C: EbpfContext> Source for AtEntry<'_, C> {
    #[inline(always)]
    unsafe fn model_into(&self, key: *mut ModelKey) {
        unsafe { self.0.model_into(key) }
    }
    #[inline(always)]
    fn worker_id(&self) -> u64 {
        self.0.value(&self.0.spec().worker_id, read::WORKER_ID)
    }
    #[inline(always)]
    fn request_id(&self) -> u64 {
        self.0.value(&self.0.spec().request_id, read::REQUEST_ID)
    }
    #[inline(always)]
    fn memory_bytes(&self) -> u64 {
        self.0.value(&self.0.spec().memory_bytes, read::MEMORY_BYTES)
    }
    #[inline(always)]
    fn outcome_value(&self) -> u64 {
        self.0.value(&self.0.spec().outcome, read::OUTCOME)
    }
    #[inline(always)]
    fn outcome_detail(&self) -> u64 {
        self.0.value(&self.0.spec().outcome_detail, read::OUTCOME)
    }
    #[inline(always)]
    fn entered_ns(&self) -> u64 {
        0
    }
    #[inline(always)]
    fn entered_cpu_ns(&self) -> u64 {
        0
    }
    #[inline(always)]
    fn ending(&self) -> CallEnding {
        CallEnding::Returned
    }
    #[inline(always)]
    fn future(&self) -> u64 {
        self.0.value(&self.0.spec().future, read::FUTURE)
    }
    #[inline(always)]
    fn state_before(&self, future: u64) -> u64 {
        self.0.state(future)
    }
    #[inline(always)]
    fn state_after(&self, future: u64) -> u64 {
        self.0.state(future)
    }
}

/// At a return: the model and ids that come from the arguments were read at entry into the
/// open call; the rest is read now.
struct AtReturn<'a, C: EbpfContext> {
    reader: &'a Reader<'a, C>,
    call: &'a OpenCall,
    ending: CallEnding,
}

impl<C: EbpfContext> Source for AtReturn<'_, C> {
    #[inline(always)]
    unsafe fn model_into(&self, key: *mut ModelKey) {
        if self.reader.spec().model_reads_return() {
            unsafe { self.reader.model_into(key) }
        } else {
            unsafe { *key = self.call.model }
        }
    }
    #[inline(always)]
    fn worker_id(&self) -> u64 {
        let source = &self.reader.spec().worker_id;
        if source.reads_return() { self.reader.value(source, read::WORKER_ID) } else { self.call.worker_id }
    }
    #[inline(always)]
    fn request_id(&self) -> u64 {
        let source = &self.reader.spec().request_id;
        if source.reads_return() { self.reader.value(source, read::REQUEST_ID) } else { self.call.request_id }
    }
    #[inline(always)]
    fn memory_bytes(&self) -> u64 {
        self.reader.value(&self.reader.spec().memory_bytes, read::MEMORY_BYTES)
    }
    #[inline(always)]
    fn outcome_value(&self) -> u64 {
        self.reader.value(&self.reader.spec().outcome, read::OUTCOME)
    }
    #[inline(always)]
    fn outcome_detail(&self) -> u64 {
        self.reader.value(&self.reader.spec().outcome_detail, read::OUTCOME)
    }
    #[inline(always)]
    fn entered_ns(&self) -> u64 {
        self.call.entered_ns
    }
    #[inline(always)]
    fn entered_cpu_ns(&self) -> u64 {
        self.call.entered_cpu_ns
    }
    #[inline(always)]
    fn ending(&self) -> CallEnding {
        self.ending
    }
    #[inline(always)]
    fn future(&self) -> u64 {
        self.call.future
    }
    #[inline(always)]
    fn state_before(&self, _future: u64) -> u64 {
        self.call.state
    }
    #[inline(always)]
    fn state_after(&self, future: u64) -> u64 {
        self.reader.state(future)
    }
}

/// A call a panic unwound through: only what was read at entry.
struct Unwound<'a>(&'a OpenCall);

impl Source for Unwound<'_> {
    #[inline(always)]
    unsafe fn model_into(&self, key: *mut ModelKey) {
        unsafe { *key = self.0.model }
    }
    #[inline(always)]
    fn worker_id(&self) -> u64 {
        self.0.worker_id
    }
    #[inline(always)]
    fn request_id(&self) -> u64 {
        self.0.request_id
    }
    #[inline(always)]
    fn memory_bytes(&self) -> u64 {
        0
    }
    #[inline(always)]
    fn outcome_value(&self) -> u64 {
        0
    }
    #[inline(always)]
    fn outcome_detail(&self) -> u64 {
        0
    }
    #[inline(always)]
    fn entered_ns(&self) -> u64 {
        self.0.entered_ns
    }
    #[inline(always)]
    fn entered_cpu_ns(&self) -> u64 {
        self.0.entered_cpu_ns
    }
    #[inline(always)]
    fn ending(&self) -> CallEnding {
        CallEnding::Unwound
    }
    #[inline(always)]
    fn future(&self) -> u64 {
        self.0.future
    }
    #[inline(always)]
    fn state_before(&self, _future: u64) -> u64 {
        self.0.state
    }
    #[inline(always)]
    fn state_after(&self, _future: u64) -> u64 {
        0
    }
}

/// Writes the event `spec` asks for at an entry, if any.
pub fn event<C: EbpfContext>(ctx: &C, spec: &ProbeSpec, hit: &Hit, registers: &Registers<'_>) {
    let reader = Reader::new(ctx, registers, spec, hit.probe);
    write(spec, hit, &AtEntry(&reader));
    reader.report_failure();
}

/// Writes the event `spec` asks for at the return of `call`.
pub fn returned<C: EbpfContext>(
    ctx: &C,
    spec: &ProbeSpec,
    hit: &Hit,
    registers: &Registers<'_>,
    call: &OpenCall,
) {
    ended(ctx, spec, hit, registers, call, CallEnding::Returned);
}

/// Where the caller of an inlined poll binds the future's `Ready` value: the poll ended, and
/// its outcome is read from `registers`, the caller's now. The caller's return writes nothing
/// more for that future.
pub fn ready<C: EbpfContext>(
    ctx: &C,
    spec: &ProbeSpec,
    hit: &Hit,
    registers: &Registers<'_>,
    call: &mut OpenCall,
) {
    ended(ctx, spec, hit, registers, call, CallEnding::Ready);
    call.future = 0;
}

#[inline(always)]
fn ended<C: EbpfContext>(
    ctx: &C,
    spec: &ProbeSpec,
    hit: &Hit,
    registers: &Registers<'_>,
    call: &OpenCall,
    ending: CallEnding,
) {
    let reader = Reader::new(ctx, registers, spec, hit.probe);
    write(spec, hit, &AtReturn { reader: &reader, call, ending });
    reader.report_failure();
}

/// The end of a call a panic unwound through. For a `request_ended` return probe (or a poll),
/// the request failed; for a `worker_evicted` one, the worker did not leave: it crashed. Other
/// events did not happen, and are only counted (`CallsUnwound`).
pub fn unwound(spec: &ProbeSpec, call: &OpenCall, now: u64) {
    let hit = Hit { probe: call.return_probe, now };
    if spec.kind == EventKind::RequestEnded as u32 || spec.kind == EventKind::FuturePolled as u32 {
        write(spec, &hit, &Unwound(call));
    } else if spec.kind == EventKind::WorkerEvicted as u32 {
        write_as(EventKind::WorkerCrashed, &hit, &Unwound(call));
    } else if spec.kind == EventKind::HandoffRan as u32 {
        handoff_ran(call, &hit, CallEnding::Unwound);
    }
}

/// The end of a hand-off's run, `call`: its event, with the request it was made in. Returns the
/// CPU time of the run.
pub fn handoff_ran(call: &OpenCall, hit: &Hit, ending: CallEnding) -> u64 {
    let clock = cpu::thread_clock(hit.now);
    // SAFETY: `submit` hands a reserved event, valid for writes; every field is written.
    submit(|event: *mut HandoffRan| unsafe {
        fill_header(&raw mut (*event).header, EventKind::HandoffRan, hit);
        (*event).request_probe = call.request_probe;
        (*event).made_by = call.handoff_made_by;
        (*event).ending = ending as u8;
        (*event)._reserved = [0; 7];
        (*event).model = call.model;
        (*event).request_id = call.request_id;
        (*event).future = call.future;
        (*event).entered_ns = call.entered_ns;
        (*event).entered_cpu_ns = call.entered_cpu_ns;
        (*event).cpu_ns = clock;
    });
    clock.saturating_sub(call.entered_cpu_ns)
}

/// Writes an event's header in place.
///
/// # Safety
/// `into` is a reserved event's header, valid for writes.
#[inline(always)]
unsafe fn fill_header(into: *mut Header, kind: EventKind, hit: &Hit) {
    let (pid, tid) = current_ids();
    unsafe {
        (*into).kind = kind as u32;
        (*into).probe = hit.probe;
        (*into).tid = tid;
        (*into).pid = pid;
        (*into).ts_ns = hit.now;
        (*into).lost_before = events_lost_so_far();
    }
}

#[inline(always)]
fn write<S: Source>(spec: &ProbeSpec, hit: &Hit, source: &S) {
    if let Some(kind) = EventKind::from_u32(spec.kind) {
        write_as(kind, hit, source);
    }
}

/// Inlined with the sources' methods: a model key returned through a call is copied byte by
/// byte, and the verifier walks every byte on every path. Each event is written in place in the
/// ring buffer, field by field: built first, it would take up to 200 bytes of the BPF stack.
/// Writes an event of `kind` (the spec's own, but at a worker's crash).
#[inline(always)]
fn write_as<S: Source>(kind: EventKind, hit: &Hit, source: &S) {
    // Written in place too, field by field, in each event.
    // SAFETY: `into` is a reserved event's header, valid for writes.
    let header = |into: *mut Header| unsafe { fill_header(into, kind, hit) };
    // SAFETY (every arm): `submit` hands each a reserved event, valid for writes; each writes
    // every field of it.
    match kind {
        EventKind::WorkerSpawned => submit(|event: *mut WorkerSpawned| unsafe {
            header(&raw mut (*event).header);
            source.model_into(&raw mut (*event).model);
            (*event).worker_id = source.worker_id();
            (*event).memory_bytes = source.memory_bytes();
        }),
        EventKind::WorkerEvicted => submit(|event: *mut WorkerEvicted| unsafe {
            header(&raw mut (*event).header);
            source.model_into(&raw mut (*event).model);
            (*event).worker_id = source.worker_id();
        }),
        EventKind::WorkerCrashed => submit(|event: *mut WorkerCrashed| unsafe {
            header(&raw mut (*event).header);
            source.model_into(&raw mut (*event).model);
            (*event).worker_id = source.worker_id();
        }),
        EventKind::RequestSubmitted => submit(|event: *mut RequestSubmitted| unsafe {
            header(&raw mut (*event).header);
            source.model_into(&raw mut (*event).model);
            (*event).request_id = source.request_id();
        }),
        EventKind::RequestStarted => submit(|event: *mut RequestStarted| unsafe {
            header(&raw mut (*event).header);
            source.model_into(&raw mut (*event).model);
            (*event).request_id = source.request_id();
            (*event).worker_id = source.worker_id();
            (*event).cpu_ns = cpu::thread_clock(hit.now);
        }),
        EventKind::RequestEnded => submit(|event: *mut RequestEnded| unsafe {
            header(&raw mut (*event).header);
            source.model_into(&raw mut (*event).model);
            (*event).request_id = source.request_id();
            (*event).worker_id = source.worker_id();
            (*event).outcome_value = source.outcome_value();
            (*event).outcome_detail = source.outcome_detail();
            (*event).entered_ns = source.entered_ns();
            (*event).entered_cpu_ns = source.entered_cpu_ns();
            (*event).cpu_ns = cpu::thread_clock(hit.now);
            (*event).ending = source.ending() as u8;
            (*event)._reserved = [0; 7];
        }),
        EventKind::FuturePolled => {
            let future = source.future();
            // The caller of an inlined poll returned without polling the future.
            if future == 0 {
                return;
            }
            submit(|event: *mut FuturePolled| unsafe {
                header(&raw mut (*event).header);
                source.model_into(&raw mut (*event).model);
                (*event).request_id = source.request_id();
                (*event).future = future;
                (*event).state_before = source.state_before(future);
                (*event).state_after = source.state_after(future);
                (*event).outcome_value = source.outcome_value();
                (*event).outcome_detail = source.outcome_detail();
                (*event).entered_ns = source.entered_ns();
                (*event).entered_cpu_ns = source.entered_cpu_ns();
                (*event).cpu_ns = cpu::thread_clock(hit.now);
                (*event).ending = source.ending() as u8;
                (*event)._reserved = [0; 7];
            })
        }
        EventKind::FutureDropped => {
            let future = source.future();
            submit(|event: *mut FutureDropped| unsafe {
                header(&raw mut (*event).header);
                (*event).future = future;
                (*event).state = source.state_before(future);
            })
        }
        // Written by `cpu_sample` and `handoff_ran`, never by a manifest's probe.
        EventKind::CpuSampled | EventKind::HandoffRan => {}
    }
}

/// Reads, at a call's entry, the values its return probe takes from the arguments.
pub fn read_at_entry<C: EbpfContext>(
    ctx: &C,
    spec: &ProbeSpec,
    probe: u32,
    registers: &Registers<'_>,
    call: &mut OpenCall,
) {
    let reader = Reader::new(ctx, registers, spec, probe);
    call.future = 0;
    call.state = 0;
    if spec.kind == EventKind::FuturePolled as u32 {
        // An inlined poll fills the future in at its own site (`fill_poll`).
        if spec.poll_inlined == 0 {
            read_poll(&reader, call, reader.value(&spec.future, read::FUTURE));
        } else {
            call.model.state = MODEL_ABSENT;
            call.request_id = 0;
            call.worker_id = 0;
        }
        reader.report_failure();
        return;
    }
    if spec.model_reads_return() {
        call.model.state = MODEL_ABSENT;
    } else {
        // SAFETY: the open call's slot, valid for writes.
        unsafe { reader.model_into(&raw mut call.model) };
    }
    call.request_id =
        if spec.request_id.reads_return() { 0 } else { reader.value(&spec.request_id, read::REQUEST_ID) };
    call.worker_id =
        if spec.worker_id.reads_return() { 0 } else { reader.value(&spec.worker_id, read::WORKER_ID) };
    reader.report_failure();
}

/// At an inlined poll's site: the future it polls, for the open call of its caller.
pub fn fill_poll<C: EbpfContext>(
    ctx: &C,
    spec: &ProbeSpec,
    hit: &Hit,
    registers: &Registers<'_>,
    call: &mut OpenCall,
) {
    let reader = Reader::new(ctx, registers, spec, hit.probe);
    let future = reader.value(&spec.future, read::FUTURE);
    // A poll the caller enters at more than one place may pass two of them: still one poll.
    if future != call.future {
        if call.future != 0 {
            count(Counter::PollsMerged);
        }
        read_poll(&reader, call, future);
        call.entered_ns = hit.now;
        call.entered_cpu_ns = cpu::thread_clock(hit.now);
    }
    reader.report_failure();
}

/// At a poll's start: the future, its state, and its arguments if it was never polled (in any
/// other state they are not where the debug info puts them at the first poll).
fn read_poll<C: EbpfContext>(reader: &Reader<'_, C>, call: &mut OpenCall, future: u64) {
    let spec = reader.spec();
    call.future = future;
    call.state = reader.state(call.future);
    call.worker_id = 0;
    if call.state == u64::from(spec.unresumed) {
        // SAFETY: the open call's slot, valid for writes.
        unsafe { reader.model_into(&raw mut call.model) };
        call.request_id = reader.value(&spec.request_id, read::REQUEST_ID);
    } else {
        call.model.state = MODEL_ABSENT;
        call.request_id = 0;
    }
}

/// Reserves a `T` in the ring buffer, has `fill` write every field of it in place, and submits it.
#[inline(always)]
fn submit<T: 'static>(fill: impl FnOnce(*mut T)) {
    let flags = wakeup_flags();
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            fill(entry.as_mut_ptr());
            entry.submit(flags);
        }
        None => lost_event(),
    }
}
