//! Connection handling for `serve`: keep-alive HTTP/1.1 connections with header and idle
//! timeouts, a limit on open connections, and a graceful stop.

use anyhow::{Context, Result};
use axum::Router;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use super::ServeOptions;

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

/// The addresses `--addr` names (`HOST:PORT`, see [`super::ServeOptions::addr`]), in the
/// resolver's order; an error that names the option, the value and an example otherwise.
pub fn resolve(addr: &str) -> Result<Vec<SocketAddr>> {
    let fail =
        |why: String| anyhow::anyhow!("--addr `{addr}`: {why}; give HOST:PORT, e.g. 127.0.0.1:8080, localhost:8080 or [::1]:8080 (port 0 picks a free one)");
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| fail("no port".into()))?;
    if port.parse::<u16>().is_err() {
        return Err(fail(format!("`{port}` is not a port (0 to 65535)")));
    }
    if host.is_empty() || host == "[]" {
        return Err(fail("no host".into()));
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

/// Accepts connections until `stop` turns true, then closes the idle ones, lets the others
/// finish their current request (one still arriving gets until its header timeout), and
/// returns once all are closed.
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
    let io = hyper_util::rt::TokioIo::new(Watched { tcp, phase: phase.clone() });
    let app = hyper_util::service::TowerToHyperService::new(app);
    let mut timeouts = std::pin::pin!(expired(phase.subscribe(), opts.header_timeout, opts.idle_timeout));
    let service = hyper::service::service_fn(move |req| {
        phase.send_replace(Phase::Busy);
        let answer = hyper::service::Service::call(&app, req);
        let phase = phase.clone();
        async move {
            let answer = answer.await;
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

/// A client socket that marks its connection `Head` when bytes arrive while it is `Idle`.
struct Watched {
    tcp: TcpStream,
    phase: Arc<watch::Sender<Phase>>,
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.phase.send_if_modified(|p| match *p {
                Phase::Idle(_) => {
                    *p = Phase::Head(tokio::time::Instant::now());
                    true
                }
                _ => false,
            });
        }
        read
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
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_take_host_names_and_refuse_what_has_no_port() {
        assert_eq!(resolve("127.0.0.1:0").unwrap(), vec!["127.0.0.1:0".parse::<SocketAddr>().unwrap()]);
        assert_eq!(resolve("[::1]:8080").unwrap(), vec!["[::1]:8080".parse::<SocketAddr>().unwrap()]);
        let local = resolve("localhost:8080").unwrap();
        assert!(!local.is_empty() && local.iter().all(|a| a.ip().is_loopback() && a.port() == 8080), "{local:?}");
        for (bad, why) in [
            ("localhost", "no port"),
            ("localhost:http", "`http` is not a port"),
            ("127.0.0.1:70000", "`70000` is not a port"),
            (":8080", "no host"),
            ("::1:8080", "an IPv6 address goes in brackets"),
            ("no-such-host.invalid:8080", "cannot resolve `no-such-host.invalid`"),
        ] {
            let e = resolve(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--addr `{bad}`: {why}")) && e.contains("e.g. 127.0.0.1:8080"), "{e}");
        }
    }
}
