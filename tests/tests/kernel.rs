//! The kernel this suite runs on takes every program of the object, not only those a manifest
//! needs, with room to spare under the verifier's stack limit. `cargo xtask test` runs the same
//! check on the other kernels users run, in virtual machines (`xtask/src/vm.rs`).

use std::process::Command;

use pool_obs_tests::processes::binary;

#[test]
fn every_kernel_program_loads_here_with_64_bytes_of_stack_to_spare() {
    let output =
        Command::new(binary("pool-obs-agent")).arg("kernel").output().expect("run pool-obs-agent kernel");
    let text = String::from_utf8_lossy(&output.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "pool-obs-agent kernel failed");
    assert!(!text.contains("  NO "), "a facility is missing here");
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip_while(|line| !line.starts_with("program"))
        .skip(1)
        .take_while(|line| !line.starts_with("ok"))
        .map(|line| line.split_whitespace().collect())
        .collect();
    let names: Vec<&str> = rows.iter().map(|row| row[0]).collect();
    for program in ["probe_entry", "probe_call", "probe_poll", "probe_ready", "probe_return", "probe_exit"] {
        assert!(names.contains(&program), "{program} is checked: {names:?}");
    }
    for row in &rows {
        let stack: u32 = row[1].parse().expect("the stack in bytes");
        let verified: u32 = row[3].parse().expect("the verified instructions");
        assert!(stack <= 448, "{}: {stack} bytes of stack", row[0]);
        assert!(verified > 0, "{}: the kernel verified it", row[0]);
    }
}
