//! Turns ring-buffer records back into the typed events of `pool_obs_common::event`.

use std::{fmt, mem::size_of, ptr};

use pool_obs_common::event::{
    CallEnding, CpuSampled, EventKind, FutureDropped, FuturePolled, HandoffRan, Header, RequestEnded,
    RequestStarted, RequestSubmitted, WorkerCrashed, WorkerEvicted, WorkerSpawned,
};

#[derive(Clone, Copy, Debug)]
pub enum Event {
    WorkerSpawned(WorkerSpawned),
    WorkerEvicted(WorkerEvicted),
    WorkerCrashed(WorkerCrashed),
    RequestSubmitted(RequestSubmitted),
    RequestStarted(RequestStarted),
    RequestEnded(RequestEnded),
    FuturePolled(FuturePolled),
    FutureDropped(FutureDropped),
    /// A CPU sample: its stack is in the record, after it ([`sample_stack`]).
    CpuSampled(CpuSampled),
    HandoffRan(HandoffRan),
}

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    Short { len: usize },
    UnknownKind(u32),
    UnknownEnding(u8),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Short { len } => write!(f, "record of {len} bytes is too short for its kind"),
            DecodeError::UnknownKind(kind) => write!(f, "unknown event kind {kind}"),
            DecodeError::UnknownEnding(ending) => write!(f, "unknown call ending {ending}"),
        }
    }
}

pub fn decode(record: &[u8]) -> Result<Event, DecodeError> {
    let header: Header = read(record)?;
    let kind = EventKind::from_u32(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
    Ok(match kind {
        EventKind::WorkerSpawned => Event::WorkerSpawned(read(record)?),
        EventKind::WorkerEvicted => Event::WorkerEvicted(read(record)?),
        EventKind::WorkerCrashed => Event::WorkerCrashed(read(record)?),
        EventKind::RequestSubmitted => Event::RequestSubmitted(read(record)?),
        EventKind::RequestStarted => Event::RequestStarted(read(record)?),
        EventKind::RequestEnded => {
            let ended: RequestEnded = read(record)?;
            CallEnding::from_u8(ended.ending).ok_or(DecodeError::UnknownEnding(ended.ending))?;
            Event::RequestEnded(ended)
        }
        EventKind::FuturePolled => {
            let polled: FuturePolled = read(record)?;
            CallEnding::from_u8(polled.ending).ok_or(DecodeError::UnknownEnding(polled.ending))?;
            Event::FuturePolled(polled)
        }
        EventKind::FutureDropped => Event::FutureDropped(read(record)?),
        EventKind::HandoffRan => {
            let ran: HandoffRan = read(record)?;
            CallEnding::from_u8(ran.ending).ok_or(DecodeError::UnknownEnding(ran.ending))?;
            Event::HandoffRan(ran)
        }
        EventKind::CpuSampled => {
            let sample: CpuSampled = read(record)?;
            let stack_end = size_of::<CpuSampled>().saturating_add(sample.stack_len as usize);
            if record.len() < stack_end {
                return Err(DecodeError::Short { len: record.len() });
            }
            Event::CpuSampled(sample)
        }
    })
}

/// The user stack a sample's record holds after the sample, as long as the kernel read it.
pub fn sample_stack<'a>(record: &'a [u8], sample: &CpuSampled) -> &'a [u8] {
    let start = size_of::<CpuSampled>();
    record.get(start..start + sample.stack_len as usize).unwrap_or_default()
}

/// Copies a wire struct out of the record. Every wire struct is plain old data, so any bytes
/// of the right length make a valid value.
fn read<T: Copy>(record: &[u8]) -> Result<T, DecodeError> {
    if record.len() < size_of::<T>() {
        return Err(DecodeError::Short { len: record.len() });
    }
    // SAFETY: the length is checked above; `read_unaligned` copes with any alignment and T is
    // one of the repr(C) integer-only wire structs.
    Ok(unsafe { ptr::read_unaligned(record.as_ptr().cast::<T>()) })
}

impl Event {
    pub fn header(&self) -> &Header {
        match self {
            Event::WorkerSpawned(event) => &event.header,
            Event::WorkerEvicted(event) => &event.header,
            Event::WorkerCrashed(event) => &event.header,
            Event::RequestSubmitted(event) => &event.header,
            Event::RequestStarted(event) => &event.header,
            Event::RequestEnded(event) => &event.header,
            Event::FuturePolled(event) => &event.header,
            Event::FutureDropped(event) => &event.header,
            Event::CpuSampled(event) => &event.header,
            Event::HandoffRan(event) => &event.header,
        }
    }

    pub fn kind(&self) -> EventKind {
        match self {
            Event::WorkerSpawned(_) => EventKind::WorkerSpawned,
            Event::WorkerEvicted(_) => EventKind::WorkerEvicted,
            Event::WorkerCrashed(_) => EventKind::WorkerCrashed,
            Event::RequestSubmitted(_) => EventKind::RequestSubmitted,
            Event::RequestStarted(_) => EventKind::RequestStarted,
            Event::RequestEnded(_) => EventKind::RequestEnded,
            Event::FuturePolled(_) => EventKind::FuturePolled,
            Event::FutureDropped(_) => EventKind::FutureDropped,
            Event::CpuSampled(_) => EventKind::CpuSampled,
            Event::HandoffRan(_) => EventKind::HandoffRan,
        }
    }
}

#[cfg(test)]
mod tests {
    use pool_obs_common::event::{MODEL_KEY_CAPACITY, MODEL_PRESENT, ModelKey};

    use super::*;

    fn bytes_of<T>(value: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a repr(C) value for the test's record.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    #[test]
    fn round_trip() {
        let event = RequestStarted {
            header: Header {
                kind: EventKind::RequestStarted as u32,
                probe: 3,
                tid: 9,
                pid: 9,
                ts_ns: 77,
                lost_before: 0,
            },
            model: ModelKey { len: 2, state: MODEL_PRESENT, captured: 2, bytes: [b'm'; MODEL_KEY_CAPACITY] },
            request_id: 42,
            worker_id: 5,
            cpu_ns: 1_000,
        };
        let Event::RequestStarted(decoded) = decode(&bytes_of(&event)).unwrap() else {
            panic!("wrong kind");
        };
        assert_eq!((decoded.request_id, decoded.worker_id, decoded.header.ts_ns), (42, 5, 77));
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        assert_eq!(decode(&[0; 8]).unwrap_err(), DecodeError::Short { len: 8 });
        let header = Header { kind: 99, probe: 0, tid: 0, pid: 0, ts_ns: 0, lost_before: 0 };
        assert_eq!(decode(&bytes_of(&header)).unwrap_err(), DecodeError::UnknownKind(99));
        let short = Header { kind: EventKind::RequestEnded as u32, ..header };
        assert!(matches!(decode(&bytes_of(&short)), Err(DecodeError::Short { .. })));
    }
}
