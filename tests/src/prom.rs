//! A real Prometheus (Debian's `prometheus` package) in a lab namespace,
//! scraping vipd with the shipped alert rules (`deploy/prometheus-alerts.yaml`,
//! the file itself, so the test cannot drift from it) every second, and
//! evaluating them every second: an alert's `for:` only delays firing, it is
//! `pending` from the first evaluation whose expression holds, and that is
//! what the tests read from `/api/v1/alerts`.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::netns::{Lab, Proc, in_netns};

/// Where Prometheus serves its API, on loopback inside its namespace.
const LISTEN: &str = "127.0.0.1:9090";

/// The scrape job's name: `VipdDown` and `VipdAllDown` match jobs named
/// `*vipd*`, as the README tells operators to name theirs.
pub const JOB: &str = "vipd";

/// One active alert as Prometheus reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    pub name: String,
    /// `pending` or `firing`.
    pub state: String,
    /// Every label but `alertname`, as `key=value`.
    pub labels: BTreeSet<String>,
}

impl Alert {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }
}

/// A Prometheus process in `node`'s namespace; killed when dropped.
pub struct Prom {
    proc: Proc,
    ns: String,
}

/// The shipped rule file.
pub fn rules_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
        .join("prometheus-alerts.yaml")
}

impl Prom {
    /// Starts Prometheus in `node` scraping vipd at `targets` (job
    /// [`JOB`]) with the shipped rules; returns once every target was
    /// scraped successfully.
    pub fn start(lab: &Lab, node: &str, targets: &[SocketAddr]) -> Prom {
        let dir = lab.dir().join("prometheus");
        std::fs::create_dir_all(&dir).expect("create the Prometheus folder");
        let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        // The scrape timeout must stay under the 1 s interval.
        let config = format!(
            "# Written by vip_tests::prom\n\
             global: {{ scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s }}\n\
             rule_files: [\"{}\"]\n\
             scrape_configs:\n\
             \x20 - job_name: {JOB}\n\
             \x20   static_configs: [{{ targets: [{}] }}]\n",
            rules_path().display(),
            list.join(", ")
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let tsdb = dir.join("data");
        let args = [
            format!("--config.file={}", config_path.display()),
            format!("--storage.tsdb.path={}", tsdb.display()),
            format!("--web.listen-address={LISTEN}"),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let proc = lab.spawn(node, "prometheus", &args, &[]);
        proc.wait_for_logs(
            "Server is ready to receive web requests",
            Duration::from_secs(30),
        );
        let p = Prom {
            proc,
            ns: lab.node(node).ns.clone(),
        };
        p.wait("every target scraped", Duration::from_secs(15), |p| {
            let up = p.query("up");
            up.len() == targets.len() && up.iter().all(|(_, v)| *v == 1.0)
        });
        p
    }

    /// Prometheus' own log, for failure messages.
    pub fn logs(&self) -> String {
        self.proc.logs()
    }

    /// GET `path` from the API; the JSON `data`. Panics with the log if
    /// Prometheus does not answer.
    fn api(&self, path: &str) -> Value {
        let addr: SocketAddr = LISTEN.parse().expect("listen address");
        let body = in_netns(&self.ns, || http_get(addr, path))
            .unwrap_or_else(|e| panic!("GET {path} from Prometheus: {e}\n{}", self.logs()));
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"));
        assert_eq!(v["status"], "success", "GET {path}: {body}");
        v["data"].clone()
    }

    /// Every active (pending or firing) alert.
    pub fn alerts(&self) -> Vec<Alert> {
        let data = self.api("/api/v1/alerts");
        data["alerts"]
            .as_array()
            .map(|a| a.iter().map(alert_of).collect())
            .unwrap_or_default()
    }

    /// The names of the active alerts.
    pub fn active(&self) -> BTreeSet<String> {
        self.alerts().into_iter().map(|a| a.name).collect()
    }

    /// An instant query: (labels as `key=value`, value) per series.
    pub fn query(&self, expr: &str) -> Vec<(BTreeSet<String>, f64)> {
        let data = self.api(&format!("/api/v1/query?query={}", urlencode(expr)));
        data["result"]
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|s| {
                        let labels = labels_of(&s["metric"]);
                        let v = s["value"][1]
                            .as_str()
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(f64::NAN);
                        (labels, v)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Polls until `ok`; panics with `what`, the active alerts and the log.
    pub fn wait(&self, what: &str, timeout: Duration, mut ok: impl FnMut(&Prom) -> bool) {
        let end = Instant::now() + timeout;
        loop {
            if ok(self) {
                return;
            }
            assert!(
                Instant::now() < end,
                "{what}: not within {timeout:?}; active alerts: {:?}\n{}",
                self.alerts(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits until alert `name` is active (pending or firing) and returns
    /// its instances.
    pub fn wait_alert(&self, name: &str, timeout: Duration) -> Vec<Alert> {
        self.wait_alerts(name, 1, timeout)
    }

    /// Waits until at least `n` alerts named `name` are active (one per
    /// label set, e.g. per address family): each family's rule result can
    /// turn pending at a different evaluation, since Prometheus scrapes
    /// the two nodes at different moments.
    pub fn wait_alerts(&self, name: &str, n: usize, timeout: Duration) -> Vec<Alert> {
        let mut found = vec![];
        self.wait(&format!("{n} alert(s) {name} pending"), timeout, |p| {
            found = p.alerts().into_iter().filter(|a| a.name == name).collect();
            found.len() >= n
        });
        found
    }

    /// The names of every alert active (pending or firing) at any rule
    /// evaluation since `since`, read from Prometheus' own `ALERTS` series:
    /// an alert that was pending for one evaluation only, in the middle of
    /// a restart, counts too.
    pub fn seen_since(&self, since: Instant) -> BTreeSet<String> {
        let ms = since.elapsed().as_millis().max(1);
        self.query(&format!(
            "count by (alertname) (max_over_time(ALERTS[{ms}ms]))"
        ))
        .into_iter()
        .filter_map(|(labels, _)| {
            labels
                .iter()
                .find_map(|l| l.strip_prefix("alertname="))
                .map(str::to_owned)
        })
        .collect()
    }

    /// Waits until no alert is active, then one more evaluation, so that
    /// the next [`Prom::seen_since`] window starts after them.
    pub fn wait_quiet(&self, timeout: Duration) {
        self.wait("no alert active", timeout, |p| p.alerts().is_empty());
        std::thread::sleep(Duration::from_millis(1500));
    }
}

fn labels_of(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

fn alert_of(a: &Value) -> Alert {
    let mut labels = labels_of(&a["labels"]);
    let name = labels
        .iter()
        .find_map(|l| l.strip_prefix("alertname="))
        .unwrap_or_default()
        .to_owned();
    labels.retain(|l| !l.starts_with("alertname="));
    Alert {
        name,
        state: a["state"].as_str().unwrap_or_default().to_owned(),
        labels,
    }
}

/// Percent-encodes a query parameter (RFC 3986 unreserved characters kept).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One GET as HTTP/1.0: the server closes after the body and never answers
/// in chunks (Go's net/http chunks larger HTTP/1.1 bodies), so the body is
/// everything after the head.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let t = Duration::from_secs(5);
    let mut s = TcpStream::connect_timeout(&addr, t)?;
    s.set_read_timeout(Some(t))?;
    s.set_write_timeout(Some(t))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: prometheus\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer")
    })?;
    if head.split_whitespace().nth(1) != Some("200") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{head}\n{body}"),
        ));
    }
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_encoded_and_alerts_read() {
        assert_eq!(urlencode("up{job=\"vipd\"}"), "up%7Bjob%3D%22vipd%22%7D");
        let a: Value = serde_json::from_str(
            r#"{"labels":{"alertname":"VipdDown","instance":"10.77.0.11:9590","job":"vipd"},"state":"pending"}"#,
        )
        .expect("json");
        let a = alert_of(&a);
        assert_eq!(a.name, "VipdDown");
        assert_eq!(a.state, "pending");
        assert_eq!(a.label("instance"), Some("10.77.0.11:9590"));
        assert_eq!(a.label("alertname"), None);
    }
}
