//! Every mistake a user can make gets one line saying what to do, and an exit code of its own.
//! Each test runs the real agent against a real (idle) pool and asserts both exactly.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use pool_obs_tests::processes::{Pool, StartFile, args, binary, manifest};

/// An idle reference pool: it waits for a start file that never comes.
fn idle_pool() -> (Pool, StartFile) {
    let start = StartFile::new("idle");
    (Pool::start(&args(&start.arg().each_ref().map(String::as_str))), start)
}

fn agent(prefix: &[&str], agent_args: &[&str]) -> Output {
    let agent = binary("pool-obs-agent");
    let mut command = match prefix.split_first() {
        Some((program, rest)) => {
            let mut command = Command::new(program);
            command.args(rest).arg(&agent);
            command
        }
        None => Command::new(&agent),
    };
    command.args(agent_args).output().expect("run pool-obs-agent")
}

/// Asserts the agent failed with `code` and printed exactly `message` as its one line.
fn assert_refused(output: &Output, code: i32, message: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "{stderr}");
    assert_eq!(stderr.trim_end(), format!("pool-obs-agent: error: {message}"));
}

fn write_manifest(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("pool-obs-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, text).expect("write a manifest");
    path
}

fn one_probe(function: &str) -> String {
    format!("[[probe]]\nevent = \"worker_evicted\"\nfunction = \"{function}\"\nworker_id = \"arg3\"\n")
}

fn attach(pid: u32, manifest: &Path) -> Output {
    agent(
        &[],
        &["--pid", &pid.to_string(), "--manifest", manifest.to_str().unwrap(), "--listen", "127.0.0.1:0"],
    )
}

#[test]
fn a_function_not_found_suggests_the_nearest_names() {
    let (pool, _start) = idle_pool();
    let path = write_manifest("not-found", &one_probe("demo_pool::pool::Pool::serv"));
    let message = "no function matches `demo_pool::pool::Pool::serv`; nearest: demo_pool::pool::Pool::serve";
    assert_refused(&attach(pool.pid(), &path), 10, message);
}

#[test]
fn an_ambiguous_pattern_lists_its_matches() {
    let (pool, _start) = idle_pool();
    let path = write_manifest("ambiguous", &one_probe("demo_pool::pool::Pool::s*e"));
    let message = "`demo_pool::pool::Pool::s*e` matches 2 functions, name one: demo_pool::pool::Pool::serve, \
                   demo_pool::pool::Pool::supervise";
    assert_refused(&attach(pool.pid(), &path), 11, message);
}

/// `check` on `pool` with one probe on `function`: its exit code and what it printed.
fn check_function(pool: &str, function: &str) -> (Option<i32>, String) {
    let text = format!("[[probe]]\nevent = \"request_ended\"\nfunction = \"{function}\"\noutcome = \"ok\"\n");
    let path = write_manifest(&format!("check-{pool}"), &text);
    let binary = binary(pool);
    let output =
        agent(&[], &["check", "--binary", binary.to_str().unwrap(), "--manifest", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    (output.status.code(), String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn functions_that_share_a_demangled_name_are_told_apart_by_their_mangled_names() {
    // Legacy demangling drops generic arguments: every `grow_one` of demo-pool reads the same.
    let name = "alloc::raw_vec::RawVec<T,A>::grow_one";
    let (code, printed) = check_function("demo-pool", name);
    assert_eq!(code, Some(19), "{printed}");
    let listed = printed.split("name one: ").nth(1).and_then(|rest| rest.lines().next()).expect("a list");
    let mangled: Vec<&str> = listed
        .split(", ")
        .map(|entry| {
            let mangled =
                entry.strip_prefix(&format!("{name} (mangled ")).and_then(|rest| rest.strip_suffix(')'));
            mangled.unwrap_or_else(|| panic!("each match shows its mangled name: {entry}"))
        })
        .collect();
    assert!(mangled.len() > 1, "{printed}");
    let (code, printed) = check_function("demo-pool", mangled[0]);
    assert_eq!(code, Some(0), "the mangled name picks one function: {printed}");
    assert_eq!(printed.matches(&format!("found {name} at 0x")).count(), 1, "{printed}");
}

#[test]
fn the_copies_of_one_function_are_all_probed() {
    // One generic instance, emitted in two codegen units: one mangled name, two addresses.
    let (code, printed) =
        check_function("panic-pool", "core::ptr::drop_in_place<panic_pool::main::{{closure}}::{{closure}}>");
    assert_eq!(code, Some(0), "{printed}");
    assert!(
        printed.contains("2 copies of one function (one per codegen unit that uses it): all are probed"),
        "{printed}"
    );
    assert_eq!(printed.matches("(probe_entry)").count(), 2, "a site in each copy: {printed}");
}

#[test]
fn a_stripped_binary_is_named_as_such() {
    let stripped = std::env::temp_dir().join(format!("pool-obs-stripped-{}", std::process::id()));
    std::fs::copy(binary("demo-pool"), &stripped).expect("copy the pool");
    let status = Command::new("strip").arg(&stripped).status().expect("run strip");
    assert!(status.success());
    let output = agent(&[], &["symbols", "--binary", stripped.to_str().unwrap()]);
    let _ = std::fs::remove_file(&stripped);
    let message = format!(
        "{} has no symbol table (stripped): rebuild the pool without `strip` to profile it",
        stripped.display()
    );
    assert_refused(&output, 12, &message);
}

#[test]
fn a_pid_that_is_not_a_rust_program_is_named_with_its_executable() {
    let mut sleep = Command::new("sleep").arg("30").spawn().expect("start sleep");
    let exe = std::fs::read_link(format!("/proc/{}/exe", sleep.id())).expect("sleep's executable");
    let output = attach(sleep.id(), &manifest("demo-pool.toml"));
    let _ = sleep.kill();
    let _ = sleep.wait();
    let message = format!(
        "{} (PID {}) is not a Rust program (no function has a Rust name): give the PID or binary of the pool",
        exe.display(),
        sleep.id()
    );
    assert_refused(&output, 12, &message);
}

#[test]
fn a_symbols_pattern_without_a_star_matches_anywhere_in_the_name() {
    let output = agent(&[], &["symbols", "--binary", binary("kv-pool").to_str().unwrap(), "Worker::execute"]);
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}");
    assert!(printed.lines().any(|line| line.contains("  kv_pool::Worker::execute  ")), "{printed}");
    assert!(printed.ends_with("1 functions\n"), "{printed}");
}

#[test]
fn symbols_piped_into_a_reader_that_stops_early_ends_quietly() {
    use std::io::{BufRead, BufReader};
    let mut symbols = Command::new(binary("pool-obs-agent"))
        .args(["symbols", "--binary", binary("demo-pool").to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run pool-obs-agent symbols");
    // `| head -1`: one line read, then the pipe closed while thousands more are to come.
    let mut first = String::new();
    BufReader::new(symbols.stdout.take().expect("piped stdout")).read_line(&mut first).expect("a line");
    let output = symbols.wait_with_output().expect("symbols ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.is_empty(), "nothing on stderr, no panic: {stderr}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(output.status.signal(), Some(libc::SIGPIPE), "ended by SIGPIPE, as `ls | head` is");
}

#[test]
fn symbols_lists_the_functions_inlined_everywhere_with_their_instances() {
    let output = agent(&[], &["symbols", "--binary", binary("demo-pool").to_str().unwrap(), "make_room"]);
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}");
    let line = printed
        .lines()
        .find(|line| line.starts_with("  demo_pool::pool::Pool::make_room  ["))
        .expect(&printed);
    let instances: usize = line
        .rsplit_once('[')
        .and_then(|(_, count)| count.strip_suffix(" inlined instances]"))
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("an instance count: {line}"));
    assert!(instances >= 1, "{line}");
    assert!(printed.ends_with("0 functions, 1 more inlined everywhere\n"), "{printed}");
}

#[test]
fn an_inlined_function_is_named_as_such() {
    let (pool, _start) = idle_pool();
    let path = write_manifest("inlined", &one_probe("demo_pool::pool::Pool::make_room"));
    let message = "`demo_pool::pool::Pool::make_room` was inlined into its callers and has no symbol of its own: \
                   name its values by their source paths (`worker_id = \"worker.id\"`), which probes every \
                   inlined instance, or probe a function that calls it";
    assert_refused(&attach(pool.pid(), &path), 13, message);
}

#[test]
fn a_process_that_is_not_there_has_exited_or_is_not_ours() {
    let demo = manifest("demo-pool.toml");
    let missing = 4_194_303;
    let message =
        format!("no process with PID {missing}: is the pool running? (check with `ps -p {missing}`)");
    assert_refused(&attach(missing, &demo), 14, &message);

    let mut exited = Command::new("true").spawn().expect("run true");
    while std::fs::read_to_string(format!("/proc/{}/stat", exited.id()))
        .is_ok_and(|stat| !stat.contains(") Z "))
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let message = format!("process {} has exited: start the pool again and give its new PID", exited.id());
    assert_refused(&attach(exited.id(), &demo), 14, &message);
    exited.wait().expect("reap true");

    // Allowed to load BPF, but not to look into another user's process.
    let (pool, _start) = idle_pool();
    let nobody_with_bpf = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=+bpf,+perfmon",
        "--ambient-caps=+bpf,+perfmon",
    ];
    let pid = pool.pid().to_string();
    let output = agent(&nobody_with_bpf, &["--pid", &pid, "--manifest", demo.to_str().unwrap()]);
    let message =
        format!("not permitted to read /proc/{pid}/exe: run the agent as root or grant it CAP_SYS_PTRACE");
    assert_refused(&output, 14, &message);
}

#[test]
fn missing_capabilities_are_named() {
    let (pool, _start) = idle_pool();
    let nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
    let demo = manifest("demo-pool.toml");
    let output = agent(&nobody, &["--pid", &pool.pid().to_string(), "--manifest", demo.to_str().unwrap()]);
    let message = "pool-obs-agent lacks CAP_BPF and CAP_PERFMON: run it as root, or grant it with \
                   `setcap cap_sys_admin,cap_bpf,cap_perfmon,cap_sys_ptrace+ep pool-obs-agent`";
    assert_refused(&output, 15, message);
}

#[test]
fn a_uprobe_refused_to_a_user_without_cap_sys_admin_is_named() {
    let (pool, _start) = idle_pool();
    let granted = "+bpf,+perfmon,+sys_ptrace";
    let nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps", granted];
    let launcher = [&nobody[..], &["--ambient-caps", granted]].concat();
    let demo = manifest("demo-pool.toml");
    let output = agent(&launcher, &["--pid", &pool.pid().to_string(), "--manifest", demo.to_str().unwrap()]);
    let message = "the kernel refused a uprobe on demo_pool::pool::Pool::spawn_worker (permission denied): \
                   as a user other than root the agent needs CAP_SYS_ADMIN besides CAP_BPF and CAP_PERFMON: \
                   run it as root, or grant it with \
                   `setcap cap_sys_admin,cap_bpf,cap_perfmon,cap_sys_ptrace+ep pool-obs-agent`";
    assert_refused(&output, 15, message);
}

#[test]
fn a_kernel_without_uprobes_is_named() {
    let (pool, _start) = idle_pool();
    // A private mount namespace in which the kernel's uprobe PMU is not to be seen.
    let script = format!(
        "mount -t tmpfs none /sys/bus/event_source/devices && exec {} --pid {} --manifest {}",
        binary("pool-obs-agent").display(),
        pool.pid(),
        manifest("demo-pool.toml").display()
    );
    let output =
        Command::new("unshare").args(["--mount", "sh", "-c", &script]).output().expect("run unshare");
    let message = "this kernel has no uprobe support (/sys/bus/event_source/devices/uprobe is missing): \
                   it needs CONFIG_UPROBES and CONFIG_UPROBE_EVENTS";
    assert_refused(&output, 16, message);
}

#[test]
fn manifest_syntax_errors_say_where() {
    let (pool, _start) = idle_pool();
    let broken = write_manifest("syntax", "[[probe]\nevent = \"worker_evicted\"\n");
    let output = attach(pool.pid(), &broken);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(17), "{stderr}");
    assert!(stderr.starts_with(&format!("pool-obs-agent: error: {}:1:", broken.display())), "{stderr}");

    let bad_value = one_probe("demo_pool::pool::Pool::evict_worker").replace("\"arg3\"", "\"*(arg3 + 8\"");
    let path = write_manifest("value-syntax", &bad_value);
    let message = format!("{}:4:13: `*(arg3 + 8` at column 11: expected `)`", path.display());
    assert_refused(&attach(pool.pid(), &path), 17, &message);
}

#[test]
fn unknown_event_and_field_names_list_the_valid_ones() {
    let (pool, _start) = idle_pool();
    let unknown_event = one_probe("f").replace("worker_evicted", "worker_retired");
    let path = write_manifest("event", &unknown_event);
    let message = format!(
        "{}:2:9: unknown event `worker_retired`: expected one of worker_spawned, worker_evicted, worker_crashed, \
         request_submitted, request_started, request_ended, async_request",
        path.display()
    );
    assert_refused(&attach(pool.pid(), &path), 18, &message);

    let misplaced = format!("{}memory_bytes = \"arg4\"\n", one_probe("f"));
    let path = write_manifest("field", &misplaced);
    let message = format!(
        "{}:5:16: `memory_bytes` does not apply to worker_evicted: it takes worker_id, model",
        path.display()
    );
    assert_refused(&attach(pool.pid(), &path), 18, &message);
}
