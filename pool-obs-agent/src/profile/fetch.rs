//! `pool-obs-agent profile`: a profile taken by the agent that already follows the pool, asked
//! for over its HTTP endpoint. The agent holds the probes that name each thread's model, so the
//! command is its client rather than a second agent.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    time::Duration,
};

use crate::error::{Class, Refusal};

use super::Selection;

/// Fetches the profile `selection` from the agent at `agent` and writes it to `output`.
pub fn fetch(agent: SocketAddr, selection: &Selection, output: &Path) -> Result<(), Refusal> {
    let refuse = |message: String| Refusal::new(Class::Profile, message);
    let mut query = format!("seconds={}", selection.seconds);
    if let Some(model) = &selection.model {
        query.push_str(&format!("&model={}", percent_encoded(model)));
    }
    if let Some(pid) = selection.pid {
        query.push_str(&format!("&pid={pid}"));
    }
    query.push_str(&format!("&format={}", selection.format.name()));
    let unreachable = |error: std::io::Error| {
        refuse(format!(
            "no agent answers at {agent} ({error}): start `pool-obs-agent --pid PID --manifest FILE` first, \
             or give its --listen address with --agent"
        ))
    };
    let mut stream = TcpStream::connect_timeout(&agent, Duration::from_secs(5)).map_err(unreachable)?;
    stream.set_read_timeout(Some(Duration::from_secs(selection.seconds + 90))).map_err(unreachable)?;
    // HTTP/1.0: the agent answers with the whole body and closes.
    write!(stream, "GET /profile?{query} HTTP/1.0\r\nHost: {agent}\r\n\r\n").map_err(unreachable)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(unreachable)?;
    let split = response.windows(4).position(|window| window == b"\r\n\r\n");
    let (head, body) = match split {
        Some(at) => (String::from_utf8_lossy(&response[..at]).to_string(), &response[at + 4..]),
        None => return Err(refuse(format!("the agent at {agent} answered something other than HTTP"))),
    };
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        let reason = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|json| json["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(body).to_string());
        return Err(refuse(format!("the agent at {agent} took no profile: {reason}")));
    }
    std::fs::write(output, body)
        .map_err(|error| refuse(format!("cannot write {}: {error}", output.display())))?;
    eprintln!("pool-obs-agent: wrote {} ({} bytes)", output.display(), body.len());
    Ok(())
}

/// A query value: letters, digits and `-._~` as they are, every other byte as `%XX`.
fn percent_encoded(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (byte as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(super::percent_encoded("llama-7b/q4 &x"), "llama-7b%2Fq4%20%26x");
    }
}
