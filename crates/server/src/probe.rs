//! `fleet-health-server probe [URL]`: a health check for places that have
//! no HTTP client (a container's `HEALTHCHECK`, a distroless image): GET the
//! URL, succeed on 200. Plain HTTP only, as the metrics port serves.

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The URL is not an `http://HOST:PORT/PATH` one.
    #[error("{0}: give an http:// URL such as http://127.0.0.1:9464/readyz")]
    Url(String),
    /// No answer in time.
    #[error("no answer from {0} within {1:?}")]
    Timeout(String, Duration),
    /// The connection or the request failed.
    #[error("{url}: {error}")]
    Http {
        /// The URL.
        url: String,
        /// What went wrong.
        error: String,
    },
    /// An answer other than 200.
    #[error("{url} answered {status}: {body}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
        /// What it said.
        body: String,
    },
}

/// GETs `url`; Ok with the body on 200.
pub async fn probe(url: &str, timeout: Duration) -> Result<String, ProbeError> {
    tokio::time::timeout(timeout, get(url))
        .await
        .map_err(|_| ProbeError::Timeout(url.to_owned(), timeout))?
}

async fn get(url: &str) -> Result<String, ProbeError> {
    let uri: hyper::Uri = url.parse().map_err(|_| ProbeError::Url(url.to_owned()))?;
    if uri.scheme_str() != Some("http") {
        return Err(ProbeError::Url(url.to_owned()));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| ProbeError::Url(url.to_owned()))?
        .clone();
    let host_port = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(80)
    );
    let http = |error: String| ProbeError::Http {
        url: url.to_owned(),
        error,
    };
    let stream = tokio::net::TcpStream::connect(&host_port)
        .await
        .map_err(|e| http(e.to_string()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http(e.to_string()))?;
    tokio::spawn(conn);
    let request = hyper::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(hyper::header::HOST, authority.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|e| http(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| http(e.to_string()))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| http(e.to_string()))?
        .to_bytes();
    let body = String::from_utf8_lossy(&body).trim().to_owned();
    if status == 200 {
        Ok(body)
    } else {
        Err(ProbeError::Status {
            url: url.to_owned(),
            status,
            body,
        })
    }
}
