//! Deliveries under way, for a component that keeps several events in delivery at once
//! (metadata `concurrency`): each is a task that runs the application's handler, and a
//! [`Pending`] handle the component waits on (`delivery.pending.wait-any` in `imports`).

use std::sync::Arc;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::handler::{Answer, Event, EventHandler};

/// Why a delivery was not accepted (the WIT `delivery-error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The application did not accept it, and why.
    Failed(String),
    /// The binding is shutting down: the delivery was abandoned.
    Stopped,
}

pub(crate) type Outcome = Result<Answer, Refused>;

/// One event in delivery. Its answer is taken once; after that it is spent.
#[derive(Debug)]
pub struct Pending {
    answer: Option<oneshot::Receiver<Outcome>>,
}

impl Pending {
    /// Starts delivering `event` on a task of its own; shutdown abandons it.
    pub(crate) fn start(
        handler: Arc<dyn EventHandler>,
        event: Event,
        shutdown: CancellationToken,
    ) -> Self {
        let (answered, answer) = oneshot::channel();
        tokio::spawn(async move {
            let outcome = tokio::select! {
                biased;
                outcome = handler.deliver(event) => outcome.map_err(Refused::Failed),
                () = shutdown.cancelled() => Err(Refused::Stopped),
            };
            let _ = answered.send(outcome);
        });
        Self {
            answer: Some(answer),
        }
    }

    /// A delivery that is over before it began.
    pub(crate) fn answered(outcome: Outcome) -> Self {
        let (answered, answer) = oneshot::channel();
        let _ = answered.send(outcome);
        Self {
            answer: Some(answer),
        }
    }

    /// Takes the answer to wait on; `None` once spent.
    pub(crate) fn take(&mut self) -> Option<oneshot::Receiver<Outcome>> {
        self.answer.take()
    }

    /// Gives back an answer that did not come yet.
    pub(crate) fn put_back(&mut self, answer: oneshot::Receiver<Outcome>) {
        self.answer = Some(answer);
    }
}
