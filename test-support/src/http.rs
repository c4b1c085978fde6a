//! HTTP/1.0 exchanges for the tests: one way to write a request and to read
//! the answer, blocking ([`exchange`], for the end-to-end suite) or async
//! ([`exchange_async`], for the in-process tests).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A whole answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// The status line and headers.
    pub head: String,
    pub body: String,
}

impl Answer {
    /// The status line alone.
    pub fn status_line(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }

    /// A header's value (names compared without case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// The bytes of a request: `method path`, extra header lines, a body.
pub fn request(method: &str, path: &str, headers: &[&str], body: &str) -> String {
    let mut text = format!("{method} {path} HTTP/1.0\r\nHost: sluice\r\n");
    for header in headers {
        text.push_str(header);
        text.push_str("\r\n");
    }
    if !body.is_empty() {
        text.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    text.push_str("\r\n");
    text.push_str(body);
    text
}

/// Reads a whole response (the connection closed after it).
pub fn answer(raw: &str) -> Answer {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// One exchange with `addr`, waiting at most `patience` for each read.
pub fn exchange(addr: &str, request: &str, patience: Duration) -> io::Result<Answer> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(patience))?;
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(answer(&response))
}

/// One exchange with `addr`, from a tokio runtime.
pub async fn exchange_async(addr: SocketAddr, request: &str) -> io::Result<Answer> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(answer(&response))
}
