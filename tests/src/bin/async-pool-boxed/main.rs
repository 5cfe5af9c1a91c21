//! `async-pool-boxed`: the service of `async-pool`, whose `Service::handle` returns a boxed
//! future, `Pin<Box<dyn Future>>`, as `#[async_trait]` writes it: its poll and drop are
//! called through the box's vtable.

#[path = "../async-pool/service.rs"]
mod service;

use std::{future::Future, pin::Pin};

use service::{Reply, Request, ServeError, Work};
use tokio::sync::mpsc;

pub struct Service {
    /// To the blocking workers.
    work: mpsc::Sender<Work>,
}

impl Service {
    pub fn handle<'a>(
        &'a self,
        req: &'a Request,
    ) -> Pin<Box<dyn Future<Output = Result<Reply, ServeError>> + Send + 'a>> {
        Box::pin(async move { self.serve(req).await })
    }
}

fn main() {
    service::main();
}
