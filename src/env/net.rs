//! How a member's tonic router is served on a listener address.
//!
//! Real mode accepts through tonic's own `TcpIncoming` (with `TCP_NODELAY`, as tonic's
//! `serve_with_shutdown` does) and hands tonic each connection wrapped in [`Coalescing`], which
//! tells h2 that the socket has no vectored writes. h2 decides from that how it writes a DATA
//! frame: on a socket with vectored writes it keeps every payload of 256 bytes or more out of its
//! 16 KiB write buffer and writes the frame on its own (one `writev` each); otherwise it copies
//! payloads under 1 KiB into the buffer, so the frames of every stream that became ready
//! together leave the connection in one write. A put seen by 100 watchers on 16 connections was
//! 100 `writev` calls (one per event of ~330 bytes) and is now one per connection. The price:
//! a frame of 1 KiB or more goes out in two writes (head, then payload) instead of one.
//!
//! Its inbound bytes go through [`super::authority::AuthorityFix`] until its first request
//! shows a proper authority, so that a request whose `:authority` is a URL (etcdctl's
//! `endpoint status` with URL endpoints) is served as etcd serves it instead of being reset by
//! h2; after that the socket's bytes go to h2 directly.
//!
//! Under `--cfg madsim`, tonic's simulated server binds the address itself (no h2 there).

use crate::env::SocketAddr;

/// Serves `router` on `addr` until `signal` resolves; an error says why it could not.
pub async fn serve(
    router: tonic::transport::server::Router,
    addr: SocketAddr,
    signal: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    #[cfg(not(madsim))]
    {
        use futures::TryStreamExt;
        use tonic::transport::server::TcpIncoming;

        let incoming = TcpIncoming::bind(addr)
            .map_err(|e| format!("bind: {e}"))?
            .with_nodelay(Some(true))
            .map_ok(real::Coalescing::new);
        router
            .serve_with_incoming_shutdown(incoming, signal)
            .await
            .map_err(|e| e.to_string())
    }
    #[cfg(madsim)]
    {
        router
            .serve_with_shutdown(addr, signal)
            .await
            .map_err(|e| e.to_string())
    }
}

#[cfg(not(madsim))]
mod real {
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::net::TcpStream;
    use tonic::transport::server::{Connected, TcpConnectInfo};

    use crate::env::authority::AuthorityFix;

    /// How much one read from the socket takes at most.
    const READ_BYTES: usize = 8 * 1024;

    /// An accepted connection that reports no vectored writes, so that h2 buffers small
    /// frames of many streams into one write, and whose inbound URL authorities are fixed
    /// (module docs). Everything else is the socket's.
    pub struct Coalescing {
        stream: TcpStream,
        fix: AuthorityFix,
        /// What the socket gave last.
        read: Vec<u8>,
        /// What h2 may read, from `ready_at` on.
        ready: Vec<u8>,
        ready_at: usize,
    }

    impl Coalescing {
        pub fn new(stream: TcpStream) -> Self {
            Self {
                stream,
                fix: AuthorityFix::default(),
                read: vec![0; READ_BYTES],
                ready: Vec::new(),
                ready_at: 0,
            }
        }
    }

    impl AsyncRead for Coalescing {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = &mut *self;
            if this.ready_at == this.ready.len() && !this.fix.examining() {
                return Pin::new(&mut this.stream).poll_read(cx, buf);
            }
            loop {
                if this.ready_at < this.ready.len() {
                    let n = buf.remaining().min(this.ready.len() - this.ready_at);
                    buf.put_slice(&this.ready[this.ready_at..this.ready_at + n]);
                    this.ready_at += n;
                    if this.ready_at == this.ready.len() {
                        this.ready.clear();
                        this.ready_at = 0;
                    }
                    return Poll::Ready(Ok(()));
                }
                let mut read = ReadBuf::new(&mut this.read);
                std::task::ready!(Pin::new(&mut this.stream).poll_read(cx, &mut read))?;
                if read.filled().is_empty() {
                    // End of stream: h2 sees it (a partial frame held back is lost with it).
                    return Poll::Ready(Ok(()));
                }
                this.fix.feed(read.filled(), &mut this.ready);
            }
        }
    }

    impl AsyncWrite for Coalescing {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.stream).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.stream).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.stream).poll_shutdown(cx)
        }

        fn is_write_vectored(&self) -> bool {
            false
        }
    }

    impl Connected for Coalescing {
        type ConnectInfo = TcpConnectInfo;

        fn connect_info(&self) -> Self::ConnectInfo {
            self.stream.connect_info()
        }
    }
}
