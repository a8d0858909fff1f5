//! The optional alarm webhook (`--alarm-webhook`): a JSON POST for every alarm raised and
//! cleared, retried with backoff, from a bounded queue, so that a slow or absent receiver
//! never holds up the evaluator, let alone sync.
//!
//! ```text
//!  remote::alarms ── Queue::push (never waits; full: dropped, counted) ──▶ [1,024 bodies]
//!      ──▶ Deliverer::run (one at a time, in order): POST, 10 s timeout
//!            2xx: delivered │ 4xx (but 408, 429): refused, not retried
//!            else: again after 1 s, 2 s, 4 s, … ≤ 60 s, 8 attempts in all, then given up
//! ```
//!
//! Secrets: the bearer token lives in a file (read before every delivery, so a rotated one
//! is used without a restart), never on a command line, and neither it nor the URL's path
//! and query (where some receivers put their secret) reaches the log: the log names the
//! receiver by scheme, host and port alone.
//!
//! Deliberately absent: redirects (a 3xx is a failure), HTTP/2, and any persistence of the
//! queue (an event still queued when the site stops is lost; the alarm history in the store
//! and the API have it).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::{Request, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use metrics::Counter;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Events the queue holds; more are dropped (and counted) until it drains.
pub const QUEUE: usize = 1024;
/// Tries of one event before it is given up.
pub const ATTEMPTS: u32 = 8;
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);
/// The most one try may take, connecting included.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where the site posts its alarms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// `http://` or `https://` (trusting the public web roots) URL of the receiver.
    pub url: String,
    /// A file whose first line is a token sent as `Authorization: Bearer …`. Default: none.
    pub token_file: Option<PathBuf>,
}

/// A checked webhook URL.
#[derive(Debug, Clone)]
struct Target {
    tls: bool,
    host: String,
    port: u16,
    /// `host:port` as the `Host` header says it.
    authority: String,
    path: String,
}

impl Target {
    /// How the log names the receiver: scheme, host and port, never the path or query.
    fn shown(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.authority)
    }
}

impl WebhookConfig {
    /// Checks the URL without I/O: `http` or `https`, a host, no user name or password in it
    /// (put a token in the token file instead).
    pub fn check(&self) -> Result<(), String> {
        self.target().map(|_| ())
    }

    fn target(&self) -> Result<Target, String> {
        let uri: Uri = self
            .url
            .parse()
            .map_err(|e| format!("the alarm webhook URL is not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("the alarm webhook URL must start with http:// or https://".into()),
        };
        let authority = uri.authority().ok_or("the alarm webhook URL has no host")?;
        if authority.as_str().contains('@') {
            return Err(
                "the alarm webhook URL must not hold a user or password; use the token file".into(),
            );
        }
        let host = authority.host().trim_matches(['[', ']']).to_owned();
        if host.is_empty() {
            return Err("the alarm webhook URL has no host".into());
        }
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Target {
            tls,
            host,
            port,
            authority: authority.as_str().to_owned(),
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        })
    }
}

/// The evaluator's end: hands events to the deliverer without ever waiting.
pub struct Queue {
    tx: mpsc::Sender<String>,
}

impl Queue {
    /// Queues one JSON body; false (and nothing queued) when the queue is full.
    pub fn push(&self, body: String) -> bool {
        self.tx.try_send(body).is_ok()
    }
}

/// The delivering end, run by the evaluator's task.
pub struct Deliverer {
    target: Target,
    token_file: Option<PathBuf>,
    rx: mpsc::Receiver<String>,
    tls: Arc<rustls::ClientConfig>,
}

/// A queue and its deliverer for `config`, or why the configuration cannot work.
pub fn channel(config: &WebhookConfig) -> Result<(Queue, Deliverer), String> {
    let target = config.target()?;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("the webhook's TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (tx, rx) = mpsc::channel(QUEUE);
    Ok((
        Queue { tx },
        Deliverer {
            target,
            token_file: config.token_file.clone(),
            rx,
            tls: Arc::new(tls),
        },
    ))
}

/// How one try ended.
enum Try {
    Delivered,
    /// The receiver refused it for good (a 4xx other than 408 and 429).
    Refused(StatusCode),
    Failed(String),
}

impl Deliverer {
    /// Delivers queued events in order until `cancel`, counting those `delivered` and those
    /// given up (`undelivered`).
    pub async fn run(
        mut self,
        delivered: Counter,
        undelivered: Counter,
        cancel: CancellationToken,
    ) {
        let shown = self.target.shown();
        loop {
            let body = tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                b = self.rx.recv() => match b {
                    Some(b) => b,
                    None => return,
                },
            };
            let mut wait = FIRST_RETRY;
            for attempt in 1..=ATTEMPTS {
                match self.attempt(&body).await {
                    Try::Delivered => {
                        delivered.increment(1);
                        break;
                    }
                    Try::Refused(status) => {
                        tracing::warn!(webhook = %shown, %status, "the alarm webhook refused an event; it is not sent again");
                        undelivered.increment(1);
                        break;
                    }
                    Try::Failed(why) if attempt == ATTEMPTS => {
                        tracing::warn!(webhook = %shown, attempts = ATTEMPTS, error = %why, "gave up delivering an alarm event");
                        undelivered.increment(1);
                    }
                    Try::Failed(why) => {
                        tracing::info!(webhook = %shown, attempt, error = %why, retry_in = ?wait, "alarm webhook delivery failed; trying again");
                        tokio::select! {
                            biased;
                            () = cancel.cancelled() => return,
                            () = tokio::time::sleep(wait) => {}
                        }
                        wait = (wait * 2).min(MAX_RETRY);
                    }
                }
            }
        }
    }

    async fn attempt(&self, body: &str) -> Try {
        match tokio::time::timeout(TIMEOUT, self.post(body)).await {
            Err(_) => Try::Failed(format!("no answer within {TIMEOUT:?}")),
            Ok(Err(why)) => Try::Failed(why),
            Ok(Ok(s)) if s.is_success() => Try::Delivered,
            Ok(Ok(s))
                if s.is_client_error()
                    && s != StatusCode::REQUEST_TIMEOUT
                    && s != StatusCode::TOO_MANY_REQUESTS =>
            {
                Try::Refused(s)
            }
            Ok(Ok(s)) => Try::Failed(format!("answered {s}")),
        }
    }

    /// One POST of `body`; the receiver's status.
    async fn post(&self, body: &str) -> Result<StatusCode, String> {
        let t = &self.target;
        let mut req = Request::post(t.path.as_str())
            .header(header::HOST, t.authority.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "west-remote-sync");
        if let Some(path) = &self.token_file {
            let token = std::fs::read_to_string(path)
                .map_err(|e| format!("reading the token file {}: {e}", path.display()))?;
            let token = token.lines().next().unwrap_or("").trim();
            if token.is_empty() {
                return Err(format!("the token file {} is empty", path.display()));
            }
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req
            .body(body.to_owned())
            .map_err(|e| format!("building the request: {e}"))?;
        let tcp = TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        let _ = tcp.set_nodelay(true);
        if t.tls {
            let name =
                ServerName::try_from(t.host.clone()).map_err(|e| format!("the host name: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            exchange(TokioIo::new(tls), req).await
        } else {
            exchange(TokioIo::new(tcp), req).await
        }
    }
}

/// Sends `req` over a fresh HTTP/1.1 connection on `io` and reads the answer's status,
/// driving the connection meanwhile (no task of its own outlives the call).
async fn exchange<I>(io: I, req: Request<String>) -> Result<StatusCode, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        answer = sender.send_request(req) => answer
            .map(|r| r.status())
            .map_err(|e| format!("HTTP: {e}")),
        ended = &mut conn => Err(match ended {
            Ok(()) => "the receiver closed the connection".to_owned(),
            Err(e) => format!("HTTP: {e}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str) -> Result<(bool, String, u16, String), String> {
        let t = WebhookConfig {
            url: url.into(),
            token_file: None,
        }
        .target()?;
        Ok((t.tls, t.host, t.port, t.path))
    }

    #[test]
    fn urls_are_checked_and_the_log_never_shows_their_path() {
        assert_eq!(
            check("https://hooks.example.com/services/T0/B0/secret?x=1"),
            Ok((
                true,
                "hooks.example.com".into(),
                443,
                "/services/T0/B0/secret?x=1".into()
            ))
        );
        assert_eq!(
            check("http://127.0.0.1:9000"),
            Ok((false, "127.0.0.1".into(), 9000, "/".into()))
        );
        assert_eq!(
            check("http://[::1]:9000/a"),
            Ok((false, "::1".into(), 9000, "/a".into()))
        );
        for bad in [
            "ftp://example.com/",
            "example.com/hook",
            "https://user:pw@example.com/",
            "not a url",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
        let t = WebhookConfig {
            url: "https://hooks.example.com:8443/secret".into(),
            token_file: None,
        }
        .target()
        .unwrap();
        assert_eq!(t.shown(), "https://hooks.example.com:8443");
    }
}
