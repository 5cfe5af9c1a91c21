//! The load: clients that post requests over keep-alive HTTP/1.1 connections; a client that
//! gives up on a request closes its connection and opens another.

use std::{net::SocketAddr, time::Duration};

use pool_obs_tests::seeded::unit_interval;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

use crate::server::InferRequest;

pub struct Load {
    pub models: Vec<String>,
    pub requests: u64,
    pub clients: u64,
    pub seed: u64,
    pub fail_rate: f64,
    pub slow_rate: f64,
    pub drop_rate: f64,
}

impl Load {
    /// Request `id`'s model: the first models are asked for most, the last ones rarely, so
    /// that the registry loads and unloads them.
    fn model(&self, id: u64) -> &str {
        let draw = unit_interval(self.seed, id, 1);
        let index = (draw * draw * self.models.len() as f64) as usize;
        &self.models[index.min(self.models.len() - 1)]
    }

    pub async fn client(&self, address: SocketAddr, nth: u64) {
        let mut connection = None;
        let mut id = nth;
        while id < self.requests {
            let stream = match connection.take() {
                Some(stream) => stream,
                None => BufReader::new(TcpStream::connect(address).await.expect("connect to the service")),
            };
            // A client gives up on a request that takes long.
            let gives_up = unit_interval(self.seed, id, 4) < self.drop_rate;
            let request = InferRequest {
                id,
                prompt: (0..8 + id % 24).map(|token| (token * 31 + id) as u32).collect(),
                deadline_ms: 15,
                fails: unit_interval(self.seed, id, 2) < self.fail_rate,
                slow: gives_up || unit_interval(self.seed, id, 3) < self.slow_rate,
            };
            let patience = Duration::from_millis(if gives_up { 3 } else { 10_000 });
            let path = format!("/v1/models/{}/infer", self.model(id));
            // Given up on, the stream is dropped: the connection closes.
            connection = tokio::time::timeout(patience, exchange(stream, &path, &request)).await.ok();
            id += self.clients;
        }
    }
}

/// One request and its answer on a kept-alive connection, given back for the next.
async fn exchange(
    mut stream: BufReader<TcpStream>,
    path: &str,
    request: &InferRequest,
) -> BufReader<TcpStream> {
    let body = serde_json::to_vec(request).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: model-server\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.get_mut().write_all(&[head.as_bytes(), &body].concat()).await.expect("send a request");
    let mut length = 0;
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).await.expect("read an answer");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().expect("a content length");
        }
    }
    let mut answer = vec![0; length];
    stream.read_exact(&mut answer).await.expect("read the answer's body");
    stream
}
