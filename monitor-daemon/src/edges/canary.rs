//! The active canary: an HTTP GET of a configured page every few seconds, timed, for the health
//! detector (`[health.canary]`).
//!
//! An edge: runs on its own thread with the blocking client the project uses elsewhere (ureq), so
//! a hung server delays only the canary. Each probe becomes one observation, its latency (time to
//! the answer's head) or `None` for no answer within the timeout, a network error or a 5xx, stamped
//! with the wall clock when it was sent; the live loop takes them and feeds the detector. Redirects
//! are not followed: a 3xx is an answer.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::shared::model::{Span, Timestamp};
use crate::stages::health::CanaryConfig;

/// One probe's result: when it was sent, and how long the answer took (`None`: failed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CanaryObservation {
    pub(crate) at: Timestamp,
    pub(crate) latency: Option<Span>,
}

/// The running canary; dropping it stops the thread (after the probe in flight).
pub(crate) struct Canary {
    results: Receiver<CanaryObservation>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Canary {
    /// Starts probing `config.url`; `None` when no url is configured.
    pub(crate) fn start(config: &CanaryConfig) -> std::io::Result<Option<Canary>> {
        let Some(url) = config.url.clone() else {
            return Ok(None);
        };
        let interval = Duration::from_nanos(config.interval.span().0);
        let timeout = Duration::from_nanos(config.timeout.span().0);
        let (sender, results) = channel();
        let (stop, stopped) = channel::<()>();
        let thread = std::thread::Builder::new()
            .name("canary".into())
            .spawn(move || {
                let agent = agent(timeout);
                loop {
                    let observation = probe(&agent, &url);
                    if sender.send(observation).is_err() {
                        return;
                    }
                    match stopped.recv_timeout(interval) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            })?;
        Ok(Some(Canary {
            results,
            stop: Some(stop),
            thread: Some(thread),
        }))
    }

    /// The observations made since the last call.
    pub(crate) fn results(&self) -> Vec<CanaryObservation> {
        self.results.try_iter().collect()
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn agent(timeout: Duration) -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .build();
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .user_agent(concat!("redcap-monitor-canary/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls)
        .build()
        .into()
}

/// One GET: its latency, or `None` when it failed.
fn probe(agent: &ureq::Agent, url: &str) -> CanaryObservation {
    let at = crate::edges::alerts::wall_now();
    let started = Instant::now();
    let latency = match agent.get(url).call() {
        Ok(response) if response.status().is_server_error() => {
            tracing::debug!(status = response.status().as_u16(), "canary: server error");
            None
        }
        Ok(_) => Some(Span::from(started.elapsed())),
        Err(err) => {
            tracing::debug!(error = %err, "canary: no answer");
            None
        }
    };
    CanaryObservation { at, latency }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;
    use crate::shared::settings::Duration as ConfigDuration;
    use crate::stages::health::{BadSign, HealthChange, HealthConfig, ResponsivenessDetector};

    /// A real HTTP server on loopback that answers every GET with `status` after `delay`.
    fn slow_server(delay: Duration, status: u16) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/redcap/", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 2048];
                    let _ = stream.read(&mut buf);
                    std::thread::sleep(delay);
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                    );
                });
            }
        });
        url
    }

    fn config(url: &str, timeout_ms: u64) -> CanaryConfig {
        CanaryConfig {
            url: Some(url.into()),
            interval: ConfigDuration(Span::from_millis(100)),
            timeout: ConfigDuration(Span::from_millis(timeout_ms)),
        }
    }

    fn first_results(canary: &Canary, n: usize) -> Vec<CanaryObservation> {
        let end = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while seen.len() < n && Instant::now() < end {
            seen.extend(canary.results());
            std::thread::sleep(Duration::from_millis(10));
        }
        seen
    }

    #[test]
    fn a_prompt_answer_is_timed() {
        let url = slow_server(Duration::from_millis(150), 200);
        let canary = Canary::start(&config(&url, 2000)).unwrap().unwrap();
        let results = first_results(&canary, 2);
        assert!(results.len() >= 2);
        for r in &results {
            let latency = r.latency.expect("answered").as_secs_f64();
            assert!((0.15..1.0).contains(&latency), "{latency}");
        }
    }

    #[test]
    fn a_server_slower_than_the_timeout_or_failing_is_a_failed_probe() {
        let slow = slow_server(Duration::from_millis(800), 200);
        let canary = Canary::start(&config(&slow, 200)).unwrap().unwrap();
        let results = first_results(&canary, 1);
        assert_eq!(results[0].latency, None);
        drop(canary);
        let failing = slow_server(Duration::ZERO, 503);
        let canary = Canary::start(&config(&failing, 200)).unwrap().unwrap();
        assert_eq!(first_results(&canary, 1)[0].latency, None);
        let redirect = slow_server(Duration::ZERO, 302);
        let canary = Canary::start(&config(&redirect, 500)).unwrap().unwrap();
        assert!(
            first_results(&canary, 1)[0].latency.is_some(),
            "a 3xx is an answer"
        );
    }

    #[test]
    fn no_url_no_canary() {
        assert!(Canary::start(&CanaryConfig::default()).unwrap().is_none());
    }

    #[test]
    fn a_hung_server_seen_by_the_canary_degrades_the_detector() {
        let slow = slow_server(Duration::from_millis(800), 200);
        let canary = Canary::start(&config(&slow, 200)).unwrap().unwrap();
        let mut detector = ResponsivenessDetector::new(HealthConfig {
            interval: ConfigDuration(Span::from_millis(100)),
            ..HealthConfig::default()
        });
        let end = Instant::now() + Duration::from_secs(10);
        let mut change = None;
        while change.is_none() && Instant::now() < end {
            for r in canary.results() {
                detector.observe_canary(r.at, r.latency);
            }
            change = detector.tick(crate::edges::alerts::wall_now());
            std::thread::sleep(Duration::from_millis(50));
        }
        let Some(HealthChange::Degraded { evidence, .. }) = change else {
            panic!("not degraded: {change:?}");
        };
        assert!(evidence.canary_failed);
        assert_eq!(evidence.bad_signs, [BadSign::CanaryFailed]);
    }
}
