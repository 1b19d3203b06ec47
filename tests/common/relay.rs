//! What a proxy on loopback does with a request and its answer, shared by
//! the tests' fault proxy and the delivery benchmark's latency proxy.

use http_body_util::Full;

/// The forwarded request: the client's headers but `Host` and
/// `Content-Length` (the client sets its own).
pub fn forward(
    client: &reqwest::Client,
    method: &str,
    url: String,
    headers: &hyper::HeaderMap,
    body: bytes::Bytes,
) -> reqwest::RequestBuilder {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
    let mut fwd = client.request(method, url).body(body);
    for (k, v) in headers.iter() {
        if k != "host" && k != "content-length" {
            fwd = fwd.header(k, v);
        }
    }
    fwd
}

/// The target's answer as the proxy's, without the hop-by-hop headers.
pub fn answer(
    status: hyper::StatusCode,
    headers: &hyper::HeaderMap,
    body: bytes::Bytes,
) -> hyper::Response<Full<bytes::Bytes>> {
    let mut out = hyper::Response::new(Full::new(body));
    *out.status_mut() = status;
    for (k, v) in headers.iter() {
        if k != "content-length" && k != "transfer-encoding" && k != "connection" {
            out.headers_mut().insert(k, v.clone());
        }
    }
    out
}

/// Serves one accepted connection with `svc` until it closes.
pub async fn serve<S, B>(stream: tokio::net::TcpStream, svc: S)
where
    S: hyper::service::Service<hyper::Request<hyper::body::Incoming>, Response = hyper::Response<B>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
        .await;
}
