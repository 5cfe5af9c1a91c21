//! A minimal HTTP/1.1 client for talking to the agent on loopback.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

pub struct Response {
    pub status: u16,
    pub body: String,
}

pub fn get(address: SocketAddr, path: &str) -> io::Result<Response> {
    get_waiting(address, path, Duration::from_secs(10))
}

/// A GET with `headers` (`Name: value` each) read to its last byte into `raw` (headers
/// included), and nothing else done with it: what timing an endpoint should measure, rather
/// than this client's own parsing.
pub fn get_raw(address: SocketAddr, path: &str, headers: &[&str], raw: &mut Vec<u8>) -> io::Result<()> {
    send(address, get_request_with(address, path, headers).as_bytes(), Duration::from_secs(10), raw)
}

/// A response to a client that accepts gzip: whether it came gzipped, and its body unzipped.
pub struct Unzipped {
    pub status: u16,
    pub gzipped: bool,
    pub body: String,
}

/// The header of a client that accepts gzip, as curl's `--compressed`, Go's and Python's
/// clients and Prometheus send it.
pub const ACCEPT_GZIP: &str = "Accept-Encoding: gzip";

/// A GET that says [`ACCEPT_GZIP`].
pub fn get_accepting_gzip(address: SocketAddr, path: &str) -> io::Result<Unzipped> {
    let mut raw = Vec::new();
    get_raw(address, path, &[ACCEPT_GZIP], &mut raw)?;
    let Parsed { status, head, body } = parse(&raw)?;
    let gzipped = says_gzipped(&head);
    let body = if gzipped {
        let mut text = String::new();
        flate2::read::GzDecoder::new(body).read_to_string(&mut text)?;
        text
    } else {
        String::from_utf8_lossy(body).into_owned()
    };
    Ok(Unzipped { status, gzipped, body })
}

/// Whether a raw response's head says its body is gzipped. Only the head is read.
pub fn is_gzipped(raw: &[u8]) -> bool {
    split(raw).is_some_and(|(head, _)| says_gzipped(&String::from_utf8_lossy(head)))
}

fn says_gzipped(head: &str) -> bool {
    head.lines().any(|line| line.to_ascii_lowercase().replace(' ', "") == "content-encoding:gzip")
}

/// A raw response's head and body.
fn split(raw: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = raw.windows(4).position(|window| window == b"\r\n\r\n")?;
    Some((&raw[..end], &raw[end + 4..]))
}

/// A raw response's status, its head as text, and its body.
struct Parsed<'a> {
    status: u16,
    head: String,
    body: &'a [u8],
}

fn parse(raw: &[u8]) -> io::Result<Parsed<'_>> {
    let invalid = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not an HTTP response: {:.200}", String::from_utf8_lossy(raw)),
        )
    };
    let (head, body) = split(raw).ok_or_else(invalid)?;
    let head = String::from_utf8_lossy(head).into_owned();
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).ok_or_else(invalid)?;
    Ok(Parsed { status, head, body })
}

/// As [`get`], for an answer that takes up to `wait` (a profile).
pub fn get_waiting(address: SocketAddr, path: &str, wait: Duration) -> io::Result<Response> {
    exchange_waiting(address, get_request(address, path).as_bytes(), wait)
}

/// Sends `request` as it is and reads the response to the end of the connection.
pub fn exchange(address: SocketAddr, request: &[u8]) -> io::Result<Response> {
    exchange_waiting(address, request, Duration::from_secs(10))
}

fn get_request(address: SocketAddr, path: &str) -> String {
    get_request_with(address, path, &[])
}

fn get_request_with(address: SocketAddr, path: &str, headers: &[&str]) -> String {
    let headers: String = headers.iter().map(|header| format!("{header}\r\n")).collect();
    format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n{headers}Connection: close\r\n\r\n")
}

/// Sends `request` and reads the whole response into `raw`, waiting up to `wait` for it.
fn send(address: SocketAddr, request: &[u8], wait: Duration, raw: &mut Vec<u8>) -> io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(wait))?;
    stream.write_all(request)?;
    raw.clear();
    stream.read_to_end(raw)?;
    Ok(())
}

fn exchange_waiting(address: SocketAddr, request: &[u8], wait: Duration) -> io::Result<Response> {
    let mut raw = Vec::new();
    send(address, request, wait, &mut raw)?;
    let Parsed { status, body, .. } = parse(&raw)?;
    Ok(Response { status, body: String::from_utf8_lossy(body).into_owned() })
}
