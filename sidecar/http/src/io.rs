//! The downstream byte stream as HTTP sees it: the bytes read while looking for the PROXY
//! header (and while checking that HTTP follows) are replayed before the socket's.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The longest request method looked at: longer first words are not HTTP.
const MAX_METHOD: usize = 32;

/// A stream that yields `prefix` first, then `inner`'s bytes; writes go to `inner`.
#[derive(Debug)]
pub(crate) struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `prefix` is read before anything from `inner`.
    pub(crate) fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            pos: 0,
            inner,
        }
    }
}

/// What the first bytes of a request stream are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FirstBytes {
    /// A method token and a space, or the HTTP/2 preface: let the HTTP parser have it.
    Http,
    /// A TLS record (a ClientHello to a cleartext listener).
    Tls,
    /// Anything else.
    NotHttp,
    /// The peer closed before sending a request.
    Closed,
    /// Nothing decisive arrived in time.
    Timeout,
}

impl<S: AsyncRead + Unpin> Prefixed<S> {
    /// Reads (and keeps, for replay) just enough of the stream to tell whether it starts like
    /// an HTTP request, waiting at most `limit`.
    pub(crate) async fn sniff(&mut self, limit: Duration) -> io::Result<FirstBytes> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(verdict) = judge(&self.prefix[self.pos..]) {
                return Ok(verdict);
            }
            let mut chunk = [0u8; 256];
            match tokio::time::timeout_at(deadline, self.inner.read(&mut chunk)).await {
                Err(_) => return Ok(FirstBytes::Timeout),
                Ok(Ok(0)) => return Ok(FirstBytes::Closed),
                Ok(Ok(n)) => self.prefix.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(e),
            }
        }
    }
}

/// `None` until the bytes decide.
fn judge(bytes: &[u8]) -> Option<FirstBytes> {
    if bytes.is_empty() {
        return None;
    }
    let n = bytes.len().min(H2_PREFACE.len());
    if bytes[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(FirstBytes::Http);
    }
    if bytes[0] == 0x16 {
        return Some(FirstBytes::Tls);
    }
    for (i, &b) in bytes.iter().enumerate().take(MAX_METHOD + 1) {
        if b == b' ' {
            return Some(if i == 0 {
                FirstBytes::NotHttp
            } else {
                FirstBytes::Http
            });
        }
        if !(b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) {
            return Some(FirstBytes::NotHttp);
        }
    }
    (bytes.len() > MAX_METHOD).then_some(FirstBytes::NotHttp)
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[test]
    fn first_bytes_are_judged() {
        assert_eq!(judge(b"GET / HTTP/1.1\r\n"), Some(FirstBytes::Http));
        assert_eq!(judge(b"GE"), None);
        assert_eq!(judge(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(judge(H2_PREFACE), Some(FirstBytes::Http));
        assert_eq!(judge(b"\x16\x03\x01\x02\x00"), Some(FirstBytes::Tls));
        assert_eq!(judge(b"SSH-2.0-OpenSSH\r\n"), Some(FirstBytes::NotHttp));
        assert_eq!(judge(b"HELLO\r\n"), Some(FirstBytes::NotHttp));
        assert_eq!(judge(b" GET"), Some(FirstBytes::NotHttp));
        assert_eq!(judge(&[b'A'; 40]), Some(FirstBytes::NotHttp));
    }

    #[tokio::test]
    async fn sniffed_bytes_are_replayed() {
        let inner = tokio_test::io::Builder::new()
            .read(b"GE")
            .read(b"T / HTTP/1.1\r\n\r\n")
            .build();
        let mut io = Prefixed::new(b"".to_vec(), inner);
        assert_eq!(
            io.sniff(Duration::from_secs(1)).await.unwrap(),
            FirstBytes::Http
        );
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\n\r\n");
    }
}
