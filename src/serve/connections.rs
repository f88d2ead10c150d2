//! Connection handling for `serve`: keep-alive HTTP/1.1 connections with header and idle
//! timeouts, a limit on open connections, and a graceful stop; request heads are checked by a
//! [`Gate`] before hyper parses them, so that bad ones are answered in JSON too.

use super::heads::{Gate, Refusal};
use anyhow::{Context, Result};
use axum::Router;
use axum::http::{HeaderValue, header};
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use super::options::ServeOptions;

/// Where a connection stands, for its timeouts.
#[derive(Clone, Copy)]
enum Phase {
    /// Waiting for a request, none of it received, since then: `idle_timeout` applies.
    Idle(tokio::time::Instant),
    /// Receiving a request's headers since then: `header_timeout` applies.
    Head(tokio::time::Instant),
    /// A request is being handled: no connection timeout (the per-request one applies).
    Busy,
}

/// The addresses `--addr` names (`HOST:PORT`, see [`ServeOptions::addr`]), in the
/// resolver's order; an error that names the option, the value and an example otherwise.
pub fn resolve(addr: &str) -> Result<Vec<SocketAddr>> {
    let fail =
        |why: String| anyhow::anyhow!("--addr `{addr}`: {why}; give HOST:PORT, e.g. 127.0.0.1:8080, localhost:8080 or [::1]:8080 (port 0 picks a free one)");
    let no_host = |port: &str| fail(format!("the host is missing (`127.0.0.1:{port}` or `localhost:{port}` for this machine only)"));
    if let Some((scheme, rest)) = addr.split_once("://") {
        let instead = rest.split('/').next().filter(|a| !a.is_empty()).map(|a| format!(" (`--addr {a}`)")).unwrap_or_default();
        return Err(fail(format!("`{scheme}://` is a URL scheme, not part of the address: drop it{instead}")));
    }
    if addr.parse::<u16>().is_ok() {
        return Err(no_host(addr));
    }
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| fail("no port".into()))?;
    if port.parse::<u16>().is_err() {
        return Err(fail(format!("`{port}` is not a port (0 to 65535)")));
    }
    if host.is_empty() || host == "[]" {
        return Err(no_host(port));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(fail("an IPv6 address goes in brackets".into()));
    }
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs().map_err(|e| fail(format!("cannot resolve `{host}` ({e})")))?.collect();
    anyhow::ensure!(!addrs.is_empty(), fail(format!("`{host}` has no address")));
    Ok(addrs)
}

/// Listens on the first of `addrs` that binds (they are what `addr` resolved to).
pub(super) async fn bind(addrs: &[SocketAddr], addr: &str) -> Result<TcpListener> {
    let mut failed = Vec::new();
    for a in addrs {
        match TcpListener::bind(a).await {
            Ok(listener) => return Ok(listener),
            Err(e) => failed.push(format!("{a}: {e}")),
        }
    }
    anyhow::bail!("cannot listen on --addr `{addr}`: {}", failed.join("; "))
}

/// Accepts connections until `stop` turns true, then closes the idle ones (those whose next
/// request head is still arriving too: the gate holds it back, so hyper sees an idle
/// connection), lets the others finish their current request, and returns once all are closed.
pub(super) async fn serve_connections(listener: TcpListener, app: Router, opts: &ServeOptions, mut stop: watch::Receiver<bool>) -> Result<()> {
    let all = u32::try_from(opts.max_connections).context("connection limit too large")?;
    let slots = Arc::new(Semaphore::new(opts.max_connections));
    loop {
        // Take a slot before accepting: at the limit, clients wait in the listen backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot?,
            _ = stop.wait_for(|&s| s) => break,
        };
        let tcp = tokio::select! {
            conn = listener.accept() => match conn {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Per-connection failures (reset before accept) are routine; others (out of
                    // file descriptors) get a pause so the loop does not spin.
                    if !matches!(e.kind(), std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset) {
                        eprintln!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
            },
            _ = stop.wait_for(|&s| s) => break,
        };
        let (app, opts, stop) = (app.clone(), opts.clone(), stop.clone());
        tokio::spawn(async move {
            serve_connection(tcp, app, &opts, stop).await;
            drop(slot);
        });
    }
    drop(listener);
    let _all_closed = slots.acquire_many(all).await?;
    Ok(())
}

/// Serves one HTTP/1.1 connection (keep-alive) until the client closes it, a timeout closes
/// it, or `stop` asks for a graceful close.
async fn serve_connection(tcp: TcpStream, app: Router, opts: &ServeOptions, mut stop: watch::Receiver<bool>) {
    let _ = tcp.set_nodelay(true);
    let phase = Arc::new(watch::Sender::new(Phase::Head(tokio::time::Instant::now())));
    let refusal = Arc::new(Mutex::new(None));
    let io = hyper_util::rt::TokioIo::new(Watched::new(tcp, phase.clone(), refusal.clone()));
    let app = hyper_util::service::TowerToHyperService::new(app);
    let mut timeouts = std::pin::pin!(expired(phase.subscribe(), opts.header_timeout, opts.idle_timeout));
    let requests = AtomicU64::new(0);
    let service = hyper::service::service_fn(move |req| {
        // The stand-in for a refused head gets the refusal; every other request the router.
        let n = requests.fetch_add(1, Ordering::Relaxed) + 1;
        let refused = refusal.lock().unwrap_or_else(|e| e.into_inner()).take_if(|r: &mut Refusal| r.request == n);
        phase.send_replace(Phase::Busy);
        let answer = match refused {
            Some(refused) => Err(refusal_answer(refused)),
            None => Ok(hyper::service::Service::call(&app, req)),
        };
        let phase = phase.clone();
        async move {
            let answer = match answer {
                Ok(routed) => routed.await,
                Err(refused) => Ok(refused),
            };
            phase.send_replace(Phase::Idle(tokio::time::Instant::now()));
            answer
        }
    });
    let mut conn = std::pin::pin!(hyper::server::conn::http1::Builder::new().serve_connection(io, service));
    let mut closing = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => break,
            // Dropping the connection closes the socket.
            _ = &mut timeouts => break,
            _ = stop.wait_for(|&s| s), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Resolves when the connection has waited `idle` for a request or spent `header` receiving
/// one's headers.
async fn expired(mut phase: watch::Receiver<Phase>, header: Duration, idle: Duration) {
    loop {
        let deadline = match *phase.borrow_and_update() {
            Phase::Idle(since) => since.checked_add(idle),
            Phase::Head(since) => since.checked_add(header),
            Phase::Busy => None,
        };
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            changed = phase.changed() => if changed.is_err() { return },
            _ = sleep => return,
        }
    }
}

/// The answer to a refused request head: its JSON error, and the connection closes.
fn refusal_answer(r: Refusal) -> axum::response::Response {
    let mut answer = super::answer::error(r.status, r.message);
    answer.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    answer
}

/// What hyper reads in place of a refused head: a request the service answers with the refusal.
const STAND_IN: &[u8] = b"GET / HTTP/1.1\r\n\r\n";

/// How much input a connection reads and drops after refusing a head, so that the client, still
/// sending, is not reset before it reads the answer (beyond it, the connection just closes).
const LINGER_BYTES: usize = 1 << 20;

/// A client socket that passes its input to hyper through a [`Gate`] and marks its connection
/// `Head` when bytes arrive while it is `Idle`.
struct Watched {
    tcp: TcpStream,
    phase: Arc<watch::Sender<Phase>>,
    gate: Gate,
    /// Input the gate let through, from `taken` on not yet read by hyper.
    passed: Vec<u8>,
    taken: usize,
    scratch: Box<[u8]>,
    /// Where a refused head's answer goes, for the service.
    refusal: Arc<Mutex<Option<Refusal>>>,
    /// Once a head is refused, input is read and dropped until the client closes; hyper, which
    /// answers the stand-in, never sees the end of the input.
    refused: bool,
    dropped: usize,
    client_closed: bool,
    shut: bool,
}

impl Watched {
    fn new(tcp: TcpStream, phase: Arc<watch::Sender<Phase>>, refusal: Arc<Mutex<Option<Refusal>>>) -> Self {
        let scratch = vec![0; 16 * 1024].into_boxed_slice();
        Watched {
            tcp,
            phase,
            gate: Gate::default(),
            passed: Vec::new(),
            taken: 0,
            scratch,
            refusal,
            refused: false,
            dropped: 0,
            client_closed: false,
            shut: false,
        }
    }

    /// Reads the client's input into `scratch`: the bytes read, 0 at its end.
    fn poll_input(&mut self, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<usize>> {
        let mut buf = ReadBuf::new(&mut self.scratch);
        ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut buf))?;
        Poll::Ready(Ok(buf.filled().len()))
    }

    /// After a refusal: reads and drops input until the client closes it (or `LINGER_BYTES`).
    fn poll_drop_input(&mut self, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.client_closed && self.dropped < LINGER_BYTES {
            let n = ready!(self.poll_input(cx))?;
            self.client_closed = n == 0;
            self.dropped += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.taken < this.passed.len() {
                let n = buf.remaining().min(this.passed.len() - this.taken);
                buf.put_slice(&this.passed[this.taken..this.taken + n]);
                this.taken += n;
                if this.taken == this.passed.len() {
                    this.passed.clear();
                    this.taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.refused {
                // Hyper is answering the stand-in: it gets no more input, not even its end.
                ready!(this.poll_drop_input(cx))?;
                return Poll::Pending;
            }
            let n = ready!(this.poll_input(cx))?;
            if n == 0 {
                this.passed = this.gate.finish();
                if this.passed.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            this.phase.send_if_modified(|p| match *p {
                Phase::Idle(_) => {
                    *p = Phase::Head(tokio::time::Instant::now());
                    true
                }
                _ => false,
            });
            if let Some(refusal) = this.gate.feed(&this.scratch[..n], &mut this.passed) {
                *this.refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(refusal);
                this.passed.extend_from_slice(STAND_IN);
                this.refused = true;
            }
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }
    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }
    /// After a refusal, waits (within the connection's idle timeout) for the client to close
    /// once the answer is sent: closing with its input unread would reset the connection, and
    /// the client might lose the answer.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.shut {
            ready!(Pin::new(&mut this.tcp).poll_shutdown(cx))?;
            this.shut = true;
        }
        if this.refused { this.poll_drop_input(cx) } else { Poll::Ready(Ok(())) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_take_host_names_and_refuse_what_is_not_host_port() {
        assert_eq!(resolve("127.0.0.1:0").unwrap(), vec!["127.0.0.1:0".parse::<SocketAddr>().unwrap()]);
        assert_eq!(resolve("[::1]:8080").unwrap(), vec!["[::1]:8080".parse::<SocketAddr>().unwrap()]);
        let local = resolve("localhost:8080").unwrap();
        assert!(!local.is_empty() && local.iter().all(|a| a.ip().is_loopback() && a.port() == 8080), "{local:?}");
        for (bad, why) in [
            ("localhost", "no port"),
            ("localhost:http", "`http` is not a port"),
            ("127.0.0.1:70000", "`70000` is not a port"),
            (":8080", "the host is missing (`127.0.0.1:8080` or `localhost:8080` for this machine only)"),
            ("8080", "the host is missing (`127.0.0.1:8080` or `localhost:8080` for this machine only)"),
            ("http://localhost:8080", "`http://` is a URL scheme, not part of the address: drop it (`--addr localhost:8080`)"),
            ("https://[::1]:8080/predict", "`https://` is a URL scheme, not part of the address: drop it (`--addr [::1]:8080`)"),
            ("::1:8080", "an IPv6 address goes in brackets"),
            ("no-such-host.invalid:8080", "cannot resolve `no-such-host.invalid`"),
        ] {
            let e = resolve(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--addr `{bad}`: {why}")) && e.contains("e.g. 127.0.0.1:8080"), "{e}");
        }
    }
}
