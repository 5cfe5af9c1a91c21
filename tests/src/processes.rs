//! The processes the tests and the demo run: the reference pool and the agent.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use crate::{ground_truth::Summary, http, openmetrics::Exposition};

/// `pool-obs-agent init` on the functions of the release binary `pool`: its exit code and the
/// manifest it wrote (with anything it said on stderr after it).
pub fn agent_init(pool: &str, functions: &[&str]) -> (Option<i32>, String) {
    agent_on_binary("init", pool, |command| command.args(functions))
}

/// `pool-obs-agent check` of the manifest file at `manifest` against the release binary `pool`:
/// its exit code and what it printed (stdout, then stderr).
pub fn agent_check(pool: &str, manifest: &Path) -> (Option<i32>, String) {
    agent_on_binary("check", pool, |command| command.arg("--manifest").arg(manifest))
}

/// `pool-obs-agent SUBCOMMAND --binary POOL`, with the arguments `rest` adds: its exit code and
/// what it printed (stdout, then stderr).
fn agent_on_binary(
    subcommand: &str,
    pool: &str,
    rest: impl FnOnce(&mut Command) -> &mut Command,
) -> (Option<i32>, String) {
    let mut command = Command::new(binary("pool-obs-agent"));
    command.args([subcommand, "--binary"]).arg(binary(pool));
    let output = rest(&mut command)
        .output()
        .unwrap_or_else(|error| panic!("run pool-obs-agent {subcommand}: {error}"));
    let text =
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.code(), text)
}

/// A release binary of this workspace, as `cargo xtask build` leaves it.
pub fn binary(name: &str) -> PathBuf {
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target_dir.join("release").join(name);
    assert!(path.exists(), "{} is not built: run `cargo xtask test`", path.display());
    path
}

pub fn manifest(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests").join(name)
}

/// A loopback address no one listens on right now.
pub fn free_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).expect("a free loopback port")
}

/// The reference pool, started and waiting for its start file (if it was given one).
pub struct Pool {
    pub child: Child,
    pub stdout: mpsc::Receiver<String>,
}

impl Pool {
    /// Starts the reference pool, `demo-pool`.
    pub fn start(args: &[String]) -> Self {
        Self::start_named("demo-pool", args)
    }

    /// Starts one of the reference pools and waits until it says it is ready.
    pub fn start_named(name: &str, args: &[String]) -> Self {
        Self::start_binary(&binary(name), args)
    }

    /// Starts a reference pool from a copy of its binary (say, one without debug info).
    pub fn start_binary(path: &Path, args: &[String]) -> Self {
        Self::start_logging(path, args, None)
    }

    /// Starts `demo-pool` with its own log written to `file`, as `cargo xtask demo` runs it.
    pub fn start_logging_to(args: &[String], file: &Path) -> Self {
        let file = std::fs::File::create(file).unwrap_or_else(|error| panic!("{}: {error}", file.display()));
        Self::start_logging(&binary("demo-pool"), args, Some(file))
    }

    fn start_logging(path: &Path, args: &[String], mut log: Option<std::fs::File>) -> Self {
        let name = path.file_name().map_or("pool".into(), |name| name.to_string_lossy().into_owned());
        let mut child = Command::new(path)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("start {name}: {error}"));
        let stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
        let (ready_sender, ready) = mpsc::channel();
        thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if line.contains("ready") {
                    let _ = ready_sender.send(());
                }
                match &mut log {
                    Some(file) => _ = writeln!(file, "{line}"),
                    None => eprintln!("{line}"),
                }
            }
        });
        let stdout = lines_of(child.stdout.take().expect("piped stdout"));
        ready.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("{name} says it is ready"));
        Self { child, stdout }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next summary the pool prints: at the end of its load, then at exit.
    pub fn summary(&mut self) -> Summary {
        let line = self.stdout.recv_timeout(Duration::from_secs(120)).expect("the pool prints its summary");
        serde_json::from_str(&line).unwrap_or_else(|error| panic!("summary {line:?}: {error}"))
    }

    /// Waits for the pool to exit on its own, and checks that it exited cleanly.
    pub fn wait_for_exit(&mut self) {
        let status = self.child.wait().expect("wait for demo-pool");
        assert!(status.success(), "demo-pool exited with {status}");
    }
}

/// The agent, attached and serving.
/// Where an agent's log goes.
enum Log<'a> {
    /// Through the test harness, shown for a test that fails.
    ThroughHarness,
    /// Kept for the test, filtered by this `RUST_LOG`.
    Kept(&'a str),
    File(std::fs::File),
}

pub struct Agent {
    pub child: Child,
    pub address: SocketAddr,
    /// Its log lines, when started with [`Agent::attach_logging`].
    pub logs: Option<mpsc::Receiver<String>>,
}

impl Agent {
    pub fn attach(pid: u32, manifest: &Path, address: SocketAddr, extra: &[&str]) -> Self {
        Self::start(&[], &pid_args(pid), Some(manifest), address, extra, Log::ThroughHarness)
    }

    /// Follows every process of the executable `exe` (`--exe`), with its log kept for the test.
    pub fn follow(exe: &Path, manifest: &Path, extra: &[&str], filter: &str) -> Self {
        Self::follow_all(&[(exe, manifest)], extra, filter)
    }

    /// Follows every process of each executable, each by its own manifest, in one agent.
    pub fn follow_all(targets: &[(&Path, &Path)], extra: &[&str], filter: &str) -> Self {
        let mut arguments = Vec::new();
        for (exe, manifest) in targets {
            arguments.extend(["--exe".to_string(), exe.display().to_string()]);
            arguments.extend(["--manifest".to_string(), manifest.display().to_string()]);
        }
        Self::start(&[], &arguments, None, free_address(), extra, Log::Kept(filter))
    }

    /// Waits until the agent follows process `pid` (its probes are attached).
    pub fn await_following(&self, pid: u32) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, health) = self.health();
            let followed = health["processes"].as_array().is_some_and(|processes| {
                processes
                    .iter()
                    .any(|process| process["target"]["pid"] == pid && process["target"]["up"] == true)
            });
            if followed {
                return;
            }
            assert!(Instant::now() < deadline, "the agent follows {pid} within 10 s: {health}");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Attaches with its log written to `file`, as `cargo xtask demo` runs it.
    pub fn attach_logging_to(pid: u32, manifest: &Path, address: SocketAddr, file: &Path) -> Self {
        let file = std::fs::File::create(file).unwrap_or_else(|error| panic!("{}: {error}", file.display()));
        Self::start(&[], &pid_args(pid), Some(manifest), address, &[], Log::File(file))
    }

    /// Attaches through `launcher`, a command that runs the agent as its last argument
    /// (`setpriv ...`, to run it with other credentials).
    pub fn attach_launched_by(launcher: &[&str], pid: u32, manifest: &Path) -> Self {
        Self::start(launcher, &pid_args(pid), Some(manifest), free_address(), &[], Log::ThroughHarness)
    }

    /// Attaches with `RUST_LOG` set to `filter`, keeping the log lines for the test.
    pub fn attach_logging(pid: u32, manifest: &Path, extra: &[&str], filter: &str) -> Self {
        Self::start(&[], &pid_args(pid), Some(manifest), free_address(), extra, Log::Kept(filter))
    }

    fn start(
        launcher: &[&str],
        target: &[String],
        manifest: Option<&Path>,
        address: SocketAddr,
        extra: &[&str],
        log: Log,
    ) -> Self {
        let mut command = match launcher.split_first() {
            Some((program, launcher_args)) => {
                let mut command = Command::new(program);
                command.args(launcher_args).arg(binary("pool-obs-agent"));
                command
            }
            None => Command::new(binary("pool-obs-agent")),
        };
        command.args(target).args(["--listen", &address.to_string()]);
        if let Some(manifest) = manifest {
            command.arg("--manifest").arg(manifest);
        }
        command.args(extra);
        if let Log::Kept(filter) = &log {
            command.env("RUST_LOG", filter);
        }
        let (child, logs) = match log {
            Log::File(file) => (command.stderr(file).spawn().expect("start pool-obs-agent"), None),
            Log::Kept(_) => {
                let mut child = command.stderr(Stdio::piped()).spawn().expect("start pool-obs-agent");
                let stderr = child.stderr.take().expect("piped stderr");
                (child, Some(lines_of(stderr)))
            }
            Log::ThroughHarness => {
                let mut child = command.stderr(Stdio::piped()).spawn().expect("start pool-obs-agent");
                let stderr = child.stderr.take().expect("piped stderr");
                // Through the test harness, which shows it only for a test that fails.
                thread::spawn(move || {
                    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                        eprintln!("{line}");
                    }
                });
                (child, None)
            }
        };
        let mut agent = Self { child, address, logs };
        agent.wait_until_serving();
        agent
    }

    /// The agent serves HTTP only once every probe is attached.
    fn wait_until_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while http::get(self.address, "/health").is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("pool-obs-agent exited before serving: {status}");
            }
            assert!(Instant::now() < deadline, "pool-obs-agent did not serve within 60 s");
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn get(&self, path: &str) -> http::Response {
        http::get(self.address, path).unwrap_or_else(|error| panic!("GET {path}: {error}"))
    }

    pub fn metrics(&self) -> Exposition {
        Exposition::parse(&self.get("/metrics").body)
    }

    /// The metrics once the agent has counted `requests` finished requests, and refreshed its
    /// window statistics since.
    pub fn metrics_after(&self, requests: u64) -> Exposition {
        self.metrics_after_within(requests, Duration::from_secs(10))
    }

    /// [`Agent::metrics_after`], waiting up to `within` for the count (an emulated machine
    /// needs longer).
    pub fn metrics_after_within(&self, requests: u64, within: Duration) -> Exposition {
        let deadline = Instant::now() + within;
        while (self.metrics().sum("pool_requests_total") as u64) < requests && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        thread::sleep(Duration::from_millis(500));
        self.metrics()
    }

    /// The metrics once every one of `events` (one per request) is counted or counted as lost.
    /// The metrics once `ready` holds of them, or after 20 s.
    pub fn metrics_once(&self, ready: impl Fn(&Exposition) -> bool) -> Exposition {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let metrics = self.metrics();
            if ready(&metrics) || Instant::now() > deadline {
                return metrics;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn metrics_accounting_for(&self, events: u64) -> Exposition {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let metrics = self.metrics();
            let seen = metrics.sum("pool_requests_total")
                + metrics.value("pool_obs_events_lost_total", &[]).unwrap_or(0.0);
            if seen as u64 >= events || Instant::now() > deadline {
                return metrics;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// What `/health` answered, every 100 ms, while `run` ran (status and body); and what
    /// `run` returned.
    pub fn health_while<T>(&self, run: impl FnOnce() -> T) -> (T, Vec<(u16, String)>) {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = thread::spawn({
            let (address, done) = (self.address, done.clone());
            move || {
                let mut seen = Vec::new();
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let response = http::get(address, "/health").expect("GET /health");
                    seen.push((response.status, response.body));
                    thread::sleep(Duration::from_millis(100));
                }
                seen
            }
        });
        let result = run();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (result, watcher.join().expect("the health watcher"))
    }

    pub fn health(&self) -> (u16, serde_json::Value) {
        let response = self.get("/health");
        let body = serde_json::from_str(&response.body).unwrap_or_else(|error| panic!("/health: {error}"));
        (response.status, body)
    }
}

/// Runs `bench-target` with `load` to its end, watched by an agent started with `manifest_name`
/// and `agent_args` before the first call; returns the agent, whose last events may still be
/// arriving.
pub fn watch_bench_target(name: &str, manifest_name: &str, load: &[&str], agent_args: &[&str]) -> Agent {
    let start = StartFile::new(name);
    let mut target = Pool::start_named("bench-target", &[args(load), start.arg().to_vec()].concat());
    let agent = Agent::attach(target.pid(), &manifest(manifest_name), free_address(), agent_args);
    start.start();
    let _ = target.stdout.recv_timeout(Duration::from_secs(120)).expect("bench-target's result");
    target.wait_for_exit();
    agent
}

/// A start file for the pool's `--start-file`, removed when dropped.
pub struct StartFile {
    pub path: PathBuf,
}

impl StartFile {
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("pool-obs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Self { path }
    }

    pub fn arg(&self) -> [String; 2] {
        ["--start-file".to_string(), self.path.display().to_string()]
    }

    pub fn start(&self) {
        std::fs::write(&self.path, b"").expect("create the start file");
    }
}

impl Drop for StartFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The pool's side of [`StartFile`]: waits until the test creates the file, if there is one.
pub fn await_start_file(start_file: Option<&Path>) {
    if let Some(start_file) = start_file {
        while !start_file.exists() {
            thread::sleep(Duration::from_millis(1));
        }
    }
}

fn pid_args(pid: u32) -> [String; 2] {
    ["--pid".to_string(), pid.to_string()]
}

/// Turns `["--flag", "value", …]` into owned arguments.
pub fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(ToString::to_string).collect()
}

fn lines_of(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// Sends `signal` and waits for the process to exit.
pub fn stop(child: &mut Child, signal: i32) -> std::process::ExitStatus {
    // SAFETY: kill(2) on a child we own.
    unsafe { libc::kill(child.id() as i32, signal) };
    child.wait().expect("wait for the child")
}

/// A failing test must not leave a pool or an agent running.
fn kill_if_running(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        kill_if_running(&mut self.child);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        kill_if_running(&mut self.child);
    }
}

/// A capability set of a process as `/proc/PID/status` shows it (`CapEff`, `CapPrm`, ...).
pub fn capabilities(pid: u32, set: &str) -> u64 {
    status_field(pid, set)
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .unwrap_or_else(|| panic!("/proc/{pid}/status has no {set}"))
}

/// The value of one `Name:` line of `/proc/PID/status`, trimmed; `None` once the process is gone.
fn status_field(pid: u32, name: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let value = status.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))?;
    Some(value.trim().to_string())
}

/// A process's resident memory as the kernel reports it in `/proc/PID/status` (VmRSS).
pub fn vm_rss_bytes(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS")
}

/// A memory figure of `/proc/PID/status`: `VmRSS` (resident now), `VmHWM` (the most ever
/// resident), ...; 0 once the process is gone.
pub fn status_bytes(pid: u32, field: &str) -> u64 {
    let kib: u64 = status_field(pid, field)
        .and_then(|value| value.trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    kib * 1024
}

/// Arguments for a reference-pool run with every outcome in it: `requests` at 2,500 a second,
/// 5% failing, 1% with deadlines already past, and an occasional crashing worker.
pub fn mixed_load(requests: u64, seed: u64) -> Vec<String> {
    mixed_load_at(requests, 2500, seed)
}

/// [`mixed_load`] at `rate` requests a second.
pub fn mixed_load_at(requests: u64, rate: u64, seed: u64) -> Vec<String> {
    let (requests, rate, seed) = (requests.to_string(), rate.to_string(), seed.to_string());
    let load = [
        "--requests",
        &requests,
        "--rate",
        &rate,
        "--work-us",
        "500",
        "--timeout-ms",
        "20",
        "--impatient-rate",
        "0.01",
        "--fail-rate",
        "0.05",
        "--crash-rate",
        "0.002",
        "--seed",
        &seed,
    ];
    args(&load)
}
