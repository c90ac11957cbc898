//! The daemon's local HTTP listener: `GET /metrics` for Prometheus and the admin API.
//!
//! Runs on its own thread (its own single-threaded tokio runtime), so a slow or hostile client
//! never holds up the pipeline. It reads only snapshots: the metrics' atomics and an
//! [`AdminView`] the live loop replaces once per refresh. Lift and suspend are sent to the live
//! loop as [`AdminCommand`]s and answered from there. Every request is bounded: head size, body
//! size, time, and the number of connections at once. The admin endpoints need the bearer token
//! from `api.token_file`, compared in constant time; no response ever holds a raw API token.

mod http;
pub mod live;
#[cfg(test)]
mod tests;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::edges::telemetry::{CONTENT_TYPE, Metrics};
use crate::shared::model::Span;
use crate::shared::secret_file::{SecretFileError, read_secret_text};
use crate::shared::settings::{Duration, Problem, at_least_one, longer_than_zero};
use crate::shared::token::TokenFingerprint;

/// Default port: unassigned in Prometheus's default port allocations list as far as we know.
pub(crate) const DEFAULT_PORT: u16 = 9864;

/// `[api]`: where the listener binds and who may use the admin endpoints.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Start the listener with `run`.
    pub enabled: bool,
    /// Address and port (`127.0.0.1:9864`); port 0 picks a free one (logged at start).
    pub(crate) listen: String,
    /// File holding the admin API's bearer token (not world-readable); absent: admin API off.
    pub token_file: Option<PathBuf>,
    /// Per-token gauges for the top tokens by load, keyed by fingerprint (0: none, at most 20).
    pub(crate) top_tokens: usize,
    /// Connections served at once; more are refused with 503.
    pub(crate) max_connections: usize,
    /// Time a client has to send its whole request.
    pub(crate) request_timeout: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: format!("127.0.0.1:{DEFAULT_PORT}"),
            token_file: None,
            top_tokens: 0,
            max_connections: 16,
            request_timeout: Duration(Span::from_secs(5)),
        }
    }
}

impl ApiConfig {
    /// What is wrong with `[api]`, each problem keyed by its full path.
    pub(crate) fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.listen.parse::<SocketAddr>().is_err() {
            problems.push(Problem::new(
                "api.listen".into(),
                format!(
                    "{:?} is not an address and port, e.g. \"127.0.0.1:{DEFAULT_PORT}\"",
                    self.listen
                ),
            ));
        }
        if self.top_tokens > crate::edges::telemetry::MAX_TOP_TOKENS {
            problems.push(Problem::new(
                "api.top_tokens".into(),
                format!(
                    "{} is more than {} (each is a time series per token)",
                    self.top_tokens,
                    crate::edges::telemetry::MAX_TOP_TOKENS
                ),
            ));
        }
        at_least_one(
            &mut problems,
            &[("api.max_connections", self.max_connections as u64)],
        );
        longer_than_zero(
            &mut problems,
            &[("api.request_timeout", self.request_timeout)],
            "5s",
        );
        problems
    }

    pub fn address(&self) -> SocketAddr {
        self.listen
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "cannot listen on {address} (`api.listen`): {source}; choose a free port, or set \
         `api.enabled = false`"
    )]
    Bind {
        address: SocketAddr,
        source: io::Error,
    },
    #[error("the admin API token file {path} (`api.token_file`) {source}")]
    TokenFile {
        path: PathBuf,
        source: SecretFileError,
    },
    #[error(
        "the admin API token file {path} (`api.token_file`) holds {len} characters; put a random \
         token of at least 16 on one line, e.g. `head -c 32 /dev/urandom | base64 > {path}`"
    )]
    TokenTooShort { path: PathBuf, len: usize },
    #[error("cannot start the API thread: {0}")]
    Thread(io::Error),
}

/// The admin bearer token, kept only as its SHA-256 so that comparing takes the same time
/// whatever the guess.
#[derive(Clone)]
pub(crate) struct Bearer([u8; 32]);

impl Bearer {
    /// Reads the token file; refuses a file that every user can read.
    pub(crate) fn load(path: &Path) -> Result<Bearer, ApiError> {
        let text = read_secret_text(path, 4096).map_err(|source| ApiError::TokenFile {
            path: path.to_owned(),
            source,
        })?;
        let token = text.trim();
        if token.len() < 16 {
            return Err(ApiError::TokenTooShort {
                path: path.to_owned(),
                len: token.len(),
            });
        }
        Ok(Bearer::of(token))
    }

    pub(crate) fn of(token: &str) -> Bearer {
        Bearer(Sha256::digest(token.as_bytes()).into())
    }

    /// Whether an `Authorization` header value carries this token, in constant time.
    pub(crate) fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let given = value.strip_prefix(b"Bearer ").unwrap_or(b"");
        let digest: [u8; 32] = Sha256::digest(given).into();
        digest
            .iter()
            .zip(self.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// What the admin endpoints answer, replaced whole by the live loop once per refresh.
#[derive(Clone, Debug, Default)]
pub(crate) struct AdminView {
    /// The same counters as the stats file (`redcap-monitor status` reads either).
    pub(crate) status: crate::edges::telemetry::Snapshot,
    pub(crate) top: serde_json::Value,
    pub(crate) suspensions: serde_json::Value,
    pub(crate) violations: serde_json::Value,
}

/// A change an admin asks for, carried out by the live loop.
pub(crate) enum AdminCommand {
    Suspend {
        token: TokenFingerprint,
        /// `None`: until lifted.
        duration: Option<Span>,
        reason: String,
        reply: oneshot::Sender<Result<serde_json::Value, String>>,
    },
    Lift {
        token: TokenFingerprint,
        reason: String,
        reply: oneshot::Sender<Result<serde_json::Value, String>>,
    },
}

/// What the API thread shares with the live loop.
pub(crate) struct Shared {
    pub(crate) metrics: Metrics,
    view: Mutex<Arc<AdminView>>,
}

impl Shared {
    pub(crate) fn new(metrics: Metrics) -> Arc<Shared> {
        Arc::new(Shared {
            metrics,
            view: Mutex::new(Arc::new(AdminView::default())),
        })
    }

    /// Replaces the admin view (the lock is held only for the swap).
    pub(crate) fn publish(&self, view: AdminView) {
        let view = Arc::new(view);
        match self.view.lock() {
            Ok(mut slot) => *slot = view,
            Err(poisoned) => *poisoned.into_inner() = view,
        }
    }

    fn view(&self) -> Arc<AdminView> {
        match self.view.lock() {
            Ok(slot) => slot.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// The running listener; dropping it stops the thread.
pub(crate) struct ApiServer {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Binds now (so that a taken port is an error at start-up) and serves on a new thread.
    pub(crate) fn start(
        config: &ApiConfig,
        shared: Arc<Shared>,
        bearer: Option<Bearer>,
        commands: mpsc::Sender<AdminCommand>,
    ) -> Result<ApiServer, ApiError> {
        let address = config.address();
        let listener = std::net::TcpListener::bind(address)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| ApiError::Bind { address, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| ApiError::Bind { address, source })?;
        let (stop, stopped) = oneshot::channel();
        let service = Service {
            shared,
            bearer,
            commands,
            timeout: std::time::Duration::from_nanos(config.request_timeout.span().0),
            permits: Arc::new(Semaphore::new(config.max_connections)),
        };
        let thread = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || serve(listener, service, stopped))
            .map_err(ApiError::Thread)?;
        Ok(ApiServer {
            address: bound,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where it listens (the chosen port when the configuration said 0).
    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[derive(Clone)]
struct Service {
    shared: Arc<Shared>,
    bearer: Option<Bearer>,
    commands: mpsc::Sender<AdminCommand>,
    timeout: std::time::Duration,
    permits: Arc<Semaphore>,
}

fn serve(listener: std::net::TcpListener, service: Service, stopped: oneshot::Receiver<()>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(%err, "the API thread cannot start its runtime; /metrics is off");
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(err) => {
                tracing::error!(%err, "the API listener cannot be used; /metrics is off");
                return;
            }
        };
        let mut stopped = stopped;
        loop {
            let accepted = tokio::select! {
                _ = &mut stopped => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, _) = match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(%err, "API listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let service = service.clone();
            match service.permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    tokio::spawn(async move {
                        http::handle(stream, &service).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    tokio::spawn(async move {
                        http::refuse_busy(stream, service.timeout).await;
                    });
                }
            }
        }
    });
}

/// One parsed request, as the router sees it.
struct Request<'a> {
    method: &'a str,
    path: &'a str,
    authorization: Option<&'a [u8]>,
    body: &'a [u8],
}

/// A response: status, content type, body.
struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
    bearer_challenge: bool,
}

impl Response {
    fn json(status: u16, value: &serde_json::Value) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: format!("{value}\n"),
            bearer_challenge: false,
        }
    }

    fn error(status: u16, message: &str) -> Response {
        Response::json(status, &serde_json::json!({ "error": message }))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SuspendBody {
    token_fp: TokenFingerprint,
    /// e.g. `1h`; absent: until lifted.
    #[serde(default, rename = "for")]
    duration: Option<Duration>,
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LiftBody {
    token_fp: TokenFingerprint,
    #[serde(default)]
    reason: Option<String>,
}

async fn route(request: &Request<'_>, service: &Service) -> Response {
    if request.path == "/metrics" {
        if request.method != "GET" {
            return Response::error(405, "use GET");
        }
        return Response {
            status: 200,
            content_type: CONTENT_TYPE,
            body: service.shared.metrics.encode(),
            bearer_challenge: false,
        };
    }
    let Some(endpoint) = request.path.strip_prefix("/api/v1/") else {
        return Response::error(404, "no such endpoint: /metrics and /api/v1/... exist");
    };
    let Some(bearer) = &service.bearer else {
        return Response::error(
            404,
            "the admin API is off: set `api.token_file` in the daemon's configuration",
        );
    };
    if !bearer.admits(request.authorization) {
        return Response {
            bearer_challenge: true,
            ..Response::error(
                401,
                "missing or wrong bearer token (send `Authorization: Bearer <the token in api.token_file>`)",
            )
        };
    }
    let view = service.shared.view();
    match (request.method, endpoint) {
        ("GET", "status") => {
            Response::json(200, &serde_json::to_value(&view.status).unwrap_or_default())
        }
        ("GET", "top") => Response::json(200, &view.top),
        ("GET", "suspensions") => Response::json(200, &view.suspensions),
        ("GET", "violations") => Response::json(200, &view.violations),
        ("POST", "suspend") => match serde_json::from_slice::<SuspendBody>(request.body) {
            Ok(body) => {
                let (reply, answer) = oneshot::channel();
                let command = AdminCommand::Suspend {
                    token: body.token_fp,
                    duration: body.duration.map(Duration::span),
                    reason: body.reason,
                    reply,
                };
                ask(service, command, answer).await
            }
            Err(err) => Response::error(
                400,
                &format!(
                    "expected {{\"token_fp\": \"16 hex digits\", \"for\": \"1h\" (optional), \"reason\": \"...\"}}: {err}"
                ),
            ),
        },
        ("POST", "lift") => match serde_json::from_slice::<LiftBody>(request.body) {
            Ok(body) => {
                let (reply, answer) = oneshot::channel();
                let command = AdminCommand::Lift {
                    token: body.token_fp,
                    reason: body
                        .reason
                        .unwrap_or_else(|| "lifted through the admin API".into()),
                    reply,
                };
                ask(service, command, answer).await
            }
            Err(err) => Response::error(
                400,
                &format!(
                    "expected {{\"token_fp\": \"16 hex digits\", \"reason\": \"...\" (optional)}}: {err}"
                ),
            ),
        },
        (_, "status" | "top" | "suspensions" | "violations") => Response::error(405, "use GET"),
        (_, "suspend" | "lift") => Response::error(405, "use POST"),
        _ => Response::error(
            404,
            "no such endpoint: status, top, suspensions, violations, suspend, lift",
        ),
    }
}

/// Sends a command to the live loop and waits (bounded) for its answer.
async fn ask(
    service: &Service,
    command: AdminCommand,
    answer: oneshot::Receiver<Result<serde_json::Value, String>>,
) -> Response {
    if service.commands.try_send(command).is_err() {
        return Response::error(503, "the daemon is busy or stopping; try again");
    }
    match tokio::time::timeout(service.timeout, answer).await {
        Ok(Ok(Ok(value))) => Response::json(200, &value),
        Ok(Ok(Err(message))) => Response::error(409, &message),
        _ => Response::error(503, "the daemon did not answer in time; try again"),
    }
}
