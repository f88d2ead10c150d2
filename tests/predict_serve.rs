//! `marnet export`, `predict` and `serve` on a model trained on emoji-food, with the real
//! encoders fetched by `scripts/fetch-assets` (skipped, with a message, when absent); and how
//! `predict` and `serve` refuse what they cannot do: arguments, inputs, requests (on the ViT
//! fixture's bundle, no fetched assets needed).

mod common;
use common::{Answer, Server, asset, ok};
use marnet::serve::heads::{MAX_HEAD, MAX_HEADERS, MAX_REQUEST_LINE};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

#[derive(Clone)]
struct Trained {
    cache: PathBuf,
    run: PathBuf,
    bundle: PathBuf,
    /// The test split's image files, in cache order.
    test_images: PathBuf,
}

/// Extracts a small emoji-food cache, trains MARNet briefly and exports a bundle (once per
/// test binary).
fn trained() -> Option<&'static Trained> {
    static T: OnceLock<Option<Trained>> = OnceLock::new();
    T.get_or_init(|| {
        let assets = asset("npm/emoji-datasource")?.parent()?.parent()?.to_path_buf();
        let dir = tempfile::tempdir().unwrap().keep();
        let s = |p: &Path| p.display().to_string();
        let (cache, run, bundle) = (dir.join("cache"), dir.join("run"), dir.join("bundle"));
        ok(&["extract", "--assets", &s(&assets), "--out", &s(&cache), "--limit", "24", "--batch", "8"]);
        ok(&["train", "--cache", &s(&cache), "--out", &s(&run), "--epochs", "3", "--hidden", "128", "--d", "64"]);
        ok(&["export", "--model", &s(&run), "--out", &s(&bundle), "--assets", &s(&assets)]);
        let test = marnet::features::FeatureCache::open(&cache).unwrap().test.unwrap();
        let apple = assets.join("npm/emoji-datasource-apple/img/apple/64");
        let list: Vec<String> = test.meta.ids.iter().map(|id| s(&apple.join(id.trim_start_matches("apple/")))).collect();
        let test_images = dir.join("test.txt");
        std::fs::write(&test_images, list.join("\n")).unwrap();
        Some(Trained { cache, run, bundle, test_images })
    })
    .as_ref()
}

/// `marnet predict --format jsonl` on the test images: (path, top class index) per line.
fn predicted(t: &Trained, extra: &[&str]) -> Vec<(String, u64)> {
    let mut args = vec!["predict", "--model", t.bundle.to_str().unwrap(), "--format", "jsonl"];
    args.extend(extra);
    args.push(t.test_images.to_str().unwrap());
    ok(&args)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["path"].as_str().unwrap().to_string(), v["top"][0]["index"].as_u64().unwrap())
        })
        .collect()
}

#[test]
fn predict_gives_the_classes_eval_computes_for_the_same_images() {
    let Some(t) = trained() else { return };
    let rows = t.cache.parent().unwrap().join("eval.jsonl");
    ok(&["eval", "--model", t.run.to_str().unwrap(), "--cache", t.cache.to_str().unwrap(), "--predictions", rows.to_str().unwrap()]);
    let eval: Vec<u64> =
        std::fs::read_to_string(&rows).unwrap().lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["predicted"].as_u64().unwrap()).collect();
    let pred: Vec<u64> = predicted(t, &[]).into_iter().map(|(_, c)| c).collect();
    assert_eq!(pred.len(), 24);
    assert_eq!(pred, eval);
    // Batch composition does not change an answer (per-image noise streams).
    let single: Vec<u64> = predicted(t, &["--batch", "1"]).into_iter().map(|(_, c)| c).collect();
    assert_eq!(single, eval);
    // Nor does the heads' batch, in eval or in a bundle (`--eval-batch`).
    let rows5 = t.cache.parent().unwrap().join("eval5.jsonl");
    let (run, cache) = (t.run.to_str().unwrap(), t.cache.to_str().unwrap());
    ok(&["eval", "--model", run, "--cache", cache, "--eval-batch", "5", "--predictions", rows5.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&rows5).unwrap(), std::fs::read_to_string(&rows).unwrap());
    let bundle5 = t.cache.parent().unwrap().join("bundle5");
    let assets = asset("npm/emoji-datasource").unwrap().parent().unwrap().parent().unwrap().to_path_buf();
    ok(&["export", "--model", run, "--out", bundle5.to_str().unwrap(), "--assets", assets.to_str().unwrap(), "--eval-batch", "5"]);
    let five = Trained { bundle: bundle5, ..t.clone() };
    let chunked: Vec<u64> = predicted(&five, &[]).into_iter().map(|(_, c)| c).collect();
    assert_eq!(chunked, eval);
}

#[test]
fn predict_reports_unreadable_files_and_goes_on() {
    let Some(t) = trained() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.png");
    std::fs::write(&bad, "not a png").unwrap();
    let good = std::fs::read_to_string(&t.test_images).unwrap().lines().next().unwrap().to_string();
    let out = common::marnet(&["predict", "--model", t.bundle.to_str().unwrap(), "--format", "csv", &good, bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let csv = String::from_utf8(out.stdout).unwrap();
    assert_eq!(csv.lines().count(), 1 + 5 + 1, "{csv}");
    assert!(csv.lines().last().unwrap().contains("cannot decode image"), "{csv}");
}

/// A minimal HTTP/1.1 client: one request on its own connection.
fn http(addr: &str, method: &str, path: &str, content_type: &str, body: &[u8]) -> Answer {
    let head =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    raw(addr, &[head.as_bytes(), body].concat())
}

/// Sends `request` as it is on a new connection; the answer.
fn raw(addr: &str, request: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).unwrap();
    let _ = s.write_all(request); // the server may answer (413, 414) before reading it all
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    common::read_answer(&mut resp.as_slice())
}

fn serve(bundle: &Path) -> Server {
    common::serve(bundle, &["--max-body-mib", "0.05"])
}

#[test]
fn serve_answers_like_predict_and_rejects_bad_requests() {
    let Some(t) = trained() else { return };
    let expected = predicted(t, &[]);
    let server = serve(&t.bundle);
    let addr = server.1.as_str();

    let a = http(addr, "GET", "/health", "text/plain", b"");
    assert_eq!((a.status, a.body.as_str()), (200, r#"{"status":"ok"}"#));
    let a = http(addr, "GET", "/model", "text/plain", b"");
    let info: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!((a.status, info["classes"].as_array().unwrap().len(), info["visual_encoder"].as_str()), (200, 128, Some("efficientnet-lite0")));

    let a = http(addr, "POST", "/predict", "image/png", b"\x89PNG\r\n\x1a\nthen garbage");
    assert_error(&a, 400, "cannot decode image");
    let a = http(addr, "POST", "/predict", "application/octet-stream", &vec![7u8; 200_000]);
    assert_error(&a, 413, "request body larger than the limit of 0.05 MiB (52428 bytes), which `marnet serve --max-body-mib` sets");

    // 50 concurrent requests, each a test image; every answer matches `marnet predict`.
    let answers: Vec<(u16, String, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let (path, want) = expected[i % expected.len()].clone();
                s.spawn(move || {
                    let a = http(addr, "POST", "/predict?k=3", "image/png", &std::fs::read(&path).unwrap());
                    (a.status, a.body, want)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (status, body, want) in answers {
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["top"].as_array().unwrap().len(), 3);
        assert_eq!(v["top"][0]["index"].as_u64(), Some(want), "{body}");
    }
    // The 50 images went through the encoder and the heads, and their time is accounted for.
    let Answer { status, body, .. } = http(addr, "GET", "/stats", "text/plain", b"");
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, stats["images"].as_u64()), (200, Some(50)), "{body}");
    let secs = |k: &str| stats["stages_s"][k].as_f64().unwrap_or(0.0);
    assert!(secs("encoder") > 0.0 && secs("heads") > 0.0, "{body}");
    assert!(secs("encoder") + secs("heads") <= stats["pass_s"].as_f64().unwrap(), "{body}");
}

/// Asserts that `a` is the JSON error `{"error": ...}` with `status`, its message containing `says`.
fn assert_error(a: &Answer, status: u16, says: &str) {
    assert_eq!((a.status, a.header("content-type")), (status, Some("application/json")), "{}", a.body);
    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", a.body));
    let msg = v["error"].as_str().unwrap_or_else(|| panic!("no `error` string: {}", a.body));
    assert!(msg.contains(says), "`{says}` not in: {msg}");
}

/// A request with these extra header lines (each ending in CRLF).
fn get_with(path: &str, headers: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n{headers}Connection: close\r\n\r\n").into_bytes()
}

#[test]
fn serve_answers_every_error_in_json() {
    let server = common::serve(common::fixture_bundle(), &["--max-body-mib", "0.05", "--top-k", "2"]);
    let addr = server.1.as_str();
    let img = common::fixture_image("cmyk.jpg");
    let predict = |query: &str, content_type: &str, body: &[u8]| http(addr, "POST", &format!("/predict{query}"), content_type, body);
    let top = |a: Answer| serde_json::from_str::<serde_json::Value>(&a.body).unwrap()["top"].as_array().map(|t| t.len());

    // `k`: at least 1 (the default --top-k, 2, when absent); beyond the 4 classes, all 4.
    let range = "query parameter `k` must be a whole number of at least 1 (the model has 4 classes; a larger `k` gives them all)";
    // Quoted as sent: `+` is not shown as the space it decodes to, nor `%2B` as `+`; digits only.
    for k in ["0", "abc", "-1", "1.5", "", "+3", "%2B3", "%203"] {
        assert_error(&predict(&format!("?k={k}"), "image/jpeg", &img), 400, &format!("{range}, not `{k}`"));
    }
    assert_eq!(top(predict("", "image/jpeg", &img)), Some(2));
    assert_eq!(top(predict("?k=1", "image/jpeg", &img)), Some(1));
    for k in ["99", "99999999999999999999999999"] {
        assert_eq!(top(predict(&format!("?k={k}"), "image/jpeg", &img)), Some(4), "k={k}");
    }
    // Other query parameters are refused, not ignored.
    assert_error(&predict("?top_k=3", "image/jpeg", &img), 400, "unknown query parameter `top_k`: /predict takes only `k`");
    assert_error(&predict("?k=1&k=2", "image/jpeg", &img), 400, "query parameter `k` given twice");
    assert_error(&http(addr, "GET", "/health?verbose=1", "text/plain", b""), 400, "unknown query parameter `verbose`: /health takes no query parameters");

    // Unknown routes and methods; a 405 keeps its Allow header.
    assert_error(&http(addr, "GET", "/nope", "text/plain", b""), 404, "no route GET /nope: the routes are POST /predict, GET /health");
    let a = http(addr, "GET", "/predict", "text/plain", b"");
    assert_error(&a, 405, "/predict does not take GET");
    assert_eq!(a.header("allow"), Some("POST"));
    let a = http(addr, "DELETE", "/model", "text/plain", b"");
    assert_error(&a, 405, "/model does not take DELETE");
    assert_eq!(a.header("allow"), Some("GET,HEAD"));

    // Bodies: empty, over the limit, not an image, multipart without a boundary, a file or an end.
    assert_error(&predict("", "image/png", b""), 400, "empty body");
    let too_large = "request body larger than the limit of 0.05 MiB (52428 bytes), which `marnet serve --max-body-mib` sets";
    assert_error(&predict("", "image/png", &vec![7u8; 60_000]), 413, too_large);
    assert_error(&predict("", "image/png", b"not an image"), 400, "cannot decode image");
    let as_form = predict("", "application/x-www-form-urlencoded", b"not an image");
    assert_error(&as_form, 400, "(the body came as a form: with curl, send the file with --data-binary @FILE, not -d)");
    assert_error(&predict("", "multipart/form-data", b"x"), 400, "boundary");
    let form = b"--XX\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n--XX--\r\n";
    assert_error(&predict("", "multipart/form-data; boundary=XX", form), 400, "no file part");
    let cut = b"--XX\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\nabc";
    assert_error(&predict("", "multipart/form-data; boundary=XX", cut), 400, "field \"image\" received with incomplete data");
    let big = [&b"--XX\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n"[..], &[7u8; 60_000], b"\r\n--XX--\r\n"].concat();
    assert_error(&predict("", "multipart/form-data; boundary=XX", &big), 413, too_large);
    // The file part: one with a filename, or the one named `image` without; other fields are
    // ignored, and a second file part is refused rather than ignored.
    let part = |name: &str, filename: Option<&str>, body: &[u8]| {
        let filename = filename.map(|f| format!("; filename=\"{f}\"")).unwrap_or_default();
        [format!("--XX\r\nContent-Disposition: form-data; name=\"{name}\"{filename}\r\n\r\n").as_bytes(), body, b"\r\n"].concat()
    };
    let form = |parts: &[Vec<u8>]| predict("", "multipart/form-data; boundary=XX", &[&parts.concat()[..], b"--XX--\r\n"].concat());
    assert_eq!(top(form(&[part("image", None, &img)])), Some(2));
    assert_eq!(top(form(&[part("note", None, b"hello"), part("photo", Some("a.jpg"), &img), part("tag", None, b"x")])), Some(2));
    assert_error(&form(&[part("photo", None, &img)]), 400, "no file part");
    let two = "send one image per request (found 2 file parts)";
    assert_error(&form(&[part("image", Some("a.jpg"), &img), part("image", Some("b.jpg"), &img)]), 400, two);
    assert_error(&form(&[part("image", None, &img), part("other", Some("b.jpg"), b"not read")]), 400, two);

    // Request heads hyper would refuse with a bare status line: over-long request lines (up to
    // hyper's own limit, 64 KiB, and beyond), too many or too large headers, malformed ones.
    for len in [MAX_REQUEST_LINE, 70_000] {
        let target = format!("/predict?k={}", "1".repeat(len));
        assert_error(&raw(addr, &get_with(&target, "")), 414, "request line longer than 8192 bytes");
    }
    let many = "X-A: b\r\n".repeat(MAX_HEADERS);
    assert_error(&raw(addr, &get_with("/health", &many)), 431, "more than 100 header lines");
    let large = format!("X-A: {}\r\n", "b".repeat(MAX_HEAD));
    assert_error(&raw(addr, &get_with("/health", &large)), 431, "request head larger than 65536 bytes");
    assert_error(&raw(addr, &get_with("/health", "Bad Header: x\r\n")), 400, "malformed request: invalid header name");
    assert_error(&raw(addr, b"GET /health HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), 400, "Content-Length `-1`");
    // Still serving.
    assert_eq!(http(addr, "GET", "/health", "text/plain", b"").status, 200);
}

/// Connections kept alive and pipelined: a refused head is answered after the requests before
/// it on its connection, whatever their bodies, and closes the connection.
#[test]
fn serve_refuses_a_head_after_the_requests_before_it_on_a_connection() {
    let server = common::serve(common::fixture_bundle(), &[]);
    let png = common::fixture_image("coffee.png");
    let mut s = TcpStream::connect(&server.1).unwrap();
    // A body by Content-Length, then one in chunks (with an extension and a trailer).
    s.write_all(format!("POST /predict?k=1 HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", png.len()).as_bytes()).unwrap();
    s.write_all(&png).unwrap();
    assert_eq!(common::read_answer(&mut s).status, 200);
    let (first, rest) = png.split_at(1000);
    let chunked = [
        &b"POST /predict?k=1 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        format!("{:x};x=y\r\n", first.len()).as_bytes(),
        first,
        format!("\r\n{:X}\r\n", rest.len()).as_bytes(),
        rest,
        b"\r\n0\r\nX-Trailer: t\r\n\r\n",
    ]
    .concat();
    s.write_all(&chunked).unwrap();
    assert_eq!(common::read_answer(&mut s).status, 200);
    // Two pipelined requests, the second too long: the first is answered, then the refusal.
    let long = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(MAX_REQUEST_LINE));
    s.write_all(&[&b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"[..], long.as_bytes()].concat()).unwrap();
    let health = common::read_answer(&mut s);
    assert_eq!((health.status, health.body.as_str()), (200, r#"{"status":"ok"}"#));
    let refused = common::read_answer(&mut s);
    assert_error(&refused, 414, "request line longer");
    assert_eq!(refused.header("connection"), Some("close"));
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "bytes after the refusal: {}", String::from_utf8_lossy(&rest));
}

#[test]
fn serve_binds_a_host_name_and_refuses_addresses_it_cannot_use() {
    let server = common::serve_on(common::fixture_bundle(), "localhost:0", &[]);
    assert_eq!(http(&server.1, "GET", "/health", "text/plain", b"").status, 200);
    for (addr, says) in [
        ("localhost", "--addr `localhost`: no port"),
        ("no-such-host.invalid:80", "--addr `no-such-host.invalid:80`: cannot resolve"),
        ("8080", "--addr `8080`: the host is missing (`127.0.0.1:8080` or `localhost:8080` for this machine only)"),
        ("http://localhost:8080", "--addr `http://localhost:8080`: `http://` is a URL scheme, not part of the address: drop it (`--addr localhost:8080`)"),
    ] {
        let out = common::marnet(&["serve", "--model", "no-bundle-needed", "--addr", addr]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says) && err.contains("e.g. 127.0.0.1:8080, localhost:8080"), "{err}");
    }
}

/// Counts, sizes and durations out of range are refused while parsing the arguments, naming
/// the option and its range; no bundle is read.
#[test]
fn predict_and_serve_refuse_options_out_of_range() {
    let (count, amount) = ("must be at least 1", "must be a finite number above 0");
    let cases: &[(&[&str], &str, &str)] = &[
        (&["predict", "--top-k", "0", "x.png"], "--top-k", count),
        (&["predict", "--batch", "0", "x.png"], "--batch", count),
        (&["serve", "--top-k", "0"], "--top-k", count),
        (&["serve", "--max-batch", "0"], "--max-batch", count),
        (&["serve", "--decode-threads", "0"], "--decode-threads", count),
        (&["serve", "--max-connections", "0"], "--max-connections", count),
        (&["serve", "--timeout-s", "0"], "--timeout-s", amount),
        (&["serve", "--header-timeout-s=-1"], "--header-timeout-s", amount),
        (&["serve", "--idle-timeout-s", "NaN"], "--idle-timeout-s", amount),
        (&["serve", "--max-body-mib", "inf"], "--max-body-mib", amount),
    ];
    for (args, option, range) in cases {
        let out = common::marnet(&[&args[..1], &["--model", "no-bundle"], &args[1..]].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(option) && err.contains(range), "{args:?}: {err}");
    }
}

#[test]
fn predict_finding_no_images_is_an_error_naming_where_it_looked() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, list) = (tmp.path().join("photos"), tmp.path().join("list.txt"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("notes.md"), "").unwrap();
    std::fs::write(&list, "").unwrap();
    let out = common::marnet(&["predict", "--model", "no-bundle", dir.to_str().unwrap(), list.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    for want in [dir.to_str().unwrap(), list.to_str().unwrap(), ".png, .jpg, .jpeg, .webp"] {
        assert!(err.contains(want), "`{want}` not in: {err}");
    }
}

/// Ctrl-C on `serve` says what a server does (not "the current step", which is training's), and
/// the server stops cleanly.
#[test]
fn serve_says_on_ctrl_c_that_it_finishes_the_requests_in_flight() {
    use std::io::Read;
    let mut server = common::serve_with_stderr(common::fixture_bundle(), "127.0.0.1:0", &[], std::process::Stdio::piped());
    assert!(std::process::Command::new("kill").args(["-INT", &server.0.id().to_string()]).status().unwrap().success());
    let mut stderr = String::new();
    server.0.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(server.0.wait().unwrap().success(), "{stderr}");
    assert!(stderr.contains("interrupt: stopping: finishing the requests in flight"), "{stderr}");
    assert!(!stderr.contains("current step"), "{stderr}");
}

/// A training run given where a bundle goes (`predict`, `serve`) is refused with the `export`
/// command that makes one; a bundle given to `eval` without `--cache` is refused saying what
/// eval needs, and with `--cache` it is evaluated.
#[test]
fn a_run_and_a_bundle_given_for_each_other_say_which_is_needed() {
    let bundle = common::fixture_bundle();
    let dir = bundle.parent().unwrap();
    let (run, cache) = (dir.join("run"), dir.join("cache"));
    let (run, bundle, cache) = (run.to_str().unwrap(), bundle.to_str().unwrap(), cache.to_str().unwrap());
    let is_run = format!("{run} is a training run, not a bundle: make one with `marnet export --model {run} --out BUNDLE`");
    let image = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/images/cmyk.jpg");
    for args in [&["predict", "--model", run, image][..], &["serve", "--model", run, "--addr", "127.0.0.1:0"]] {
        let out = common::marnet(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(&is_run), "{args:?}: {err}");
    }
    let out = common::marnet(&["eval", "--model", bundle]);
    let err = String::from_utf8_lossy(&out.stderr);
    let is_bundle =
        format!("{bundle} is a bundle made by `export`; eval needs the training run folder (or pass --cache CACHE to evaluate the bundle's heads on a cache)");
    assert!(!out.status.success() && err.contains(&is_bundle), "{err}");
    let on_cache = ok(&["eval", "--model", bundle, "--cache", cache, "--split", "val"]);
    let by_run = ok(&["eval", "--model", run, "--cache", cache, "--split", "val"]);
    let rows = |t: &str| t.lines().filter(|l| l.starts_with("| val")).map(str::to_string).collect::<Vec<_>>();
    assert!(!rows(&on_cache).is_empty() && rows(&on_cache) == rows(&by_run), "bundle:\n{on_cache}\nrun:\n{by_run}");
}
