//! Small vectored writes go out as one `send`.
//!
//! hyper hands a response to the socket as a head buffer plus body chunks
//! (`writev`), and a request head as one buffer (also `writev`). On Linux the
//! `writev` path of a socket costs more kernel time than `send`: the iovec
//! array is copied in and checked, and the call goes through the VFS
//! (`vfs_writev`, `fdget_pos`, `rw_verify_area`, `sock_write_iter`), where
//! `send` goes straight to the socket. Measured under `wrk` with `perf`
//! (bench/PERFORMANCE.md), that was ≈ 0.6 µs of kernel time per proxied
//! request. So a write of one buffer is a plain write (`send` for a tokio
//! `TcpStream`), and a write of a few buffers that together fit in
//! [`GATHER_MAX`] bytes is copied into one stack buffer and written once.
//! Anything larger stays vectored: there the copy would cost more than the
//! call it saves.
//!
//! The semantics are those of a vectored write: the count returned is of
//! bytes taken from the concatenation of the buffers, and may be short.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

/// The largest write (all buffers together) copied into one buffer.
pub const GATHER_MAX: usize = 4096;

/// Up to this many bytes, the stack buffer is this small (zeroing it is
/// part of the cost; most heads with a small JSON body fit).
const SMALL: usize = 512;

/// The two ways of writing to a stream `W`.
pub trait Writes<W: ?Sized> {
    fn write(&mut self, w: &mut W, buf: &[u8]) -> Poll<io::Result<usize>>;
    fn write_vectored(&mut self, w: &mut W, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>>;
}

/// One write of `bufs` to `w`: a plain write of a single non-empty buffer
/// or of a gathered copy of up to [`GATHER_MAX`] bytes, a vectored write of
/// anything larger.
pub fn write_gathered<W: ?Sized>(
    w: &mut W,
    how: &mut impl Writes<W>,
    bufs: &[IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    let mut non_empty = bufs.iter().filter(|b| !b.is_empty());
    let Some(first) = non_empty.next() else {
        return how.write(w, &[]);
    };
    if non_empty.next().is_none() {
        return how.write(w, first);
    }
    let total = bufs
        .iter()
        .map(|b| b.len())
        .fold(0usize, usize::saturating_add);
    if total <= SMALL {
        let mut scratch = [0u8; SMALL];
        how.write(w, gather(bufs, &mut scratch))
    } else if total <= GATHER_MAX {
        let mut scratch = [0u8; GATHER_MAX];
        how.write(w, gather(bufs, &mut scratch))
    } else {
        how.write_vectored(w, bufs)
    }
}

/// Copies `bufs` (which fit) into `scratch`; the filled part.
fn gather<'a>(bufs: &[IoSlice<'_>], scratch: &'a mut [u8]) -> &'a [u8] {
    let mut at = 0;
    for b in bufs {
        scratch[at..at + b.len()].copy_from_slice(b);
        at += b.len();
    }
    &scratch[..at]
}

struct HyperWrites<'a, 'b>(&'a mut Context<'b>);

impl<T: hyper::rt::Write + Unpin> Writes<T> for HyperWrites<'_, '_> {
    fn write(&mut self, w: &mut T, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(w).poll_write(self.0, buf)
    }

    fn write_vectored(&mut self, w: &mut T, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(w).poll_write_vectored(self.0, bufs)
    }
}

/// Plain and vectored writes of a tokio stream, in a context.
pub struct TokioWrites<'a, 'b>(pub &'a mut Context<'b>);

impl<T: tokio::io::AsyncWrite + Unpin> Writes<T> for TokioWrites<'_, '_> {
    fn write(&mut self, w: &mut T, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(w).poll_write(self.0, buf)
    }

    fn write_vectored(&mut self, w: &mut T, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(w).poll_write_vectored(self.0, bufs)
    }
}

/// A hyper I/O whose vectored writes go through [`write_gathered`] (the
/// upstream side; the client side does the same in
/// [`super::send_timeout::SendTimeout`]).
pub struct Gathered<T>(pub T);

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Gathered<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Gathered<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        write_gathered(&mut self.0, &mut HyperWrites(cx), bufs)
    }

    fn is_write_vectored(&self) -> bool {
        // When true, hyper queues body chunks instead of copying them into
        // its head buffer; the gathering above then decides per write.
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A stream that records each call and takes at most `accept` bytes.
    #[derive(Default)]
    struct Recorder {
        accept: usize,
        calls: Vec<(&'static str, Vec<u8>)>,
    }

    struct Direct;

    impl Writes<Recorder> for Direct {
        fn write(&mut self, w: &mut Recorder, buf: &[u8]) -> Poll<io::Result<usize>> {
            let n = buf.len().min(w.accept);
            w.calls.push(("write", buf[..n].to_vec()));
            Poll::Ready(Ok(n))
        }

        fn write_vectored(
            &mut self,
            w: &mut Recorder,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let n = all.len().min(w.accept);
            w.calls.push(("writev", all[..n].to_vec()));
            Poll::Ready(Ok(n))
        }
    }

    fn run(parts: &[&[u8]], accept: usize) -> (usize, Vec<(&'static str, Vec<u8>)>) {
        let mut w = Recorder {
            accept,
            ..Recorder::default()
        };
        let slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let Poll::Ready(Ok(n)) = write_gathered(&mut w, &mut Direct, &slices) else {
            panic!("the recorder is always ready");
        };
        (n, w.calls)
    }

    #[test]
    fn a_head_and_a_small_body_go_out_in_one_plain_write() {
        let (n, calls) = run(&[b"HTTP/1.1 200 OK\r\n\r\n", b"{\"ok\":true}"], usize::MAX);
        assert_eq!(n, 30);
        assert_eq!(
            calls,
            vec![("write", b"HTTP/1.1 200 OK\r\n\r\n{\"ok\":true}".to_vec())]
        );
    }

    #[test]
    fn one_buffer_among_empty_ones_is_written_as_it_is() {
        let (n, calls) = run(&[b"", b"GET / HTTP/1.1\r\n\r\n", b""], usize::MAX);
        assert_eq!(n, 18);
        assert_eq!(calls, vec![("write", b"GET / HTTP/1.1\r\n\r\n".to_vec())]);
        let (n, calls) = run(&[], usize::MAX);
        assert_eq!((n, calls), (0, vec![("write", Vec::new())]));
        // Too large to gather, and still one plain write: there is nothing
        // to gather.
        let big = vec![b'x'; GATHER_MAX * 3];
        let (n, calls) = run(&[b"", &big], usize::MAX);
        assert_eq!(n, big.len());
        assert_eq!(calls, vec![("write", big)]);
    }

    #[test]
    fn up_to_gather_max_is_gathered_and_beyond_it_stays_vectored() {
        let head = vec![b'h'; 1000];
        let body = vec![b'b'; GATHER_MAX - 1000];
        let (n, calls) = run(&[&head, &body], usize::MAX);
        assert_eq!(n, GATHER_MAX);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0, "write");
        assert_eq!(calls[0].1, [head.clone(), body].concat());

        let body = vec![b'b'; GATHER_MAX - 999];
        let (n, calls) = run(&[&head, &body], usize::MAX);
        assert_eq!(n, GATHER_MAX + 1);
        assert_eq!(calls, vec![("writev", [head, body].concat())]);
    }

    proptest! {
        /// Whatever the buffers and however short the write, the bytes that
        /// went out are the first `n` of their concatenation, in one call.
        #[test]
        fn what_goes_out_is_a_prefix_of_the_concatenation(
            parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..5000), 0..8),
            accept in 0usize..30_000,
        ) {
            let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            let all = parts.concat();
            let (n, calls) = run(&refs, accept);
            prop_assert_eq!(calls.len(), 1);
            prop_assert_eq!(n, all.len().min(accept));
            prop_assert_eq!(&calls[0].1[..], &all[..n]);
            // Vectored exactly when there are several buffers to join and
            // together they are too large to copy.
            let vectored = calls[0].0 == "writev";
            let non_empty = parts.iter().filter(|p| !p.is_empty()).count();
            prop_assert_eq!(vectored, non_empty > 1 && all.len() > GATHER_MAX);
        }
    }
}
