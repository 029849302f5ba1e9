//! The accept loop the harness's HTTP servers (the zot-rules proxy, the fault proxy, the
//! token server) share.

use std::error::Error as StdError;
use std::future::Future;

use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serve HTTP/1 connections on `listener` with `handler` until `stop` changes. A connection
/// that ends in an error (a client hanging up, TLS spoken to plain HTTP, a fault a test
/// injected) is not reported; `stop` also ends connections still open.
pub(crate) async fn serve_http1<F, Fut, B, E>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    handler: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, E>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => break,
        };
        let Ok((stream, _)) = accepted else { continue };
        let (handler, mut stop) = (handler.clone(), stop.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(handler));
            tokio::select! {
                _ = conn => {}
                _ = stop.changed() => {}
            }
        });
    }
}
