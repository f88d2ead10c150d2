//! How `serve` listens, batches, decodes and times out (its command-line flags).

use super::decode::Decoding;
use std::time::Duration;

/// `serve`'s settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where to listen: `HOST:PORT`, the host an IP address (IPv6 in brackets) or a name, whose
    /// addresses are tried in the resolver's order until one binds. Port 0 picks a free one.
    pub addr: String,
    /// Largest accepted request body, bytes.
    pub max_body: usize,
    /// Most images per forward pass. Queued images beyond it wait for the next pass, which
    /// keeps several passes in flight (one running, the next being decoded); EfficientNet-Lite0
    /// on a CPU gives the same images/s from batch 2 to 32, so small batches lose nothing.
    pub max_batch: usize,
    /// How long the inference thread, idle and woken by one request, waits for more to join
    /// its batch (it never waits while decoded images are queued).
    pub batch_wait: Duration,
    /// The threads that decode and preprocess request bodies, apart from the encoder's thread
    /// pool, and their CPU priority.
    pub decoding: Decoding,
    /// Per-request limit on decoding plus inference.
    pub timeout: Duration,
    /// Classes returned when the request does not say (`?k=`).
    pub top_k: usize,
    /// Time a client has to send a request's headers, counted from accepting the connection
    /// for its first request and from the first byte of each later one; a client still short
    /// of a complete header block then is disconnected (no response).
    pub header_timeout: Duration,
    /// Time a keep-alive connection may wait for its next request, counted from the previous
    /// response, before the server closes it. A request being handled is never cut off by
    /// this (`timeout` bounds it).
    pub idle_timeout: Duration,
    /// Most connections open at once. At the limit the server stops accepting: new clients
    /// wait in the kernel's listen backlog (connected at the TCP level, unanswered) until an
    /// open connection closes, so a burst is served late rather than refused (as nginx and Go's
    /// `LimitListener` do). Once the backlog is full too, the kernel drops new connection
    /// attempts and clients retry.
    pub max_connections: usize,
}
