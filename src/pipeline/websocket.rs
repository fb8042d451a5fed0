//! WebSocket tunnels. The upgrade request was routed and authenticated like
//! any other; tunnelling begins only after the upstream answered 101. With
//! `close_on_expiry`, the tunnel ends when the token's `exp` passes: if the
//! upstream→client direction sits between frames, the client first gets a
//! close frame with code 1008 (policy violation), then the TCP close.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
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

/// Relays bytes both ways until either side closes or `deadline` (Unix
/// seconds) passes.
pub async fn tunnel(client: OnUpgrade, upstream: OnUpgrade, deadline: Option<u64>) {
    let (Ok(client), Ok(upstream)) = tokio::join!(client, upstream) else {
        return;
    };
    let client = TokioIo::new(client);
    let upstream = TokioIo::new(upstream);
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
    {
        let mut up = std::pin::pin!(tokio::io::copy(&mut client_read, &mut upstream_write));
        let wait = deadline.map_or(Duration::from_secs(u64::MAX / 4), |exp| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            Duration::from_secs(exp.saturating_sub(now))
        });
        let mut expired = std::pin::pin!(tokio::time::sleep(wait));
        let mut tracker = FrameTracker::default();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            tokio::select! {
                read = upstream_read.read(&mut buf) => {
                    let n = match read {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    tracker.feed(&buf[..n]);
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                _ = &mut up => break,
                _ = &mut expired => {
                    tracing::info!(target: "authgate::websocket", "token expired; closing WebSocket tunnel");
                    if tracker.at_boundary() {
                        let _ = client_write.write_all(&CLOSE_1008).await;
                    }
                    break;
                }
            }
        }
    }
    let _ = client_write.shutdown().await;
    let _ = upstream_write.shutdown().await;
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
