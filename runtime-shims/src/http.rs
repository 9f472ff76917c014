//! An HTTP/1.1 server on hyper, generic over the stream type so turmoil's TCP can stand in
//! for Tokio's. Request bodies are collected up to a bound; the handler sees whole bodies.

use crate::task::Spawn;
use crate::BoxFuture;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

pub type Body = BoxBody<Bytes, Infallible>;
pub type Handler = Arc<dyn Fn(Request<Bytes>) -> BoxFuture<'static, Response<Body>> + Send + Sync>;

/// A whole-body response.
pub fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r
}

/// Serves one connection until the client closes it.
pub async fn serve_conn<S>(stream: S, handler: Handler, body_bytes_max: usize)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let handler = handler.clone();
        async move {
            let (parts, body) = req.into_parts();
            let resp = match Limited::new(body, body_bytes_max).collect().await {
                Ok(b) => handler(Request::from_parts(parts, b.to_bytes())).await,
                Err(e) => too_large_or_bad(e, body_bytes_max),
            };
            Ok::<_, Infallible>(resp)
        }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .await
    {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}

fn too_large_or_bad(e: Box<dyn std::error::Error + Send + Sync>, max: usize) -> Response<Body> {
    if e.is::<http_body_util::LengthLimitError>() {
        full(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds {max} bytes\n"),
        )
    } else {
        full(StatusCode::BAD_REQUEST, format!("bad request body: {e}\n"))
    }
}

/// Accepts connections on a Tokio listener forever.
pub async fn accept_tokio(
    listener: tokio::net::TcpListener,
    handler: Handler,
    spawn: Arc<dyn Spawn>,
    body_bytes_max: usize,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                spawn.spawn(
                    "http-conn",
                    Box::pin(serve_conn(stream, handler.clone(), body_bytes_max)),
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "http accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
