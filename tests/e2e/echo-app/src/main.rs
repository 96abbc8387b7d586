//! The end-to-end tests' app (`sidekey-echo`): answers every request with what it received,
//! as JSON: `{"app": "sidekey-echo", "method", "path", "headers": {lower-case name: value}}`.
//! A request through sidekey-proxy shows the identity headers the proxy added
//! (`x-forwarded-email`, `x-forwarded-user`, ...); a request that reached the app directly
//! shows none.
//!
//! `sidekey-echo [ADDRESS]` (default `0.0.0.0:8080`). One thread per connection, one request
//! per connection (`Connection: close`). Exits at once on SIGTERM (it is PID 1 of its pod).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

const MAX_HEAD: usize = 64 * 1024;

fn main() {
    on_sigterm_exit();
    let addr = std::env::args().nth(1).unwrap_or_else(|| "0.0.0.0:8080".into());
    let listener = TcpListener::bind(&addr).unwrap_or_else(|e| {
        eprintln!("sidekey-echo: cannot listen on {addr}: {e}");
        std::process::exit(1);
    });
    eprintln!("sidekey-echo: listening on {addr}");
    for conn in listener.incoming().flatten() {
        std::thread::spawn(move || {
            if let Err(e) = serve(conn) {
                eprintln!("sidekey-echo: {e}");
            }
        });
    }
}

fn serve(conn: TcpStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    let mut head = line.len();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        head += line.len();
        if head > MAX_HEAD {
            return respond(conn, 431, "{\"error\":\"request head too large\"}");
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        if let Some((name, value)) = l.split_once(':') {
            let entry = headers.entry(name.trim().to_ascii_lowercase()).or_default();
            if !entry.is_empty() {
                entry.push_str(", ");
            }
            entry.push_str(value.trim());
        }
    }
    // Read (and drop) a body, so the client sees a response rather than a reset.
    let length: u64 = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    std::io::copy(&mut reader.by_ref().take(length.min(1 << 20)), &mut std::io::sink())?;
    let mut body = String::from("{\"app\":\"sidekey-echo\",\"method\":");
    json_string(&mut body, &method);
    body.push_str(",\"path\":");
    json_string(&mut body, &target);
    body.push_str(",\"headers\":{");
    for (i, (k, v)) in headers.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        json_string(&mut body, k);
        body.push(':');
        json_string(&mut body, v);
    }
    body.push_str("}}\n");
    respond(conn, 200, &body)
}

fn respond(mut conn: TcpStream, status: u16, body: &str) -> std::io::Result<()> {
    let reason = if status == 200 { "OK" } else { "Request Header Fields Too Large" };
    write!(
        conn,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '<' || c == '>' || c == '&' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// PID 1 gets no default action for SIGTERM: without a handler the kubelet would wait out
/// the grace period on every rollout. std has no signal API, so the two libc calls by hand.
fn on_sigterm_exit() {
    unsafe extern "C" {
        fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
        fn _exit(status: i32) -> !;
    }
    extern "C" fn exit_now(_: i32) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { _exit(0) }
    }
    const SIGTERM: i32 = 15;
    const SIGINT: i32 = 2;
    // SAFETY: installs a handler that only calls an async-signal-safe function.
    unsafe {
        signal(SIGTERM, exit_now);
        signal(SIGINT, exit_now);
    }
}
