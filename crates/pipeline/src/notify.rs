//! Alert notifications, sent only after the commit that holds the alert: a Kafka topic
//! (through the DLQ's producer code) and a plain-HTTP webhook (one `POST`, JSON body; a
//! minimal HTTP/1.1 client over a TCP stream, as this crate has no HTTP client and only
//! `serve` knows HTTP servers). At-least-once: see docs/pipeline-reference.md.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Posts `body` to `url` (`http://host[:port]/path`); Ok on a 2xx answer.
pub async fn post(url: &str, body: &[u8], timeout: Duration) -> Result<(), String> {
    tokio::time::timeout(timeout, post_inner(url, body))
        .await
        .map_err(|_| format!("webhook {url}: no answer within {timeout:?}"))?
}

/// (host:port, host, path) of an `http://` URL.
pub fn split_url(url: &str) -> Result<(String, String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("webhook url `{url}` must start with http:// (plain HTTP only)"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("webhook url `{url}` has no host"));
    }
    let addr = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((addr, authority.to_string(), path.to_string()))
}

async fn post_inner(url: &str, body: &[u8]) -> Result<(), String> {
    let (addr, host, path) = split_url(url)?;
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("webhook {url}: {e}"))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| format!("webhook {url}: {e}"))?;
    stream
        .write_all(body)
        .await
        .map_err(|e| format!("webhook {url}: {e}"))?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    // the status line is enough
    while !answer.contains(&b'\n') {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("webhook {url}: {e}"))?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&answer);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("webhook {url}: not an HTTP answer"))?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("webhook {url}: HTTP {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://h:8080/a/b").unwrap(),
            ("h:8080".into(), "h:8080".into(), "/a/b".into())
        );
        assert_eq!(
            split_url("http://h").unwrap(),
            ("h:80".into(), "h".into(), "/".into())
        );
        assert!(split_url("https://h/").is_err());
    }

    #[tokio::test]
    async fn posts_and_reads_the_status() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !String::from_utf8_lossy(&got).contains("}") {
                let n = s.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8_lossy(&got).to_string()
        });
        post(
            &format!("http://{addr}/hook"),
            b"{\"a\":1}",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let req = server.await.unwrap();
        assert!(req.starts_with("POST /hook HTTP/1.1"), "{req}");
        assert!(req.ends_with("{\"a\":1}"), "{req}");
    }
}
