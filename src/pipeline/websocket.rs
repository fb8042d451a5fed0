//! WebSocket tunnels. The upgrade request was routed and authenticated like
//! any other; tunnelling begins only after the upstream answered 101. With
//! `close_on_expiry`, the tunnel ends when the token's `exp` passes: if the
//! upstream→client direction sits between frames, the client first gets a
//! close frame with code 1008 (policy violation), then the TCP close.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server-to-client close frame: FIN + opcode 8, 2-byte payload 1008.
pub const CLOSE_1008: [u8; 4] = [0x88, 0x02, 0x03, 0xF0];

/// Follows frame boundaries in a byte stream without buffering payloads.
#[derive(Debug, Default)]
pub struct FrameTracker {
    header: [u8; 14],
    have: usize,
    need: usize,
    remaining: u64,
}

impl FrameTracker {
    /// Whether the bytes fed so far end exactly at a frame boundary.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.remaining == 0
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.remaining -= n as u64;
                data = &data[n..];
                continue;
            }
            self.header[self.have] = data[0];
            self.have += 1;
            data = &data[1..];
            if self.have == 2 {
                let len7 = self.header[1] & 0x7f;
                let ext = match len7 {
                    126 => 2,
                    127 => 8,
                    _ => 0,
                };
                let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
                self.need = 2 + ext + mask;
            }
            if self.have >= 2 && self.have == self.need {
                let len = match self.header[1] & 0x7f {
                    126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
                    127 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&self.header[2..10]);
                        u64::from_be_bytes(b)
                    }
                    n => u64::from(n),
                };
                self.remaining = len;
                self.have = 0;
                self.need = 0;
            }
        }
    }
}

/// How long the gateway waits for a client to take the close frame.
const CLOSE_WRITE_LIMIT: Duration = Duration::from_secs(5);

/// Relays bytes both ways until either side closes or `deadline` (Unix
/// seconds) passes.
///
/// The two directions are copied independently (a peer blocked writing
/// must not stop the other direction: that would deadlock two peers that
/// both send large messages), and the deadline is watched even while a
/// write to a client that stopped reading is pending, so such a client
/// cannot keep its tunnel open past its token's `exp`.
pub async fn tunnel(client: OnUpgrade, upstream: OnUpgrade, deadline: Option<u64>) {
    let (Ok(client), Ok(upstream)) = tokio::join!(client, upstream) else {
        return;
    };
    let client = TokioIo::new(client);
    let upstream = TokioIo::new(upstream);
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
    // True while everything written to the client ends at a frame boundary
    // and no write is in progress: only then may a close frame be injected.
    let at_boundary = AtomicBool::new(true);
    let expired = {
        let client_to_upstream = tokio::io::copy(&mut client_read, &mut upstream_write);
        let upstream_to_client = async {
            let mut tracker = FrameTracker::default();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match upstream_read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                at_boundary.store(false, Ordering::Relaxed);
                tracker.feed(&buf[..n]);
                if client_write.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                at_boundary.store(tracker.at_boundary(), Ordering::Relaxed);
            }
        };
        let expiry = async {
            match deadline {
                Some(exp) => {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    tokio::time::sleep(Duration::from_secs(exp.saturating_sub(now))).await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = client_to_upstream => false,
            () = upstream_to_client => false,
            () = expiry => true,
        }
    };
    if expired {
        tracing::info!(target: "authgate::websocket", "token expired; closing WebSocket tunnel");
        if at_boundary.load(Ordering::Relaxed) {
            let _ =
                tokio::time::timeout(CLOSE_WRITE_LIMIT, client_write.write_all(&CLOSE_1008)).await;
        }
    }
    let _ = tokio::time::timeout(CLOSE_WRITE_LIMIT, client_write.shutdown()).await;
    let _ = tokio::time::timeout(CLOSE_WRITE_LIMIT, upstream_write.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_boundaries_across_chunks() {
        let mut t = FrameTracker::default();
        assert!(t.at_boundary());
        // text frame "hi"
        t.feed(&[0x81, 0x02, b'h']);
        assert!(!t.at_boundary());
        t.feed(b"i");
        assert!(t.at_boundary());
        // 300-byte frame with 16-bit length, split in the header
        t.feed(&[0x82, 126]);
        t.feed(&[0x01]);
        assert!(!t.at_boundary());
        t.feed(&[0x2c]);
        t.feed(&vec![0u8; 299]);
        assert!(!t.at_boundary());
        t.feed(&[0]);
        assert!(t.at_boundary());
        // masked empty frame
        t.feed(&[0x89, 0x80, 1, 2, 3, 4]);
        assert!(t.at_boundary());
    }
}
