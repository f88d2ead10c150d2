//! Request heads checked before hyper parses them, so that an over-long or malformed one gets a
//! JSON answer like every other error: hyper answers those itself (400, 414, 431) with a bare
//! status line, before any service sees the request.
//!
//! A [`Gate`] follows a connection's input as HTTP/1.1 frames it. It holds each request head
//! back until the head is complete, checks it, and only then lets it through; it lets each body
//! through as it comes, counting it by its `Content-Length` or its chunks, to know where the next
//! head starts. A head over [`MAX_REQUEST_LINE`], [`MAX_HEAD`] or [`MAX_HEADERS`] is refused as
//! soon as it passes the limit, a complete one that hyper would refuse as malformed (httparse's
//! syntax, the target, `Content-Length` and `Transfer-Encoding` as hyper reads them) once it is
//! complete; a refused head never reaches hyper. The limits are well inside hyper's own (a 64 KiB
//! target, a ~400 KiB buffer, 100 headers), which are thus never reached by a head the gate saw.
//!
//! Where the gate cannot follow the stream (a chunked body it cannot parse, which hyper then
//! fails, closing the connection) it lets everything through from then on, unchecked.

use axum::http::StatusCode;

/// Longest request line (method, target, version), bytes: beyond it, 414.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;
/// Largest request head (request line and headers), bytes: beyond it, 431.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header lines in a request: beyond them, 431 (hyper's own limit).
pub const MAX_HEADERS: usize = 100;

/// A refused request head: the answer it gets.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Refusal {
    /// Which request of the connection (1 for its first).
    pub request: u64,
    pub status: StatusCode,
    pub message: String,
}

/// Where a connection's input stands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// In a request head (held back): where its current line starts, and its lines so far.
    Head { line_start: usize, lines: usize },
    /// In a body of this many more bytes.
    Body(u64),
    /// In a chunked body.
    Chunked(Chunk),
    /// Following the stream no longer: everything passes, unchecked.
    Through,
    /// A head was refused: nothing passes any more.
    Refused,
}

/// Where a chunked body stands (RFC 9112 7.1), strictly: anything else ends the gate's watch.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunk {
    /// The chunk size so far, and whether it has a digit.
    Size(u64, bool),
    /// A chunk extension, after the size.
    Extension(u64),
    /// The size line's CR seen.
    SizeLf(u64),
    /// Chunk data, this many more bytes.
    Data(u64),
    DataCr,
    DataLf,
    /// The trailer section: the current line's length.
    Trailer(usize),
    /// A trailer line's CR seen (the line was empty if true).
    TrailerLf(bool),
}

/// Follows one connection's request stream; see the module doc.
pub(super) struct Gate {
    state: State,
    /// The head being received.
    held: Vec<u8>,
    /// Heads let through so far.
    heads: u64,
}

impl Default for Gate {
    fn default() -> Self {
        Gate { state: NEW_HEAD, held: Vec::new(), heads: 0 }
    }
}

const NEW_HEAD: State = State::Head { line_start: 0, lines: 0 };

impl Gate {
    /// Takes bytes the client sent; appends to `out` those that may go on to hyper (whatever
    /// of a head is incomplete is held back). A head refused is answered by the [`Refusal`]
    /// returned; from then on nothing passes.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Option<Refusal> {
        while !input.is_empty() {
            let used = match self.state {
                State::Through => {
                    out.extend_from_slice(input);
                    input.len()
                }
                State::Refused => input.len(),
                State::Body(left) => {
                    let used = input.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    self.state = if left == used as u64 { NEW_HEAD } else { State::Body(left - used as u64) };
                    out.extend_from_slice(&input[..used]);
                    used
                }
                State::Chunked(chunk) => {
                    let (used, next) = chunked(chunk, input);
                    self.state = next;
                    out.extend_from_slice(&input[..used]);
                    used
                }
                State::Head { .. } => match self.head(input) {
                    Ok((used, complete)) => {
                        if complete {
                            out.append(&mut self.held);
                        }
                        used
                    }
                    Err(refusal) => {
                        self.state = State::Refused;
                        self.held = Vec::new();
                        return Some(refusal);
                    }
                },
            };
            input = &input[used..];
        }
        None
    }

    /// The client closed its side: whatever is held goes on (hyper sees the incomplete head, as
    /// it would have), and the gate lets everything through from now on.
    pub fn finish(&mut self) -> Vec<u8> {
        if self.state != State::Refused {
            self.state = State::Through;
        }
        std::mem::take(&mut self.held)
    }

    /// Takes head bytes up to the head's end: the bytes used and whether the head is complete,
    /// or the head's refusal. At the end the state moves on to the body (or the next head), with
    /// the head left in `held`.
    fn head(&mut self, input: &[u8]) -> Result<(usize, bool), Refusal> {
        let State::Head { mut line_start, mut lines } = self.state else { unreachable!("called in a head") };
        for (i, &b) in input.iter().enumerate() {
            self.held.push(b);
            if b == b'\n' {
                let line = &self.held[line_start..self.held.len() - 1];
                let empty = line.is_empty() || line == b"\r";
                line_start = self.held.len();
                if empty && lines > 0 {
                    self.state = self.check()?;
                    self.heads += 1;
                    return Ok((i + 1, true));
                }
                // Empty lines before a request line are skipped, as hyper does.
                lines += usize::from(!empty);
                if lines > MAX_HEADERS + 1 {
                    return Err(self.refuse(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, format!("more than {MAX_HEADERS} header lines")));
                }
            } else if lines == 0 && self.held.len() - line_start > MAX_REQUEST_LINE {
                return Err(self.refuse(StatusCode::URI_TOO_LONG, format!("request line longer than {MAX_REQUEST_LINE} bytes")));
            }
            if self.held.len() > MAX_HEAD {
                return Err(self.refuse(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, format!("request head larger than {MAX_HEAD} bytes")));
            }
        }
        self.state = State::Head { line_start, lines };
        Ok((input.len(), false))
    }

    fn refuse(&self, status: StatusCode, message: String) -> Refusal {
        Refusal { request: self.heads + 1, status, message }
    }

    /// Checks the complete head in `held` as hyper will parse it; what follows it.
    fn check(&self) -> Result<State, Refusal> {
        let bad = |why: String| self.refuse(StatusCode::BAD_REQUEST, format!("malformed request: {why}"));
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&self.held) {
            Ok(httparse::Status::Complete(n)) if n == self.held.len() => {}
            // Not where the gate saw the head end: leave the stream to hyper.
            Ok(_) => return Ok(State::Through),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(self.refuse(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, format!("more than {MAX_HEADERS} header lines")));
            }
            Err(e) => return Err(bad(e.to_string())),
        }
        let target = req.path.unwrap_or_default();
        if let Err(e) = axum::http::Uri::try_from(target) {
            return Err(bad(format!("request target `{}`: {e}", target.escape_debug())));
        }
        // The body's framing, by hyper's rules: the last Transfer-Encoding decides and overrides
        // any Content-Length; repeated Content-Lengths must agree.
        let (mut chunked, mut length): (Option<bool>, Option<u64>) = (None, None);
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                if req.version == Some(0) {
                    return Err(bad("Transfer-Encoding in an HTTP/1.0 request".into()));
                }
                chunked = Some(last_coding_is_chunked(h.value));
                length = None;
            } else if h.name.eq_ignore_ascii_case("content-length") && chunked.is_none() {
                let n = digits(h.value).ok_or_else(|| bad(format!("Content-Length `{}`", String::from_utf8_lossy(h.value))))?;
                if length.is_some_and(|m| m != n) {
                    return Err(bad("Content-Length headers that disagree".into()));
                }
                length = Some(n);
            }
        }
        Ok(match (chunked, length) {
            (Some(false), _) => return Err(bad("Transfer-Encoding whose last coding is not chunked".into())),
            (Some(true), _) => State::Chunked(Chunk::Size(0, false)),
            (None, Some(n)) if n > 0 => State::Body(n),
            (None, _) => NEW_HEAD,
        })
    }
}

/// A Content-Length value as hyper reads it: decimal digits only, no sign, no overflow.
fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| if b.is_ascii_digit() { n.checked_mul(10)?.checked_add(u64::from(b - b'0')) } else { None })
}

/// Whether a Transfer-Encoding line ends in `chunked`, as hyper reads it (visible ASCII only).
fn last_coding_is_chunked(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (32..127).contains(&b))
        && std::str::from_utf8(v).ok().and_then(|s| s.rsplit(',').next()).is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
}

/// Follows a chunked body through `input`: the bytes it used, and the state after them (the
/// next head once the body ends, [`State::Through`] on anything unexpected).
fn chunked(mut at: Chunk, input: &[u8]) -> (usize, State) {
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        i += 1;
        at = match at {
            Chunk::Data(left) => {
                let take = (input.len() - i + 1).min(usize::try_from(left).unwrap_or(usize::MAX));
                i += take - 1;
                if left == take as u64 { Chunk::DataCr } else { Chunk::Data(left - take as u64) }
            }
            Chunk::Size(n, digit) => match (b as char).to_digit(16) {
                Some(d) => match n.checked_mul(16) {
                    Some(n) => Chunk::Size(n + u64::from(d), true),
                    None => return (i, State::Through),
                },
                None if digit && b == b'\r' => Chunk::SizeLf(n),
                None if digit && matches!(b, b';' | b' ' | b'\t') => Chunk::Extension(n),
                None => return (i, State::Through),
            },
            Chunk::Extension(n) => match b {
                b'\r' => Chunk::SizeLf(n),
                b'\n' => return (i, State::Through),
                _ => Chunk::Extension(n),
            },
            Chunk::SizeLf(0) if b == b'\n' => Chunk::Trailer(0),
            Chunk::SizeLf(n) if b == b'\n' => Chunk::Data(n),
            Chunk::DataCr if b == b'\r' => Chunk::DataLf,
            Chunk::DataLf if b == b'\n' => Chunk::Size(0, false),
            Chunk::Trailer(len) if b == b'\r' => Chunk::TrailerLf(len == 0),
            Chunk::Trailer(len) if b != b'\n' => Chunk::Trailer(len + 1),
            Chunk::TrailerLf(true) if b == b'\n' => return (i, NEW_HEAD),
            Chunk::TrailerLf(false) if b == b'\n' => Chunk::Trailer(0),
            _ => return (i, State::Through),
        };
    }
    (i, State::Chunked(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes: what passed, and the refusal if any.
    fn run(input: &[u8], step: usize) -> (Vec<u8>, Option<Refusal>) {
        let (mut gate, mut out) = (Gate::default(), Vec::new());
        for piece in input.chunks(step) {
            if let Some(r) = gate.feed(piece, &mut out) {
                return (out, Some(r));
            }
        }
        (out, None)
    }

    /// Every split of the input gives the same result as one piece.
    fn all_steps(input: &[u8]) -> (Vec<u8>, Option<Refusal>) {
        let whole = run(input, input.len().max(1));
        for step in [1, 2, 3, 7, 64] {
            assert_eq!(run(input, step), whole, "in pieces of {step}");
        }
        whole
    }

    fn refused(input: &[u8]) -> Refusal {
        let (out, refusal) = all_steps(input);
        refusal.unwrap_or_else(|| panic!("not refused; passed {:?}", String::from_utf8_lossy(&out)))
    }

    const GET: &[u8] = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";

    #[test]
    fn requests_and_bodies_pass_whole_and_unchanged() {
        let chunked = b"POST /predict HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4;ext=1\r\nabcd\r\n0\r\nTrailer: t\r\n\r\n";
        let sized = b"\r\nPOST /predict?k=2 HTTP/1.1\nContent-Length: 5\n\nhello";
        let stream = [GET, chunked, sized, GET].concat();
        assert_eq!(all_steps(&stream), (stream.clone(), None));
        // The gate counted four requests: a fifth that is refused is the fifth.
        let long = [stream.as_slice(), b"GET /", &[b'a'; MAX_REQUEST_LINE]].concat();
        assert_eq!(refused(&long).request, 5);
    }

    #[test]
    fn an_incomplete_head_is_held_back_until_it_ends() {
        let (mut gate, mut out) = (Gate::default(), Vec::new());
        assert_eq!(gate.feed(&GET[..GET.len() - 2], &mut out), None);
        assert!(out.is_empty());
        assert_eq!(gate.finish(), &GET[..GET.len() - 2]);
    }

    #[test]
    fn over_long_heads_are_refused_with_their_status() {
        let line = [b"GET /predict?k=", &[b'1'; MAX_REQUEST_LINE][..]].concat();
        let r = refused(&line);
        assert_eq!((r.status, r.request), (StatusCode::URI_TOO_LONG, 1));
        assert!(r.message.contains("8192"), "{}", r.message);
        let many: Vec<u8> = [&b"GET / HTTP/1.1\r\n"[..], &b"X: y\r\n".repeat(MAX_HEADERS + 1)].concat();
        assert_eq!(refused(&many).status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let big = [&b"GET / HTTP/1.1\r\nX: "[..], &[b'v'; MAX_HEAD]].concat();
        assert_eq!(refused(&big).status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        // At the limits, not beyond: through.
        let most = [&b"GET / HTTP/1.1\r\n"[..], &b"X: y\r\n".repeat(MAX_HEADERS), b"\r\n"].concat();
        assert_eq!(all_steps(&most), (most.clone(), None));
    }

    #[test]
    fn malformed_heads_are_refused_with_400() {
        for (head, why) in [
            (&b"GET /\x01 HTTP/1.1\r\n\r\n"[..], "malformed request"),
            (b"GET / HTTP/2.5\r\n\r\n", "version"),
            (b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", "header name"),
            (b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n", "Content-Length `+5`"),
            (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", "disagree"),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", "not chunked"),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "HTTP/1.0"),
        ] {
            let r = refused(head);
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
            assert!(r.message.contains(why), "{why}: {}", r.message);
        }
    }

    #[test]
    fn a_chunked_body_it_cannot_follow_passes_unchecked() {
        let stream = [&b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..], b"GET /", &[b'a'; MAX_REQUEST_LINE]].concat();
        assert_eq!(all_steps(&stream), (stream.clone(), None));
    }
}
