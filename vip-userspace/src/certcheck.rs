//! The certificate gate's inspection: dial a backend, verify its chain as a
//! client would, and report which wanted names (the VIP, its DNS names) the
//! serving certificate does not cover, its SANs and when it expires. A client
//! that reaches the apiserver through the VIP checks the certificate against
//! the VIP (or the DNS name it used); a backend whose certificate lacks it
//! breaks every such client while its own probe stays green.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::verify_server_name;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::ParsedCertificate;
use x509_parser::extensions::GeneralName;

use crate::probe::{DialError, ProbeTls, deadline_after, dial_tls};

/// A name a client may use to reach the apiserver, which the serving
/// certificate must therefore be valid for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SanName {
    /// An address, matched against the IP SANs (RFC 6125 section 6.2 / RFC 5280 4.2.1.6).
    Ip(IpAddr),
    /// A DNS name, matched against DNS SANs, wildcards included (RFC 6125 section 6.4.3).
    Dns(String),
}

impl SanName {
    /// The name as a TLS client would pass it; `None` for a string that is not
    /// a valid DNS name (no client could use it, so no certificate matches it).
    fn server_name(&self) -> Option<ServerName<'static>> {
        match self {
            SanName::Ip(ip) => Some(ServerName::from(*ip)),
            SanName::Dns(name) => ServerName::try_from(name.clone()).ok(),
        }
    }

    /// The bare value, as written in a kubeadm `certSANs` list.
    fn bare(&self) -> String {
        match self {
            SanName::Ip(ip) => ip.to_string(),
            SanName::Dns(name) => name.clone(),
        }
    }
}

impl fmt::Display for SanName {
    /// `IP:10.0.0.100` / `DNS:kubernetes`, as openssl prints SANs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SanName::Ip(ip) => write!(f, "IP:{ip}"),
            SanName::Dns(name) => write!(f, "DNS:{name}"),
        }
    }
}

/// What the gate learned from a backend's serving certificate.
#[derive(Debug, Clone)]
pub struct CertReport {
    /// The leaf's subject CN, or the whole subject when it has no CN.
    pub subject: String,
    /// Every SAN as text: `IP:10.0.0.100`, `DNS:kubernetes`.
    pub sans: Vec<String>,
    /// The leaf's notAfter.
    pub not_after: SystemTime,
    /// Wanted names the leaf is not valid for, in the order asked.
    pub missing: Vec<SanName>,
}

impl CertReport {
    /// Seconds from `now` to notAfter; negative once expired.
    pub fn seconds_to_expiry(&self, now: SystemTime) -> i64 {
        match self.not_after.duration_since(now) {
            Ok(left) => i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
            Err(past) => i64::try_from(past.duration().as_secs()).map_or(i64::MIN, |s| -s),
        }
    }

    /// Whole days from `now` to notAfter, rounded down (-1 within the first
    /// day after expiry).
    pub fn days_to_expiry(&self, now: SystemTime) -> i64 {
        self.seconds_to_expiry(now).div_euclid(86_400)
    }
}

/// The result of one inspection.
#[derive(Debug, Clone)]
pub enum CertCheck {
    /// The chain verified against the CA with `server_name`; `missing` lists
    /// the wanted names absent from the SANs.
    Checked(CertReport),
    /// Could not connect, the handshake failed for a reason other than the
    /// certificate, or timed out: nothing learned, so this must not count
    /// against the backend in the SAN gate (its probe judges reachability).
    Unreachable(String),
    /// Connected, but the chain does not verify against the CA, or the leaf is
    /// not valid for `server_name`, or has expired: the message says which
    /// and how to fix it.
    Untrusted(String),
}

/// Dials `addr` and runs a TLS handshake that verifies the chain against the
/// CA with `server_name` (rustls' `WebPkiServerVerifier`, as the probes do),
/// then checks the leaf against every `want` name with webpki's own name
/// matching (`verify_is_valid_for_subject_name`), so wildcards and IP SANs
/// behave exactly as a TLS client's would; SANs and notAfter are read with
/// x509-parser. Connect and handshake together take at most `timeout`.
pub async fn inspect(
    addr: SocketAddr,
    server_name: &ServerName<'static>,
    tls: &ProbeTls,
    want: &[SanName],
    timeout: Duration,
) -> CertCheck {
    let deadline = deadline_after(timeout);
    let stream = match dial_tls(addr, server_name, tls, deadline).await {
        Ok(stream) => stream,
        Err(DialError::Untrusted(why)) => return CertCheck::Untrusted(why),
        Err(DialError::Failed(failure)) => return CertCheck::Unreachable(failure.to_string()),
    };
    let (_tcp, conn) = stream.get_ref();
    let Some(leaf) = conn.peer_certificates().and_then(<[_]>::first) else {
        // Not possible after a verified handshake; reported, not panicked on.
        return CertCheck::Unreachable("the server presented no certificate".to_owned());
    };
    match report(leaf, want) {
        Ok(report) => CertCheck::Checked(report),
        Err(why) => CertCheck::Unreachable(why),
    }
}

/// Reads a verified leaf: subject, SANs, notAfter, and which `want` names it
/// is not valid for.
fn report(leaf: &CertificateDer<'_>, want: &[SanName]) -> Result<CertReport, String> {
    let parsed = ParsedCertificate::try_from(leaf)
        .map_err(|e| format!("cannot read the verified certificate (webpki): {e}"))?;
    let missing = want
        .iter()
        .filter(|name| {
            name.server_name()
                .is_none_or(|sn| verify_server_name(&parsed, &sn).is_err())
        })
        .cloned()
        .collect();

    let (_rest, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("cannot read the verified certificate (x509-parser): {e}"))?;
    let subject = cert
        .subject()
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok())
        .map_or_else(|| cert.subject().to_string(), str::to_owned);
    let sans = match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext.value.general_names.iter().map(san_text).collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(format!("cannot read the certificate's SANs: {e}")),
    };
    Ok(CertReport {
        subject,
        sans,
        not_after: unix_time(cert.validity().not_after.timestamp()),
        missing,
    })
}

fn san_text(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::DNSName(dns) => format!("DNS:{dns}"),
        GeneralName::IPAddress(bytes) => match **bytes {
            [a, b, c, d] => format!("IP:{}", Ipv4Addr::new(a, b, c, d)),
            _ => match <[u8; 16]>::try_from(*bytes) {
                Ok(v6) => format!("IP:{}", Ipv6Addr::from(v6)),
                Err(_) => format!("IP:<{} bytes>", bytes.len()),
            },
        },
        GeneralName::RFC822Name(mail) => format!("email:{mail}"),
        GeneralName::URI(uri) => format!("URI:{uri}"),
        other => other.to_string(),
    }
}

/// Seconds since the epoch as `SystemTime`, without panicking on dates the
/// clock type cannot hold.
fn unix_time(secs: i64) -> SystemTime {
    let offset = Duration::from_secs(secs.unsigned_abs());
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    };
    t.unwrap_or(UNIX_EPOCH)
}

/// The operator's fix, for a log line. For kubeadm: add the names to
/// `ClusterConfiguration.apiServer.certSANs`, then on the node move
/// `/etc/kubernetes/pki/apiserver.{crt,key}` away (kubeadm keeps an existing
/// certificate and key rather than reissue them) and run
/// `kubeadm init phase certs apiserver --config kubeadm.yaml`, then restart
/// kube-apiserver; also update the `kubeadm-config` ConfigMap so that
/// upgrades and joins keep the names (kubeadm's "reconfigure" guide).
pub fn fix_hint(missing: &[SanName]) -> String {
    if missing.is_empty() {
        return "the certificate is valid for every wanted name; nothing to fix".to_owned();
    }
    let bare: Vec<String> = missing.iter().map(SanName::bare).collect();
    format!(
        "add {} to ClusterConfiguration.apiServer.certSANs (kubeadm.yaml and the kubeadm-config ConfigMap in kube-system); \
         then on that node move /etc/kubernetes/pki/apiserver.crt and apiserver.key away, \
         run `kubeadm init phase certs apiserver --config kubeadm.yaml` and restart kube-apiserver \
         (move /etc/kubernetes/manifests/kube-apiserver.yaml out and back); \
         without kubeadm, reissue the apiserver serving certificate with these SANs",
        bare.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::probe::test_support::{
        LONG, Pki, TestServer, closed_port, http, server_config, tls_server,
    };

    const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 100));

    fn loopback() -> ServerName<'static> {
        ServerName::from(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    fn tls_for(pki: &Pki) -> Arc<ProbeTls> {
        Arc::new(ProbeTls::from_pem(pki.ca_pem.as_bytes(), None).expect("probe TLS from test CA"))
    }

    async fn serving(pki: &Pki, sans: &[&str]) -> TestServer {
        tls_server(server_config(&pki.server(sans), None), http(200)).await
    }

    async fn checked(pki: &Pki, srv: &TestServer, want: &[SanName]) -> CertReport {
        match inspect(srv.addr, &loopback(), &tls_for(pki), want, LONG).await {
            CertCheck::Checked(report) => report,
            other => panic!("expected Checked, got {other:?}"),
        }
    }

    fn dns(name: &str) -> SanName {
        SanName::Dns(name.to_owned())
    }

    #[tokio::test]
    async fn nothing_missing_when_the_vip_is_in_the_san() {
        let pki = Pki::new();
        let srv = serving(
            &pki,
            &["127.0.0.1", "10.0.0.100", "fd00::100", "kubernetes"],
        )
        .await;
        let v6: IpAddr = "fd00::100".parse().expect("v6");
        let report = checked(
            &pki,
            &srv,
            &[SanName::Ip(VIP), SanName::Ip(v6), dns("kubernetes")],
        )
        .await;
        assert!(report.missing.is_empty(), "{report:?}");
        assert_eq!(report.subject, "kube-apiserver");
        assert_eq!(
            report.sans,
            [
                "IP:127.0.0.1",
                "IP:10.0.0.100",
                "IP:fd00::100",
                "DNS:kubernetes"
            ]
        );
    }

    #[tokio::test]
    async fn missing_lists_the_vip_when_it_is_not_in_the_san() {
        let pki = Pki::new();
        let srv = serving(&pki, &["127.0.0.1", "kubernetes"]).await;
        let report = checked(&pki, &srv, &[SanName::Ip(VIP), dns("kubernetes")]).await;
        assert_eq!(report.missing, [SanName::Ip(VIP)]);
    }

    #[tokio::test]
    async fn wildcard_san_matches_as_a_tls_client_would() {
        let pki = Pki::new();
        let srv = serving(&pki, &["127.0.0.1", "*.example.com"]).await;
        let want = [
            dns("api.example.com"),
            dns("API.Example.com"),
            // RFC 6125 6.4.3: the wildcard covers one label, not the apex or two.
            dns("example.com"),
            dns("a.b.example.com"),
            // Not a DNS name at all: no client could use it.
            dns("bad name"),
        ];
        let report = checked(&pki, &srv, &want).await;
        assert_eq!(
            report.missing,
            [dns("example.com"), dns("a.b.example.com"), dns("bad name")]
        );
        assert!(report.sans.contains(&"DNS:*.example.com".to_owned()));
    }

    #[tokio::test]
    async fn untrusted_when_another_ca_signed_the_server() {
        let (ours, theirs) = (Pki::new(), Pki::new());
        let srv = serving(&theirs, &["127.0.0.1", "10.0.0.100"]).await;
        match inspect(
            srv.addr,
            &loopback(),
            &tls_for(&ours),
            &[SanName::Ip(VIP)],
            LONG,
        )
        .await
        {
            CertCheck::Untrusted(why) => {
                assert!(
                    why.contains("unknown CA") && why.contains("probe.ca"),
                    "{why}"
                )
            }
            other => panic!("expected Untrusted, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn untrusted_when_server_name_is_not_in_the_certificate() {
        let pki = Pki::new();
        let srv = serving(&pki, &["kubernetes"]).await;
        match inspect(srv.addr, &loopback(), &tls_for(&pki), &[], LONG).await {
            CertCheck::Untrusted(why) => assert!(why.contains("probe.server_name"), "{why}"),
            other => panic!("expected Untrusted, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn unreachable_on_a_closed_port() {
        let pki = Pki::new();
        let addr = closed_port().await;
        match inspect(addr, &loopback(), &tls_for(&pki), &[SanName::Ip(VIP)], LONG).await {
            CertCheck::Unreachable(why) => assert_eq!(why, "connection refused"),
            other => panic!("expected Unreachable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn days_to_expiry_follows_not_after() {
        let pki = Pki::new();
        let now = SystemTime::now();
        let not_after = now + Duration::from_secs(30 * 86_400 + 3600);
        let leaf = pki.server_until(&["127.0.0.1"], Some(not_after));
        let srv = tls_server(server_config(&leaf, None), http(200)).await;
        let report = checked(&pki, &srv, &[]).await;
        assert_eq!(report.days_to_expiry(now), 30);
        // notAfter is encoded to the second.
        let secs = report.seconds_to_expiry(now);
        assert!(
            (30 * 86_400 + 3598..=30 * 86_400 + 3600).contains(&secs),
            "{secs}"
        );
    }

    #[test]
    fn expiry_is_negative_once_past() {
        let now = SystemTime::now();
        let report = CertReport {
            subject: String::new(),
            sans: Vec::new(),
            not_after: now - Duration::from_secs(10),
            missing: Vec::new(),
        };
        assert_eq!(report.seconds_to_expiry(now), -10);
        assert_eq!(report.days_to_expiry(now), -1);
    }

    #[test]
    fn fix_hint_names_the_kubeadm_steps() {
        let hint = fix_hint(&[SanName::Ip(VIP), dns("api.example.com")]);
        for needle in [
            "10.0.0.100, api.example.com",
            "ClusterConfiguration.apiServer.certSANs",
            "/etc/kubernetes/pki/apiserver.crt",
            "`kubeadm init phase certs apiserver --config kubeadm.yaml`",
            "restart kube-apiserver",
        ] {
            assert!(hint.contains(needle), "{needle:?} missing in {hint}");
        }
    }

    #[test]
    fn san_names_print_as_openssl_does() {
        assert_eq!(SanName::Ip(VIP).to_string(), "IP:10.0.0.100");
        assert_eq!(dns("kubernetes").to_string(), "DNS:kubernetes");
    }
}
