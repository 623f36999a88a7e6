//! `--metrics-listen HOST:PORT`: Prometheus metrics on `/metrics`, in the
//! OpenMetrics text format (which Prometheus scrapes), encoded by
//! prometheus-client.
//!
//! Nothing is counted twice: each command hands over a function that reads
//! its own counters (engine stats, pool and server counters, forwarder
//! rules) at scrape time, and this module only names and encodes them. The
//! listener is a tiny HTTP/1.1 responder on the command's runtime: one
//! request per connection, `GET /metrics` answered, anything else 404.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A value at scrape time.
#[derive(Debug, Clone, Copy)]
enum Value {
    Int(u64),
    Float(f64),
}

#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    counter: bool,
    samples: Vec<(Vec<(&'static str, String)>, Value)>,
}

/// The metrics of one scrape, as a command's reader function fills them in.
#[derive(Debug, Default)]
pub struct Families(Vec<Family>);

impl Families {
    /// A counter (`NAME_total` in the output: do not end `name` in `_total`).
    pub fn counter(&mut self, name: &'static str, help: &'static str, value: u64) {
        self.add(name, help, true, Vec::new(), Value::Int(value));
    }

    /// A gauge holding a whole number.
    pub fn gauge(&mut self, name: &'static str, help: &'static str, value: u64) {
        self.add(name, help, false, Vec::new(), Value::Int(value));
    }

    /// A gauge holding any number (seconds, say).
    pub fn gauge_f64(&mut self, name: &'static str, help: &'static str, value: f64) {
        self.add(name, help, false, Vec::new(), Value::Float(value));
    }

    /// One labelled sample of a counter family.
    pub fn counter_with(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: Vec<(&'static str, String)>,
        value: u64,
    ) {
        self.add(name, help, true, labels, Value::Int(value));
    }

    /// One labelled sample of a gauge family.
    pub fn gauge_with(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: Vec<(&'static str, String)>,
        value: f64,
    ) {
        self.add(name, help, false, labels, Value::Float(value));
    }

    fn add(
        &mut self,
        name: &'static str,
        help: &'static str,
        counter: bool,
        labels: Vec<(&'static str, String)>,
        value: Value,
    ) {
        match self.0.iter_mut().find(|f| f.name == name) {
            Some(family) => family.samples.push((labels, value)),
            None => self.0.push(Family { name, help, counter, samples: vec![(labels, value)] }),
        }
    }
}

/// Reads a command's counters into [`Families`] at each scrape.
type Reader = Box<dyn Fn(&mut Families) + Send + Sync>;

struct Gather(Reader);

impl std::fmt::Debug for Gather {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gather")
    }
}

impl Collector for Gather {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut families = Families::default();
        (self.0)(&mut families);
        for family in &families.0 {
            let kind = if family.counter { MetricType::Counter } else { MetricType::Gauge };
            let mut metric = encoder.encode_descriptor(family.name, family.help, None, kind)?;
            for (labels, value) in &family.samples {
                let sample = metric.encode_family(labels)?;
                match (family.counter, *value) {
                    (true, Value::Int(n)) => ConstCounter::new(n).encode(sample)?,
                    (true, Value::Float(x)) => ConstCounter::new(x).encode(sample)?,
                    (false, Value::Int(n)) => ConstGauge::new(n).encode(sample)?,
                    (false, Value::Float(x)) => ConstGauge::new(x).encode(sample)?,
                }
            }
        }
        Ok(())
    }
}

/// Serves the metrics that `reader` reads on `http://addr/metrics`, in the
/// background on the current runtime, and says where on stderr. Returns
/// once listening (or with the reason it cannot).
pub async fn serve(addr: Option<SocketAddr>, reader: impl Fn(&mut Families) + Send + Sync + 'static) -> Result<()> {
    let Some(addr) = addr else { return Ok(()) };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Gather(Box::new(reader))));
    let registry = Arc::new(registry);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("--metrics-listen {addr}"))?;
    eprintln!("metrics on {}", listener.local_addr()?);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &registry)).await;
            });
        }
    });
    Ok(())
}

/// The most a request head may take.
const MAX_HEAD: usize = 8 << 10;

async fn answer(mut stream: tokio::net::TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let (status, kind, body) = match route(&head) {
        Route::Metrics => {
            let mut text = String::new();
            let encoded = prometheus_client::encoding::text::encode(&mut text, registry);
            match encoded {
                Ok(()) => ("200 OK", CONTENT_TYPE, text),
                Err(_) => ("500 Internal Server Error", "text/plain", "cannot encode the metrics\n".to_owned()),
            }
        }
        Route::NotFound => ("404 Not Found", "text/plain", "not found: the metrics are at /metrics\n".to_owned()),
        Route::Bad => ("400 Bad Request", "text/plain", "bad request\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    NotFound,
    Bad,
}

/// Routes a request by its first line: `GET /metrics` (a query string
/// allowed) is the one thing served.
fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else { return Route::Bad };
    let mut words = line.trim_end_matches('\r').split(' ');
    match (words.next(), words.next(), words.next()) {
        (Some(method), Some(target), Some(version)) if version.starts_with("HTTP/1.") => {
            let path = target.split('?').next().unwrap_or_default();
            if (method == "GET" || method == "HEAD") && path == "/metrics" { Route::Metrics } else { Route::NotFound }
        }
        _ => Route::Bad,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"\x16\x03\x01 garbage"), Route::Bad);
        assert_eq!(route(b""), Route::Bad);
    }

    #[test]
    fn families_encode_as_openmetrics_text() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Gather(Box::new(|f: &mut Families| {
            f.counter("pareco_x_bytes", "X.", 7);
            f.gauge_f64("pareco_y_seconds", "Y.", 1.5);
            f.counter_with("pareco_errors", "E.", vec![("kind", "failed".into())], 2);
            f.counter_with("pareco_errors", "E.", vec![("kind", "vanished".into())], 0);
        }))));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("# TYPE pareco_x_bytes counter\n"), "{text}");
        assert!(text.contains("pareco_x_bytes_total 7\n"), "{text}");
        assert!(text.contains("# TYPE pareco_y_seconds gauge\npareco_y_seconds 1.5\n"), "{text}");
        assert!(text.contains("pareco_errors_total{kind=\"failed\"} 2\n"), "{text}");
        assert!(text.contains("pareco_errors_total{kind=\"vanished\"} 0\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
