//! A handler for tests: every inbound message goes to a channel and is
//! answered with a fixed status.

use futures::future::BoxFuture;
use parking_lot::Mutex;
use rusmpp::CommandStatus;
use tokio::sync::mpsc;

use crate::smpp::{InboundHandler, InboundMessage};

/// A handler for tests: forwards every message to a channel and answers a
/// fixed status.
pub struct RecordingHandler {
    tx: mpsc::Sender<(String, InboundMessage)>,
    status: Mutex<CommandStatus>,
}

impl RecordingHandler {
    /// A handler answering `ESME_ROK`, and the receiving end of its channel.
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<(String, InboundMessage)>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            RecordingHandler {
                tx,
                status: Mutex::new(CommandStatus::EsmeRok),
            },
            rx,
        )
    }

    /// Changes the status answered from now on.
    pub fn set_status(&self, status: CommandStatus) {
        *self.status.lock() = status;
    }
}

impl InboundHandler for RecordingHandler {
    fn deliver<'a>(&'a self, link: &'a str, msg: InboundMessage) -> BoxFuture<'a, CommandStatus> {
        let status = *self.status.lock();
        Box::pin(async move {
            if self.tx.send((link.to_owned(), msg)).await.is_err() {
                return CommandStatus::EsmeRxTAppn;
            }
            status
        })
    }
}
