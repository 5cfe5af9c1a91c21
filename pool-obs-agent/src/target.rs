//! The process being profiled: found by PID, watched until it exits.

use std::{io::ErrorKind, num::NonZeroU32, path::PathBuf};

use procfs::{ProcError, process::Process};

use crate::error::{Class, Refusal};

pub struct Target {
    pub pid: NonZeroU32,
    /// The executable as the kernel sees it; stays valid even if the file was replaced.
    pub exe_link: PathBuf,
    /// The executable's path when we attached, for people.
    pub exe: String,
    /// Distinguishes this process from a later one that reuses its PID.
    start_time: u64,
}

impl Target {
    pub fn open(pid: u32) -> Result<Self, Refusal> {
        let refuse = |message: String| Refusal::new(Class::Process, message);
        let Some(nonzero) = NonZeroU32::new(pid) else {
            return Err(refuse("--pid 0 is not a process: give the PID of the running pool".to_string()));
        };
        let not_running =
            || refuse(format!("no process with PID {pid}: is the pool running? (check with `ps -p {pid}`)"));
        let process = Process::new(pid as i32).map_err(|_| not_running())?;
        let stat = process.stat().map_err(|_| not_running())?;
        if stat.state == 'Z' {
            return Err(refuse(format!(
                "process {pid} has exited: start the pool again and give its new PID"
            )));
        }
        let exe = process.exe().map_err(|error| match error {
            ProcError::PermissionDenied(_) => refuse(format!(
                "not permitted to read /proc/{pid}/exe: run the agent as root or grant it CAP_SYS_PTRACE"
            )),
            ProcError::NotFound(_) => {
                refuse(format!("process {pid} has no executable (is it a kernel thread?)"))
            }
            ProcError::Io(error, _) if error.kind() == ErrorKind::PermissionDenied => refuse(format!(
                "not permitted to read /proc/{pid}/exe: run the agent as root or grant it CAP_SYS_PTRACE"
            )),
            other => refuse(format!("cannot read /proc/{pid}/exe: {other}")),
        })?;
        Ok(Self {
            pid: nonzero,
            exe_link: PathBuf::from(format!("/proc/{pid}/exe")),
            exe: exe.display().to_string(),
            start_time: stat.starttime,
        })
    }

    /// The executable and PID, as errors name them.
    pub fn shown(&self) -> String {
        format!("{} (PID {})", self.exe, self.pid)
    }

    pub fn is_alive(&self) -> bool {
        Process::new(self.pid.get() as i32)
            .and_then(|process| process.stat())
            .is_ok_and(|stat| stat.starttime == self.start_time && stat.state != 'Z')
    }
}
