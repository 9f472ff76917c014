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
    serve_conn_as(stream, handler, body_bytes_max, None).await
}

/// [`serve_conn`], every request carrying the client's certificate names.
async fn serve_conn_as<S>(
    stream: S,
    handler: Handler,
    body_bytes_max: usize,
    names: Option<crate::tls::ClientCertNames>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let handler = handler.clone();
        let names = names.clone();
        async move {
            let (mut parts, body) = req.into_parts();
            if let Some(n) = names {
                parts.extensions.insert(n);
            }
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

/// Client connections served at once; further ones wait in the listen backlog until one
/// closes (long-poll watches hold theirs).
pub const CONNECTIONS_MAX: usize = 16_384;

/// Accepts connections on a Tokio listener forever, at most [`CONNECTIONS_MAX`] at once;
/// with `tls`, each connection is a TLS one.
pub async fn accept_tokio(
    listener: tokio::net::TcpListener,
    handler: Handler,
    spawn: Arc<dyn Spawn>,
    body_bytes_max: usize,
    tls: Option<Arc<crate::tls::Listener>>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let h = handler.clone();
                let tls = tls.clone();
                spawn.spawn(
                    "http-conn",
                    Box::pin(async move {
                        match tls {
                            None => serve_conn(stream, h, body_bytes_max).await,
                            Some(tls) => serve_tls(stream, &tls, h, body_bytes_max).await,
                        }
                        drop(permit);
                    }),
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "http accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// One connection to a TLS listener. Plain HTTP gets Go's answer (etcd's): a 400 saying
/// so; a failed handshake is logged once, naming the peer and why.
async fn serve_tls(
    stream: tokio::net::TcpStream,
    tls: &crate::tls::Listener,
    handler: Handler,
    body_bytes_max: usize,
) {
    use tokio::io::AsyncWriteExt;
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await;
    if !matches!(peeked, Ok(Ok(1))) {
        return;
    }
    if first[0] != crate::tls::HANDSHAKE_RECORD {
        tracing::info!(%peer, "plain HTTP on a TLS port: refused");
        let mut stream = stream;
        let _ = stream
            .write_all(b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
            .await;
        return;
    }
    match tls.accept(stream).await {
        Ok(s) => {
            let names = tls.client_names(s.get_ref().1);
            serve_conn_as(s, handler, body_bytes_max, names).await
        }
        Err(e) => tracing::info!(%peer, error = %e, "TLS handshake refused"),
    }
}

/// A request that got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Nothing came back within the request's time: the server may still act on it.
    #[error("{url}: timed out after {after:?}")]
    TimedOut {
        url: String,
        after: std::time::Duration,
    },
    /// It could not be sent, or the connection failed (refused, reset, TLS).
    #[error("{0}")]
    Failed(String),
}

/// A whole response, as a client sees it.
pub struct ClientResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// One HTTP/1.1 request over a fresh Tokio TCP connection to `url`'s `host:port` (a
/// command-line client's needs: no pooling), bounded by `timeout`.
pub async fn request(
    method: &str,
    url: &str,
    form: Option<String>,
    timeout: std::time::Duration,
) -> Result<ClientResponse, RequestError> {
    let body = form.map(|f| ("application/x-www-form-urlencoded", Bytes::from(f)));
    request_body(method, url, body, timeout).await
}

static BASIC_AUTH: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sends `Authorization: Basic …` with these credentials on every request this process
/// makes (etcdctl's `--username user:password`). Set once, at start.
pub fn set_basic_auth(user: &str, password: &str) {
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let _ = BASIC_AUTH.set(format!("Basic {token}"));
}

/// An HTTP/1.1 client connection over `stream`, its driver spawned.
async fn handshake<S>(
    stream: S,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(send)
}

/// A client connection to `uri`'s host (TLS for `https`), with its host and port.
async fn connect(
    url: &str,
    uri: &http::Uri,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        String,
        u16,
    ),
    String,
> {
    let host = uri
        .host()
        .ok_or_else(|| format!("{url}: no host"))?
        .to_string();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("{host}:{port}: {e}"))?;
    let send = if https {
        let tls = crate::tls::connect(&host, stream)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        handshake(tls).await?
    } else {
        handshake(stream).await?
    };
    Ok((send, host, port))
}

/// [`request`] with any body: `(content type, bytes)`.
pub async fn request_body(
    method: &str,
    url: &str,
    body: Option<(&str, Bytes)>,
    timeout: std::time::Duration,
) -> Result<ClientResponse, RequestError> {
    let auth = BASIC_AUTH.get().map(String::as_str);
    request_as(method, url, body, auth, timeout).await
}

/// [`request_body`] with this `Authorization` header (a member passing on its caller's).
pub async fn request_as(
    method: &str,
    url: &str,
    body: Option<(&str, Bytes)>,
    authorization: Option<&str>,
    timeout: std::time::Duration,
) -> Result<ClientResponse, RequestError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| RequestError::Failed(format!("{url}: {e}")))?;
    let fut = async {
        let (mut send, host, port) = connect(url, &uri).await?;
        let mut b = http::Request::builder()
            .method(method)
            .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
            .header(http::header::HOST, format!("{host}:{port}"));
        if let Some(auth) = authorization {
            b = b.header(http::header::AUTHORIZATION, auth);
        }
        let bytes = match body {
            Some((ct, bytes)) => {
                b = b.header(http::header::CONTENT_TYPE, ct);
                bytes
            }
            None => Bytes::new(),
        };
        let req = b.body(Full::new(bytes)).map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(ClientResponse {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(RequestError::Failed),
        Err(_) => Err(RequestError::TimedOut {
            url: url.to_string(),
            after: timeout,
        }),
    }
}

/// A response body passed on as it arrives; an error upstream ends it (the client sees
/// a short body, as when the upstream closes).
struct Relay(hyper::body::Incoming);

impl hyper::body::Body for Relay {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        use std::task::Poll;
        match std::pin::Pin::new(&mut self.0).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
            Poll::Ready(Some(Err(_)) | None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Headers a forwarded request keeps: who is asking and what the body is. (`Origin` and
/// the browser's fetch metadata stay behind: the forwarder judged them already.)
const FORWARDED: [http::header::HeaderName; 3] = [
    http::header::AUTHORIZATION,
    http::header::CONTENT_TYPE,
    http::header::ACCEPT,
];

/// Sends `req` to the server at `base` (`http[s]://host:port`) and returns its response
/// with the body streamed through (a watch stream stays a stream). `timeout` bounds
/// the wait for the response's head, not its body.
pub async fn forward(
    base: &str,
    req: &Request<Bytes>,
    timeout: std::time::Duration,
) -> Result<Response<Body>, String> {
    let uri: http::Uri = base.parse().map_err(|e| format!("{base}: {e}"))?;
    let fut = async {
        let (mut send, host, port) = connect(base, &uri).await?;
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let mut b = http::Request::builder()
            .method(req.method())
            .uri(path)
            .header(http::header::HOST, format!("{host}:{port}"));
        for name in FORWARDED {
            if let Some(v) = req.headers().get(&name) {
                b = b.header(name, v);
            }
        }
        let out = b
            .body(Full::new(req.body().clone()))
            .map_err(|e| e.to_string())?;
        send.send_request(out).await.map_err(|e| e.to_string())
    };
    let resp = match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r?,
        Err(_) => return Err(format!("{base}: no answer within {timeout:?}")),
    };
    let (mut parts, body) = resp.into_parts();
    // Hop-by-hop: this connection's framing is the forwarder's own.
    for name in [http::header::CONNECTION, http::header::TRANSFER_ENCODING] {
        parts.headers.remove(name);
    }
    Ok(Response::from_parts(parts, Relay(body).boxed()))
}
