//! Open-loop load generator for the sense-ingest bench: sends bench/traffic.py's pool at a fixed
//! arrival rate and measures each request's latency from its *scheduled* send time, so a slow
//! server cannot slow the generator down and hide its own queueing (coordinated omission).
//!
//! Why not `oha -q`: its `-Z` picks body lines at random (repeated message ids), it sends one URL
//! per run (the bench spreads events over sources and event suffixes), and it cannot tell which
//! requests were acknowledged, which the 0-lost check needs. This tool expands the same templates
//! as bench/traffic.lua (fresh ids from a counter) and writes the acknowledged message ids.
//!
//! A dedicated OS thread keeps the schedule (std sleep, ~50 µs slack, not tokio's 1 ms timer
//! wheel); up to `--connections` keep-alive HTTP/1.1 connections each carry one request at a
//! time. Output: one JSON object on stdout.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};

struct Args {
    addr: String,
    deployment: String,
    pool: String,
    route: String,
    tag: String,
    thread: u32,
    rate: f64,
    duration: f64,
    connections: usize,
    acked: String,
}

fn parse_args() -> Result<Args, String> {
    let mut map = BTreeMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(key) = it.next() {
        let name = key
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected argument {key}"))?
            .to_string();
        let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
        map.insert(name, value);
    }
    let mut get = |name: &str, default: Option<&str>| -> Result<String, String> {
        map.remove(name)
            .or_else(|| default.map(str::to_string))
            .ok_or_else(|| format!("--{name} is required"))
    };
    let number = |name: &str, text: String| -> Result<f64, String> {
        text.parse::<f64>()
            .map_err(|_| format!("--{name}: not a number: {text}"))
    };
    let args = Args {
        addr: get("addr", None)?,
        deployment: get("deployment", None)?,
        pool: get("pool", None)?,
        route: get("route", Some("webhook"))?,
        tag: get("tag", None)?,
        thread: number("thread", get("thread", Some("15"))?)? as u32,
        rate: number("rate", get("rate", None)?)?,
        duration: number("duration", get("duration", None)?)?,
        connections: number("connections", get("connections", Some("256"))?)? as usize,
        acked: get("acked", None)?,
    };
    if let Some(extra) = map.keys().next() {
        return Err(format!("unknown option --{extra}"));
    }
    if args.rate <= 0.0 || args.duration <= 0.0 || args.connections == 0 {
        return Err("--rate, --duration and --connections must be positive".into());
    }
    if args.thread > 15 || args.tag.len() != 4 {
        return Err("--thread is one hex digit (0-15) and --tag four hex digits".into());
    }
    Ok(args)
}

enum Part {
    Text(String),
    Back(u64),
}

struct Template {
    kind: u8,
    instance: usize,
    path: String,
    parts: Vec<Part>,
}

fn split_slots(body: &str) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut rest = body;
    while let Some(start) = rest.find("@R") {
        let after = &rest[start + 2..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || after.as_bytes().get(digits) != Some(&b'@') {
            parts.push(Part::Text(rest[..start + 2].to_string()));
            rest = after;
            continue;
        }
        parts.push(Part::Text(rest[..start].to_string()));
        parts.push(Part::Back(after[..digits].parse().unwrap_or(0)));
        rest = &after[digits + 1..];
    }
    parts.push(Part::Text(rest.to_string()));
    parts
}

fn load(args: &Args) -> Result<(Vec<String>, Vec<Template>), String> {
    let prefix = match args.route.as_str() {
        "webhook" => "/api/webhooks/evolution/",
        "null" => "/bench/null/",
        "naive" => "/bench/naive/",
        other => return Err(format!("--route: webhook, null or naive, not {other}")),
    };
    let read = |path: &str| std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"));
    let mut secrets = Vec::new();
    let mut names = Vec::new();
    for line in read(&args.deployment)?.lines() {
        let mut cols = line.split('\t');
        if let (Some(secret), Some(name)) = (cols.next(), cols.next()) {
            secrets.push(secret.to_string());
            names.push(name.to_string());
        }
    }
    let mut pool = Vec::new();
    for line in read(&args.pool)?.lines() {
        let cols: Vec<&str> = line.splitn(4, '\t').collect();
        if cols.len() != 4 {
            return Err(format!("{}: bad template line", args.pool));
        }
        let instance: usize = cols[1].parse().map_err(|_| "bad instance index")?;
        let secret = secrets.get(instance).ok_or("instance index out of range")?;
        pool.push(Template {
            kind: cols[0].bytes().next().unwrap_or(b'?'),
            instance,
            path: format!("{prefix}{secret}/{}", cols[2].replace('.', "-")),
            parts: split_slots(cols[3]),
        });
    }
    if pool.is_empty() {
        return Err("empty pool".into());
    }
    Ok((names, pool))
}

struct Gen {
    host: String,
    tag: String,
    thread: u32,
    pool: Vec<Template>,
}

impl Gen {
    fn id(&self, n: u64) -> String {
        format!("3EB0{}{:X}{:011X}", self.tag, self.thread, n)
    }

    /// Request `n` (bytes), its template and its own message id.
    fn request(&self, n: u64) -> (Vec<u8>, &Template, String) {
        let t = &self.pool[(n % self.pool.len() as u64) as usize];
        let own = self.id(n);
        let mut body = String::with_capacity(2048);
        for part in &t.parts {
            match part {
                Part::Text(s) => body.push_str(s),
                Part::Back(0) => body.push_str(&own),
                Part::Back(b) => body.push_str(&self.id(n.saturating_sub(*b))),
            }
        }
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Accept: application/json, text/plain, */*\r\nUser-Agent: axios/1.12.2\r\n\
             X-Request-Id: {}.{}.{}\r\nContent-Length: {}\r\n\r\n",
            t.path,
            self.host,
            t.kind as char,
            t.instance,
            own,
            body.len()
        );
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.as_bytes());
        (bytes, t, own)
    }
}

struct Outcome {
    latency_us: u64,
    status: u16,
    acked: Option<(usize, String)>,
}

/// One request on `conn` (reconnecting if there is none). Status 0 = transport error.
async fn exchange(
    conn: &mut Option<TcpStream>,
    addr: &str,
    bytes: &[u8],
    buf: &mut Vec<u8>,
) -> Result<(u16, Option<String>), String> {
    if conn.is_none() {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        *conn = Some(stream);
    }
    let stream = conn.as_mut().expect("connected above");
    stream.write_all(bytes).await.map_err(|e| e.to_string())?;
    buf.clear();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let header_len = match response.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => continue,
            Err(e) => return Err(format!("bad response: {e}")),
        };
        let mut length = None;
        let mut echo = None;
        let mut close = false;
        for h in response.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok());
            } else if h.name.eq_ignore_ascii_case("x-request-id") {
                echo = Some(String::from_utf8_lossy(h.value).into_owned());
            } else if h.name.eq_ignore_ascii_case("connection") {
                close = h.value.eq_ignore_ascii_case(b"close");
            }
        }
        let status = response.code.unwrap_or(0);
        let length: usize = length.ok_or("response without content-length")?;
        while buf.len() < header_len + length {
            let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed mid-body".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        if close {
            *conn = None;
        }
        return Ok((status, echo));
    }
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sense-loadgen: {e}");
            std::process::exit(2);
        }
    };
    let (names, pool) = match load(&args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("sense-loadgen: {e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(args, names, pool));
}

async fn run(args: Args, names: Vec<String>, pool: Vec<Template>) {
    let total = (args.rate * args.duration).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let gen = Arc::new(Gen {
        host: args.addr.clone(),
        tag: args.tag.clone(),
        thread: args.thread,
        pool,
    });
    let start = Instant::now() + Duration::from_millis(50);
    let (tx, rx) = mpsc::unbounded_channel::<u64>();
    let rx = Arc::new(Mutex::new(rx));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Outcome>();

    // The clock: hands out request numbers at their scheduled times.
    let clock = std::thread::spawn(move || {
        for n in 0..total {
            let due = start + interval.mul_f64(n as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if tx.send(n).is_err() {
                break;
            }
        }
    });

    let mut workers = Vec::new();
    for _ in 0..args.connections {
        let rx = rx.clone();
        let gen = gen.clone();
        let done = done_tx.clone();
        let addr = args.addr.clone();
        workers.push(tokio::spawn(async move {
            let mut conn: Option<TcpStream> = None;
            let mut buf = Vec::with_capacity(4096);
            loop {
                let next = rx.lock().await.recv().await;
                let Some(n) = next else { break };
                let due = start + interval.mul_f64(n as f64);
                let (bytes, t, own) = gen.request(n);
                let result = exchange(&mut conn, &addr, &bytes, &mut buf).await;
                let latency_us = due.elapsed().as_micros() as u64;
                let outcome = match result {
                    Ok((status, echo)) => {
                        let wanted = format!("{}.{}.{}", t.kind as char, t.instance, own);
                        // 2xx for a message whose echo names it: acknowledged. An echo that
                        // names another request would mean responses crossed: never count it.
                        let acked = ((200..300).contains(&status)
                            && t.kind == b'm'
                            && echo.as_deref().is_none_or(|e| e == wanted))
                        .then_some((t.instance, own));
                        Outcome {
                            latency_us,
                            status,
                            acked,
                        }
                    }
                    Err(_) => {
                        conn = None;
                        Outcome {
                            latency_us,
                            status: 0,
                            acked: None,
                        }
                    }
                };
                if done.send(outcome).is_err() {
                    break;
                }
            }
        }));
    }
    drop(done_tx);

    let mut latencies = Vec::with_capacity(total as usize);
    let mut codes: BTreeMap<u16, u64> = BTreeMap::new();
    let mut acked_out = std::io::BufWriter::new(
        std::fs::File::create(&args.acked).expect("cannot create the acked file"),
    );
    while let Some(o) = done_rx.recv().await {
        *codes.entry(o.status).or_default() += 1;
        if o.status != 0 {
            latencies.push(o.latency_us);
        }
        if let Some((instance, id)) = o.acked {
            writeln!(acked_out, "{}\t{}", names[instance], id).expect("write acked");
        }
    }
    acked_out.flush().expect("flush acked");
    let elapsed = start.elapsed().as_secs_f64();
    clock.join().expect("clock thread");
    for w in workers {
        let _ = w.await;
    }
    latencies.sort_unstable();
    let completed = latencies.len();
    let code_list: Vec<String> = codes
        .iter()
        .map(|(code, n)| {
            format!(
                "\"{}\": {n}",
                if *code == 0 {
                    "error".to_string()
                } else {
                    code.to_string()
                }
            )
        })
        .collect();
    println!(
        "{{\"rate\": {}, \"duration_s\": {}, \"requests\": {total}, \"completed\": {completed}, \
         \"elapsed_s\": {elapsed:.3}, \"achieved_rps\": {:.1}, \"codes\": {{{}}}, \
         \"latency_ms\": {{\"p50\": {:.3}, \"p90\": {:.3}, \"p99\": {:.3}, \"p999\": {:.3}, \"max\": {:.3}}}}}",
        args.rate,
        args.duration,
        completed as f64 / elapsed,
        code_list.join(", "),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.90),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
        percentile(&latencies, 1.0),
    );
}
