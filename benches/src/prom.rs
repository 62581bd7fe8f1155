//! A child's Prometheus metrics: one scrape of `GET /metrics` over plain HTTP/1.1 on loopback,
//! the samples of the text exposition format, sums of a family, and histogram quantiles by
//! linear interpolation within a bucket (as Prometheus' `histogram_quantile` computes them).

use std::net::SocketAddr;

use http_body_util::{BodyExt, Empty};
use hyper::header::HOST;
use hyper::Request;
use postern_tests::http1_client;
use tokio::net::TcpStream;

use crate::load::OP_TIMEOUT;

/// The body of `GET http://{addr}/metrics`.
///
/// # Panics
/// If the listener does not answer 200 within [`OP_TIMEOUT`].
pub async fn scrape(addr: SocketAddr) -> String {
    let scrape = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut sender = http1_client(tcp).await;
        let req = Request::get("/metrics")
            .header(HOST, addr.to_string())
            .body(Empty::new().map_err(|n| match n {}).boxed())
            .map_err(|e| format!("request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("response: {e}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("status {status}"));
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(OP_TIMEOUT, scrape)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
        .unwrap_or_else(|e| panic!("GET http://{addr}/metrics: {e}"))
}

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample of a text exposition; comments and lines that do not parse are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let (labels, after) = parse_labels(&line[open + 1..])?;
            (&line[..open], labels, after)
        }
        None => {
            let end = line.find(char::is_whitespace)?;
            (&line[..end], Vec::new(), &line[end..])
        }
    };
    // The value, then an optional timestamp.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.trim().to_owned(),
        labels,
        value,
    })
}

/// `k="v",k2="v2"}` → the labels and what follows the `}`.
fn parse_labels(s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_owned();
        let mut chars = rest[eq + 1..].char_indices();
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        let mut escaped = false;
        let mut end = None;
        for (i, c) in chars {
            if escaped {
                value.push(if c == 'n' { '\n' } else { c });
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                end = Some(i);
                break;
            } else {
                value.push(c);
            }
        }
        rest = &rest[eq + 1 + end? + 1..];
        labels.push((key, value));
    }
}

/// The sum of every sample named `name` (e.g. a counter over all its label values); `None` when
/// there is no such sample.
pub fn sum(samples: &[Sample], name: &str) -> Option<f64> {
    let mut found = samples.iter().filter(|s| s.name == name).peekable();
    found.peek()?;
    Some(found.map(|s| s.value).sum())
}

/// The cumulative buckets `(le, count)` of histogram `family` (every label other than `le`
/// summed), sorted by `le`, `+Inf` last.
pub fn buckets(samples: &[Sample], family: &str) -> Vec<(f64, f64)> {
    let name = format!("{family}_bucket");
    let mut by_le: Vec<(f64, f64)> = Vec::new();
    for s in samples.iter().filter(|s| s.name == name) {
        let Some(le) = s.label("le").and_then(|le| match le {
            "+Inf" => Some(f64::INFINITY),
            v => v.parse::<f64>().ok(),
        }) else {
            continue;
        };
        match by_le.iter_mut().find(|(l, _)| *l == le) {
            Some((_, n)) => *n += s.value,
            None => by_le.push((le, s.value)),
        }
    }
    by_le.sort_by(|a, b| a.0.total_cmp(&b.0));
    by_le
}

/// The `q`-quantile (0..=1) of cumulative `buckets` as Prometheus' `histogram_quantile`: the
/// bucket holding rank `q * total`, interpolated linearly between its bounds (the first bucket's
/// lower bound is 0); a rank in the `+Inf` bucket gives the largest finite bound. `None` without
/// observations or without a `+Inf` bucket.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let &(last_le, total) = buckets.last()?;
    if last_le != f64::INFINITY || total <= 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let i = buckets.iter().position(|&(_, n)| n >= rank)?;
    let (upper, count) = buckets[i];
    if upper == f64::INFINITY {
        return Some(if i == 0 { 0.0 } else { buckets[i - 1].0 });
    }
    let (lower, below) = if i == 0 {
        (0.0_f64.min(upper), 0.0)
    } else {
        buckets[i - 1]
    };
    if count <= below {
        return Some(upper);
    }
    Some(lower + (upper - lower) * (rank - below) / (count - below))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP x_total help\n# TYPE x_total counter\n\
        x_total{lease=\"a\",method=\"GET\",status_class=\"2xx\"} 10\n\
        x_total{lease=\"b\\\"q\",method=\"GET\",status_class=\"5xx\"} 5\n\
        g 0\n\
        h_bucket{le=\"0.001\"} 0\n\
        h_bucket{le=\"0.002\"} 50\n\
        h_bucket{le=\"0.004\"} 90\n\
        h_bucket{le=\"+Inf\"} 100\n\
        h_sum 0.3\nh_count 100\n";

    #[test]
    fn parses_samples_and_sums_families() {
        let s = parse(TEXT);
        assert_eq!(sum(&s, "x_total"), Some(15.0));
        assert_eq!(sum(&s, "g"), Some(0.0));
        assert_eq!(sum(&s, "missing"), None);
        assert_eq!(s[1].label("lease"), Some("b\"q"));
        assert_eq!(sum(&s, "h_count"), Some(100.0));
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let b = buckets(&parse(TEXT), "h");
        assert_eq!(b.len(), 4);
        // rank 50 is the top of the (0.001, 0.002] bucket.
        let p50 = histogram_quantile(0.5, &b).unwrap();
        assert!((p50 - 0.002).abs() < 1e-12, "{p50}");
        // rank 70: halfway through (0.002, 0.004].
        let p70 = histogram_quantile(0.7, &b).unwrap();
        assert!((p70 - 0.003).abs() < 1e-12, "{p70}");
        // rank 99 is in +Inf: the largest finite bound.
        assert_eq!(histogram_quantile(0.99, &b), Some(0.004));
        assert_eq!(histogram_quantile(0.5, &[(f64::INFINITY, 0.0)]), None);
        // The first bucket interpolates from 0.
        let first = [(0.01, 10.0), (f64::INFINITY, 10.0)];
        assert!((histogram_quantile(0.5, &first).unwrap() - 0.005).abs() < 1e-12);
    }
}
