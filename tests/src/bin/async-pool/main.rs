//! `async-pool`: a tokio service written the way its users write one, built in release with
//! nothing to make probing easy. Its request path is an `async fn`, `Service::handle`; the rest
//! of the service is in `service.rs`, shared with `async-pool-boxed`.

mod service;

use service::{Reply, Request, ServeError, Work};
use tokio::sync::mpsc;

pub struct Service {
    /// To the blocking workers.
    work: mpsc::Sender<Work>,
}

impl Service {
    pub async fn handle(&self, req: &Request) -> Result<Reply, ServeError> {
        self.serve(req).await
    }
}

fn main() {
    service::main();
}
