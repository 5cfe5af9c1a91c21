//! Careless and hostile HTTP clients: each gets the status it earned, and everyone else is
//! still served. The agent is attached for real to an idle reference pool.

use std::{
    io::{ErrorKind, Read, Write},
    net::TcpStream,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use pool_obs_tests::{
    http,
    openmetrics::Exposition,
    processes::{Agent, Pool, StartFile, binary, free_address, manifest, stop, watch_bench_target},
};

/// A pool that waits for a start file that never comes: the agent has nothing to count.
fn idle_pool() -> (Pool, StartFile) {
    let start = StartFile::new("http");
    (Pool::start(&start.arg()), start)
}

#[test]
fn wrong_paths_methods_headers_and_bodies_get_their_status() {
    let (pool, _start) = idle_pool();
    let agent = Agent::attach(pool.pid(), &manifest("demo-pool.toml"), free_address(), &[]);
    let status = |request: &str| http::exchange(agent.address, request.as_bytes()).expect("an answer").status;

    assert_eq!(agent.get("/nowhere").status, 404);
    assert_eq!(status("DELETE /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"), 405);
    let filler = "x".repeat(64 * 1024);
    assert_eq!(status(&format!("GET /metrics HTTP/1.1\r\nHost: a\r\nX-Filler: {filler}\r\n\r\n")), 431);
    // A gigabyte announced and never sent: refused before anything waits for it.
    let announced =
        "GET /health HTTP/1.1\r\nHost: a\r\nContent-Length: 1073741824\r\nConnection: close\r\n\r\n";
    assert_eq!(status(announced), 413);
    assert_eq!(
        status("GET /health HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"),
        413
    );
    assert_eq!(agent.get("/metrics").status, 200, "and it serves on");
}

/// Whether the server still holds `stream` open: nothing to read yet, and no end of stream.
fn still_open(mut stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).expect("a non-blocking socket");
    let open = matches!(stream.read(&mut [0; 1]), Err(error) if error.kind() == ErrorKind::WouldBlock);
    stream.set_nonblocking(false).expect("a blocking socket");
    open
}

#[test]
fn a_thousand_slow_clients_neither_stall_metrics_nor_stay_forever() {
    let (pool, _start) = idle_pool();
    let timeout = ["--http-timeout-secs", "10"];
    let agent = Agent::attach(pool.pid(), &manifest("demo-pool.toml"), free_address(), &timeout);

    // Each sends the first line of a request, then nothing more.
    let mut slow: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let mut stream = TcpStream::connect(agent.address).expect("a slow client connects");
            stream.write_all(b"GET /metrics HTTP/1.1\r\n").expect("a slow client writes");
            stream
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    for _ in 0..20 {
        let response = agent.get("/metrics");
        assert_eq!(response.status, 200);
        let metrics = Exposition::parse(&response.body);
        assert_eq!(metrics.value("pool_obs_target_up", &[]), Some(1.0));
    }
    let open = slow.iter().filter(|stream| still_open(stream)).count();
    assert_eq!(open, 1000, "the scrapes were served while every slow client was held");

    // Past the header timeout, the agent lets go of every one of them.
    let deadline = Instant::now() + Duration::from_secs(30);
    for stream in &mut slow {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        stream.set_read_timeout(Some(left)).expect("a read timeout");
        let _ = stream.read_to_end(&mut Vec::new());
    }
    let open = slow.iter().filter(|stream| still_open(stream)).count();
    assert_eq!(open, 0, "every slow client was disconnected");
    assert_eq!(agent.get("/health").status, 200);
}

#[test]
fn a_client_that_stops_reading_is_dropped() {
    // Three thousand models make an exposition of about 14 MB, far more than sockets buffer.
    let calls = ["--calls", "3000", "--models", "3000"];
    let agent = watch_bench_target(
        "unread",
        "bench-target.toml",
        &calls,
        &["--max-models", "3000", "--http-timeout-secs", "3"],
    );
    let full = agent.metrics_after(3000);
    assert_eq!(full.label_values("pool_requests_total", "model").len(), 3000);
    let full_bytes = agent.get("/metrics").body.len();

    let mut reader = TcpStream::connect(agent.address).expect("connect");
    reader.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n").expect("send a request");
    thread::sleep(Duration::from_secs(6));
    let (_, health) = agent.health();
    assert_eq!(health["target"]["up"], false, "others are served meanwhile: the target has exited");
    reader.set_read_timeout(Some(Duration::from_secs(10))).expect("a read timeout");
    let mut received = Vec::new();
    let ended = reader.read_to_end(&mut received);
    let held =
        matches!(&ended, Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut));
    assert!(!held, "the agent let go of the connection: {ended:?}");
    assert!(received.len() < full_bytes, "abandoned after {} of {full_bytes} bytes", received.len());
}

#[test]
fn the_agent_listens_on_loopback_unless_told_otherwise() {
    let (pool, _start) = idle_pool();
    let mut agent = Command::new(binary("pool-obs-agent"))
        .args(["--pid", &pool.pid().to_string()])
        .arg("--manifest")
        .arg(manifest("demo-pool.toml"))
        .spawn()
        .expect("start pool-obs-agent");
    let deadline = Instant::now() + Duration::from_secs(60);
    let default = "127.0.0.1:9464".parse().expect("an address");
    while http::get(default, "/health").is_err() {
        assert!(Instant::now() < deadline, "the agent serves on {default}");
        thread::sleep(Duration::from_millis(50));
    }
    // Port 9464 (0x24F8), listening (state 0A): bound to 127.0.0.1 alone, not to every address.
    let tcp = std::fs::read_to_string(format!("/proc/{}/net/tcp", agent.id())).expect("/proc/PID/net/tcp");
    let listening: Vec<&str> = tcp
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(3) == Some(&"0A") && fields[1].ends_with(":24F8")).then_some(fields[1])
        })
        .collect();
    assert_eq!(listening, ["0100007F:24F8"]);
    assert!(stop(&mut agent, libc::SIGTERM).success());
}
