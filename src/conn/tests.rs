//! Tests of the connection limits: hyper's bare errors rewritten, the watchdog's deadlines, and
//! the clamp to the open-file limit.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::places::clamp_to_nofile;
use super::socket::rewrite_bare_error;
use super::state::{ConnState, NONE};
use super::*;

#[test]
fn hypers_bare_errors_become_envelopes() {
    let bare = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
    let out = String::from_utf8(rewrite_bare_error(bare).unwrap()).unwrap();
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"));
    assert!(out.contains("content-type: application/json"));
    assert!(out.contains("\"code\":\"invalid_request\""));
    let len: usize = out
        .split("content-length: ")
        .nth(1)
        .and_then(|s| s.split("\r\n").next())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(len, out.split("\r\n\r\n").nth(1).unwrap().len());
    let big = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
    assert!(String::from_utf8(rewrite_bare_error(big).unwrap())
        .unwrap()
        .contains("headers_too_large"));
    let uri = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\n";
    assert!(String::from_utf8(rewrite_bare_error(uri).unwrap())
        .unwrap()
        .contains("uri_too_long"));
}

#[test]
fn our_own_responses_pass_untouched() {
    for ours in [
        &b"HTTP/1.1 400 Bad Request\r\nx-request-id: 1\r\ncontent-length: 0\r\n\r\n"[..],
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}",
        b"{\"outputs\":[]}",
    ] {
        assert!(rewrite_bare_error(ours).is_none());
    }
}

#[test]
fn deadlines_follow_the_connection_state() {
    let limits = ConnLimits {
        header_read_timeout: Duration::from_millis(100),
        keep_alive_timeout: Duration::from_millis(1000),
        max_head_bytes: 8192,
        protocol: Protocol::Http1,
    };
    let s = Arc::new(ConnState::new(false));
    // a new connection must send its first head within the header timeout
    assert_eq!(s.deadline(&limits), Some(100));
    assert!(!s.served());
    let g = s.begin_request();
    assert_eq!(s.deadline(&limits), None, "a request in progress");
    assert_eq!(s.head_since.load(Ordering::Relaxed), NONE);
    drop(g);
    assert!(s.served());
    let after = s.last_activity.load(Ordering::Relaxed);
    assert_eq!(
        s.deadline(&limits),
        Some(after + 1000),
        "idle between requests"
    );
    s.head_since.store(after + 50, Ordering::Relaxed);
    assert_eq!(
        s.deadline(&limits),
        Some(after + 150),
        "a head is being read"
    );
}

#[tokio::test]
async fn a_head_starting_wakes_the_watchdog() {
    let limits = ConnLimits {
        header_read_timeout: Duration::from_millis(50),
        keep_alive_timeout: Duration::from_secs(60),
        max_head_bytes: 8192,
        protocol: Protocol::Http1,
    };
    let s = Arc::new(ConnState::new(false));
    drop(s.begin_request()); // idle between requests: the keep-alive deadline, 60 s away
    let started = Instant::now();
    let watcher = {
        let s = s.clone();
        tokio::spawn(async move {
            loop {
                if watchdog_sleep(&s, &limits).await.is_some() {
                    return;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.on_read(); // the first byte of the next head
    tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("the watchdog slept to the keep-alive deadline")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn http2_reads_are_not_activity() {
    let s = ConnState::new(true);
    s.on_read();
    assert_eq!(s.head_since.load(Ordering::Relaxed), 0);
    assert_eq!(s.last_activity.load(Ordering::Relaxed), 0);
}

#[test]
fn connections_are_clamped_to_the_open_file_limit() {
    assert_eq!(clamp_to_nofile(4096, 1024), 896);
    assert_eq!(clamp_to_nofile(100, 1024), 100);
    assert_eq!(clamp_to_nofile(4096, 65_536), 4096);
    assert_eq!(clamp_to_nofile(4096, 100), 36);
    assert_eq!(clamp_to_nofile(4096, 10), 1);
}
