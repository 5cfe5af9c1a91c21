//! The process being profiled: found by PID, watched until it exits.

use std::{num::NonZeroU32, path::PathBuf};

use anyhow::{Context, Result, bail};
use procfs::process::Process;

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
    pub fn open(pid: u32) -> Result<Self> {
        let Some(nonzero) = NonZeroU32::new(pid) else {
            bail!("--pid 0 is not a process: give the PID of the running pool");
        };
        let process = Process::new(pid as i32).map_err(|_| {
            anyhow::anyhow!("no process with PID {pid}: is the pool running? (check with `ps -p {pid}`)")
        })?;
        let start_time = process.stat().with_context(|| format!("reading /proc/{pid}/stat"))?.starttime;
        let exe = process.exe().with_context(|| {
            format!(
                "reading /proc/{pid}/exe: the agent needs root or CAP_SYS_PTRACE to see the pool's binary"
            )
        })?;
        Ok(Self {
            pid: nonzero,
            exe_link: PathBuf::from(format!("/proc/{pid}/exe")),
            exe: exe.display().to_string(),
            start_time,
        })
    }

    pub fn is_alive(&self) -> bool {
        Process::new(self.pid.get() as i32)
            .and_then(|process| process.stat())
            .is_ok_and(|stat| stat.starttime == self.start_time && stat.state != 'Z')
    }
}
