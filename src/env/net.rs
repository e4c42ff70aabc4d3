//! How a member's gRPC services are served on a listener address.
//!
//! Real mode serves them with hyper's HTTP/2 server directly, not through tonic's `Server`:
//! tonic wraps every request in layers detcd does not use (an axum router with URL parameters, a
//! `grpc-timeout` timer, connection info in the request's extensions, a boxed copy of the whole
//! future, the response body boxed twice): a put at 256 clients made 48.3 allocations, now 31.6
//! (counted with a uprobe on malloc over 50,000 puts, every thread). [`Services`] finds a
//! request's service by the first segment of its path and calls tonic's generated server for it,
//! which answers unknown methods itself; an unknown service gets `Unimplemented`, as from tonic.
//! hyper is configured as tonic configures it (HTTP/2 only, no limit on concurrent streams),
//! except that responses carry no `date` header: etcd sends none, and it cost a header a response.
//!
//! Connections are accepted through tonic's `TcpIncoming` (with `TCP_NODELAY`, as tonic does)
//! and each is wrapped in [`Coalescing`], which tells h2 that the socket has no vectored writes.
//! h2 decides from that how it writes a DATA frame: on a socket with vectored writes it keeps
//! every payload of 256 bytes or more out of its 16 KiB write buffer and writes the frame on its
//! own (one `writev` each); otherwise it copies payloads under 1 KiB into the buffer, so the
//! frames of every stream that became ready together leave the connection in one write. A put
//! seen by 100 watchers on 16 connections was 100 `writev` calls (one per event of ~330 bytes)
//! and is now one per connection. The price: a frame of 1 KiB or more goes out in two writes
//! (head, then payload) instead of one.
//!
//! Its inbound bytes go through [`super::authority::AuthorityFix`] until its first request
//! shows a proper authority, so that a request whose `:authority` is a URL (etcdctl's
//! `endpoint status` with URL endpoints) is served as etcd serves it instead of being reset by
//! h2; after that the socket's bytes go to h2 directly.
//!
//! When the stop signal comes, the listener closes, every connection is told to finish (HTTP/2
//! GOAWAY: requests under way complete, no new ones start), and `serve` returns once all have.
//!
//! Under `--cfg madsim`, [`Services`] is tonic's simulated router, which binds the address itself
//! (no h2 there).

use crate::env::SocketAddr;

#[cfg(not(madsim))]
pub use real::Services;
#[cfg(madsim)]
pub use sim::Services;

/// Serves `services` on `addr` until `signal` resolves; an error says why it could not.
pub async fn serve(
    services: Services,
    addr: SocketAddr,
    signal: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    services.serve(addr, signal).await
}

#[cfg(madsim)]
mod sim {
    use tonic::codegen::http::uri::PathAndQuery;
    use tonic::codegen::{BoxFuture, BoxMessageStream, Service};
    use tonic::transport::server::Router;
    use tonic::transport::NamedService;
    use tonic::{Request, Response, Status};

    use crate::env::SocketAddr;

    /// The services of one listener: tonic's simulated router.
    #[derive(Default)]
    pub struct Services(Option<Router>);

    impl Services {
        pub fn new() -> Self {
            Self::default()
        }

        pub fn add_service<S>(self, service: S) -> Self
        where
            S: Service<
                    (PathAndQuery, Request<BoxMessageStream>),
                    Response = Response<BoxMessageStream>,
                    Error = Status,
                    Future = BoxFuture<Response<BoxMessageStream>, Status>,
                > + NamedService
                + Send
                + 'static,
        {
            Self(Some(match self.0 {
                Some(router) => router.add_service(service),
                None => tonic::transport::Server::builder().add_service(service),
            }))
        }

        pub(super) async fn serve(
            self,
            addr: SocketAddr,
            signal: impl std::future::Future<Output = ()>,
        ) -> Result<(), String> {
            let router = self.0.ok_or("no services to serve")?;
            router
                .serve_with_shutdown(addr, signal)
                .await
                .map_err(|e| e.to_string())
        }
    }
}

#[cfg(not(madsim))]
mod real {
    use std::convert::Infallible;
    use std::io;
    use std::pin::{pin, Pin};
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use futures::StreamExt;
    use hyper::body::Incoming;
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::net::TcpStream;
    use tonic::body::Body;
    use tonic::codegen::http::{header, Request, Response};
    use tonic::codegen::{BoxFuture, Service};
    use tonic::server::NamedService;
    use tonic::transport::server::TcpIncoming;

    use crate::env::authority::AuthorityFix;
    use crate::env::SocketAddr;

    /// How long the listener waits after a failed accept before it accepts again.
    const ACCEPT_ERROR_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

    /// How a service is called: a clone of tonic's generated server for it takes the request.
    type Call =
        Box<dyn Fn(Request<Incoming>) -> BoxFuture<Response<Body>, Infallible> + Send + Sync>;

    /// The services of one listener, by name (`etcdserverpb.KV`).
    #[derive(Default)]
    pub struct Services {
        routes: Vec<(&'static str, Call)>,
    }

    impl Services {
        pub fn new() -> Self {
            Self::default()
        }

        pub fn add_service<S>(mut self, service: S) -> Self
        where
            S: Service<
                    Request<Incoming>,
                    Response = Response<Body>,
                    Error = Infallible,
                    Future = BoxFuture<Response<Body>, Infallible>,
                > + NamedService
                + Clone
                + Send
                + Sync
                + 'static,
        {
            // A generated server is always ready and its clone is a few reference counts.
            let call: Call = Box::new(move |request| service.clone().call(request));
            self.routes.push((S::NAME, call));
            self
        }

        pub(super) async fn serve(
            self,
            addr: SocketAddr,
            signal: impl std::future::Future<Output = ()>,
        ) -> Result<(), String> {
            let incoming = TcpIncoming::bind(addr)
                .map_err(|e| format!("bind: {e}"))?
                .with_nodelay(Some(true));
            let dispatch = Dispatch(Arc::new(self));
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            // tonic's settings (`Server::serve_internal`), and no `date` header (module docs).
            builder
                .timer(TokioTimer::new())
                .max_concurrent_streams(None)
                .keep_alive_interval(None)
                .keep_alive_timeout(std::time::Duration::from_secs(20))
                .adaptive_window(false)
                .max_pending_accept_reset_streams(None)
                .max_local_error_reset_streams(None)
                .auto_date_header(false);
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
            {
                // The listener closes when this scope ends, before the connections finish.
                let mut incoming = pin!(incoming);
                let mut signal = pin!(signal);
                loop {
                    let stream = tokio::select! {
                        biased;
                        _ = &mut signal => break,
                        accepted = incoming.next() => match accepted {
                            Some(Ok(stream)) => stream,
                            // A failed accept (out of descriptors, a reset before it): the
                            // listener goes on after a pause, so that a condition that lasts
                            // (no descriptor free while the connection waits in the backlog)
                            // does not keep the member's thread retrying at once.
                            Some(Err(_)) => {
                                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                                continue;
                            }
                            None => break,
                        },
                    };
                    let io = TokioIo::new(Coalescing::new(stream));
                    let connection = builder.serve_connection(io, dispatch.clone());
                    let mut stop = stop_rx.clone();
                    tokio::spawn(async move {
                        let mut connection = pin!(connection);
                        tokio::select! {
                            biased;
                            // A connection that fails (reset, protocol error) just ends.
                            _ = connection.as_mut() => return,
                            _ = stop.changed() => {}
                        }
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                    });
                }
            }
            drop(stop_rx);
            let _ = stop_tx.send(());
            stop_tx.closed().await;
            Ok(())
        }
    }

    /// hyper's service for every connection of a listener.
    #[derive(Clone)]
    struct Dispatch(Arc<Services>);

    impl hyper::service::Service<Request<Incoming>> for Dispatch {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = BoxFuture<Response<Body>, Infallible>;

        fn call(&self, request: Request<Incoming>) -> Self::Future {
            let name = service_name(request.uri().path());
            match self.0.routes.iter().find(|(known, _)| Some(*known) == name) {
                Some((_, call)) => call(request),
                None => Box::pin(std::future::ready(Ok(unimplemented()))),
            }
        }
    }

    /// The service a gRPC path names: `etcdserverpb.KV` in `/etcdserverpb.KV/Put`.
    fn service_name(path: &str) -> Option<&str> {
        let (name, _method) = path.strip_prefix('/')?.split_once('/')?;
        Some(name)
    }

    /// The answer to a service this listener does not have: gRPC's `Unimplemented`, in the
    /// headers as tonic's generated servers send it for an unknown method.
    fn unimplemented() -> Response<Body> {
        let mut response = Response::new(Body::default());
        let headers = response.headers_mut();
        headers.insert(
            tonic::Status::GRPC_STATUS,
            (tonic::Code::Unimplemented as i32).into(),
        );
        headers.insert(header::CONTENT_TYPE, tonic::metadata::GRPC_CONTENT_TYPE);
        response
    }

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

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_path_names_its_service_before_the_method() {
            assert_eq!(
                service_name("/etcdserverpb.KV/Put"),
                Some("etcdserverpb.KV")
            );
            assert_eq!(service_name("/etcdserverpb.KV/"), Some("etcdserverpb.KV"));
            assert_eq!(service_name("/etcdserverpb.KV"), None);
            assert_eq!(service_name("etcdserverpb.KV/Put"), None);
            assert_eq!(service_name("/"), None);
        }

        #[test]
        fn an_unknown_service_is_unimplemented_in_grpc_terms() {
            let response = unimplemented();
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()[tonic::Status::GRPC_STATUS], "12");
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/grpc");
        }
    }
}
