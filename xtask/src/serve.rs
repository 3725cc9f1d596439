//! A static file server for the demo page on 127.0.0.1 (WebGPU needs a secure context, and
//! localhost is one). std only: GET and HEAD of files under one folder.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A server running on a background thread until dropped.
pub struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves `folder` on 127.0.0.1:`port` (0: any free port).
    pub fn start(folder: &Path, port: u16) -> Result<Self, String> {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let folder = folder.to_path_buf();
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(stream) = stream {
                    let folder = folder.clone();
                    std::thread::spawn(move || handle(stream, &folder));
                }
            }
        });
        Ok(Self {
            port,
            stop,
            thread: Some(thread),
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves until the process is stopped.
pub fn serve_forever(folder: &Path, port: u16) -> Result<(), String> {
    let server = Server::start(folder, port)?;
    println!(
        "serving {} at http://127.0.0.1:{}/ (Ctrl-C to stop)",
        folder.display(),
        server.port()
    );
    loop {
        std::thread::park();
    }
}

fn handle(stream: TcpStream, folder: &Path) {
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // Drain the headers.
    let mut header = String::new();
    while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
        header.clear();
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or("/");
    let path = target.split(['?', '#']).next().unwrap_or("/");
    let response = match (method, resolve(folder, path)) {
        ("GET" | "HEAD", Some(file)) => match std::fs::read(&file) {
            Ok(body) => (200, "OK", content_type(&file), body),
            Err(_) => not_found(),
        },
        ("GET" | "HEAD", None) => not_found(),
        _ => (
            405,
            "Method Not Allowed",
            "text/plain",
            b"GET or HEAD only\n".to_vec(),
        ),
    };
    let (code, reason, kind, body) = response;
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut stream = stream;
    let _ = stream.write_all(head.as_bytes());
    if method != "HEAD" {
        let _ = stream.write_all(&body);
    }
}

fn not_found() -> (u16, &'static str, &'static str, Vec<u8>) {
    (404, "Not Found", "text/plain", b"not found\n".to_vec())
}

/// The file under `folder` for a URL path, refusing anything that climbs out of it.
fn resolve(folder: &Path, url_path: &str) -> Option<PathBuf> {
    let relative = Path::new(url_path.trim_start_matches('/'));
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return None;
    }
    let mut file = folder.join(relative);
    if file.is_dir() {
        file = file.join("index.html");
    }
    file.is_file().then_some(file)
}

fn content_type(file: &Path) -> &'static str {
    match file
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
    {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "wasm" => "application/wasm",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ts" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn get(port: u16, path: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    #[test]
    fn serves_files_and_refuses_climbing_out() {
        let folder = std::env::temp_dir().join(format!("xtask-serve-{}", std::process::id()));
        std::fs::create_dir_all(folder.join("pkg")).unwrap();
        std::fs::write(folder.join("index.html"), "<p>hi</p>").unwrap();
        std::fs::write(folder.join("pkg/a.wasm"), [0u8, 97, 115, 109]).unwrap();
        let server = Server::start(&folder, 0).unwrap();
        let index = get(server.port(), "/");
        assert!(
            index.starts_with("HTTP/1.1 200") && index.ends_with("<p>hi</p>"),
            "{index}"
        );
        assert!(get(server.port(), "/pkg/a.wasm?v=1").contains("application/wasm"));
        assert!(get(server.port(), "/../Cargo.toml").starts_with("HTTP/1.1 404"));
        assert!(get(server.port(), "/missing.js").starts_with("HTTP/1.1 404"));
        drop(server);
        std::fs::remove_dir_all(folder).unwrap();
    }
}
