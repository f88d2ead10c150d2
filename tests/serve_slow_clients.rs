//! `marnet serve` against slow and idle clients: a stalled request head is cut off after
//! `--header-timeout-s`, an idle keep-alive connection after `--idle-timeout-s`, at most
//! `--max-connections` are served at once, and normal requests are answered throughout; Ctrl-C
//! stops it, with a connection open or its stderr closed.
//! The bundle is a tiny model on the ViT fixture (`common::fixture_bundle`, no fetched assets
//! needed).

mod common;
use common::{Answer, Server};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const HEADER_S: f64 = 1.0;
const IDLE_S: f64 = 2.0;
const MAX_CONNECTIONS: usize = 8;

fn serve() -> Server {
    let (header, idle, cap) = (HEADER_S.to_string(), IDLE_S.to_string(), MAX_CONNECTIONS.to_string());
    common::serve(common::fixture_bundle(), &["--header-timeout-s", &header, "--idle-timeout-s", &idle, "--max-connections", &cap])
}

/// Sends one request on `s` (kept alive) and reads its answer.
fn request(s: &mut TcpStream, method: &str, path: &str, body: &[u8]) -> Answer {
    let head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    common::read_answer(s)
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Waits for the server to close `s` (EOF or reset); the seconds it took, or `None` if the
/// connection was still open after `limit`.
fn closed_after(mut s: TcpStream, since: Instant, limit: Duration) -> Option<f64> {
    s.set_read_timeout(Some(limit.saturating_sub(since.elapsed()).max(Duration::from_millis(1)))).unwrap();
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(0) => Some(since.elapsed().as_secs_f64()),
        Ok(n) => panic!("unexpected bytes from the server: {}", String::from_utf8_lossy(&buf[..n])),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
        Err(_) => Some(since.elapsed().as_secs_f64()), // reset
    }
}

#[test]
fn stalled_request_heads_are_dropped_and_normal_requests_still_answered() {
    let server = serve();
    let addr = server.1.clone();
    // Twice as many stalled clients as connection slots, each with half a request head: half
    // wait in the listen backlog until the first half times out, then time out themselves.
    let start = Instant::now();
    let slow: Vec<TcpStream> = (0..2 * MAX_CONNECTIONS)
        .map(|_| {
            let mut s = connect(&addr);
            s.write_all(b"GET /health HTTP/1.1\r\nHost: te").unwrap();
            s
        })
        .collect();
    // Normal clients, queued behind them: answered once the stalled ones have been dropped.
    let normal = std::thread::spawn(move || {
        let (mut health, mut predict) = (connect(&addr), connect(&addr));
        let answers = [request(&mut health, "GET", "/health", b""), request(&mut predict, "POST", "/predict?k=2", &common::fixture_image("coffee.png"))];
        (answers, start.elapsed().as_secs_f64())
    });
    let limit = Duration::from_secs_f64(2.0 * HEADER_S + 3.0);
    let closed: Vec<Option<f64>> = std::thread::scope(|sc| {
        let waits: Vec<_> = slow.into_iter().map(|s| sc.spawn(move || closed_after(s, start, limit))).collect();
        waits.into_iter().map(|w| w.join().unwrap()).collect()
    });
    for (i, t) in closed.iter().enumerate() {
        let t = t.unwrap_or_else(|| panic!("stalled client {i} still connected after {limit:?}: {closed:?}"));
        assert!(t >= 0.9 * HEADER_S, "stalled client {i} dropped after {t:.2}s, before the header timeout: {closed:?}");
    }
    let ([health, predict], took) = normal.join().unwrap();
    assert_eq!((health.status, health.body.as_str()), (200, r#"{"status":"ok"}"#));
    assert_eq!(predict.status, 200, "{}", predict.body);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&predict.body).unwrap()["top"].as_array().unwrap().len(), 2);
    assert!(took < limit.as_secs_f64(), "normal requests took {took:.2}s");
    // And after: answered at once.
    let t = Instant::now();
    assert_eq!(request(&mut connect(&server.1), "GET", "/health", b"").status, 200);
    assert!(t.elapsed() < Duration::from_secs_f64(HEADER_S), "{:?}", t.elapsed());
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let server = serve();
    let mut s = connect(&server.1);
    assert_eq!(request(&mut s, "GET", "/health", b"").status, 200);
    // Waiting past the header timeout (but within the idle one) before the next request is fine.
    std::thread::sleep(Duration::from_secs_f64((HEADER_S + IDLE_S) / 2.0));
    assert_eq!(request(&mut s, "POST", "/predict", &common::fixture_image("coffee.png")).status, 200);
    let answered = Instant::now();
    let t = closed_after(s, answered, Duration::from_secs_f64(IDLE_S + 3.0)).expect("idle connection still open");
    assert!(t >= 0.9 * IDLE_S, "closed after {t:.2}s, before the idle timeout");
}

#[test]
fn a_request_past_the_timeout_gets_504_and_ctrl_c_stops_the_server() {
    let mut server = common::serve(common::fixture_bundle(), &["--timeout-s", "0.000001", "--decode-threads", "1"]);
    let answer = request(&mut connect(&server.1), "POST", "/predict", &common::fixture_image("coffee.png"));
    assert_eq!((answer.status, answer.header("content-type")), (504, Some("application/json")), "{}", answer.body);
    let error: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert!(error["error"].as_str().unwrap().contains("no answer within"), "{}", answer.body);
    // The server still answers, and Ctrl-C with a kept-alive connection open ends it cleanly.
    let mut s = connect(&server.1);
    assert_eq!(request(&mut s, "GET", "/health", b"").status, 200);
    assert!(ctrl_c(&mut server).success());
}

/// Sends SIGINT to the server; its exit status, within 10 s.
fn ctrl_c(server: &mut Server) -> std::process::ExitStatus {
    assert!(std::process::Command::new("kill").args(["-INT", &server.0.id().to_string()]).status().unwrap().success());
    let t = Instant::now();
    loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            return status;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "still running 10 s after Ctrl-C");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ctrl-C stops the server when its message cannot be written (`serve 2>&1 | tee log`, tee
/// stopped by the same Ctrl-C): a panicking write once left the stop unrequested.
#[test]
fn ctrl_c_stops_the_server_when_its_stderr_is_a_closed_pipe() {
    let mut server = common::serve_with_stderr(common::fixture_bundle(), "127.0.0.1:0", &[], std::process::Stdio::piped());
    drop(server.0.stderr.take());
    ctrl_c(&mut server);
}
