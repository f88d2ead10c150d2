//! A request on its way through [`super::pipeline`]'s stages, and how it can fail: what the
//! decode stage ([`super::decode`]) and the inference thread hand each other.

use crate::bundle::ClassProb;
use tokio::sync::oneshot;

/// Why a request got no classes.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The body is not an image the decoder reads.
    BadImage(String),
    /// The model failed (or a stage panicked) on the request's batch.
    Internal(String),
    /// The inference thread is gone.
    Stopped,
}

/// A request's answer: its top classes, best first.
pub type Answer = std::result::Result<Vec<ClassProb>, Failure>;

/// One request on its way through the stages: its body, then its prepared image.
pub(super) struct Task<T> {
    pub item: T,
    pub k: usize,
    pub reply: oneshot::Sender<Answer>,
}

impl<T> Task<T> {
    /// Whether the client still waits for the answer.
    pub fn wanted(&self) -> bool {
        !self.reply.is_closed()
    }

    pub fn fail(self, why: Failure) {
        let _ = self.reply.send(Err(why));
    }
}
