//! A throwaway test PKI (rcgen): one self-signed CA per `TestPki`, server and
//! client leaf certificates, written to files for processes that take paths.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, date_time_ymd,
};

static CA_COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A CA and its key. Every `TestPki::new()` generates a fresh key, so two
/// instances never trust each other's leaves ("wrong CA" tests).
pub struct TestPki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestPki {
    pub fn new() -> TestPki {
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = base_params("vipd test CA");
        // A distinct subject per CA: verifiers pick the issuer by name, so two
        // CAs with one DN fail as BadSignature instead of UnknownIssuer.
        let id = CA_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        params.distinguished_name.push(
            DnType::OrganizationalUnitName,
            format!("{}-{id}-{nanos:08x}", std::process::id()),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestPki {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// A server certificate (serverAuth EKU) with exactly these SANs; pass an
    /// empty `ips` (or omit the VIP) to build "SAN lacks the VIP" fixtures.
    pub fn issue_server(&self, dns: &[&str], ips: &[IpAddr]) -> (String, String) {
        self.issue_named(dns, ips, vec![ExtendedKeyUsagePurpose::ServerAuth])
    }

    /// An etcd peer certificate as kubeadm issues `etcd/peer.crt`: the
    /// member's names and addresses, serverAuth AND clientAuth (each member
    /// is both to the others, and `--peer-client-cert-auth` checks the
    /// latter).
    pub fn issue_peer(&self, dns: &[&str], ips: &[IpAddr]) -> (String, String) {
        self.issue_named(
            dns,
            ips,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    /// A leaf with exactly these SANs (the first name as CN) and these EKUs.
    fn issue_named(
        &self,
        dns: &[&str],
        ips: &[IpAddr],
        ekus: Vec<ExtendedKeyUsagePurpose>,
    ) -> (String, String) {
        let cn = dns.first().copied().unwrap_or("vipd test server");
        let mut params = base_params(cn);
        for name in dns {
            let name = (*name)
                .try_into()
                .expect("DNS SAN must be ASCII (IA5String)");
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        params
            .subject_alt_names
            .extend(ips.iter().copied().map(SanType::IpAddress));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = ekus;
        self.sign(params)
    }

    /// A client certificate the way Kubernetes reads it: CN is the user name,
    /// each O is a group (e.g. "system:masters").
    pub fn issue_client(&self, cn: &str, orgs: &[&str]) -> (String, String) {
        let mut params = base_params(cn);
        for org in orgs {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *org);
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// Writes `<dir>/<name>.crt` and `<dir>/<name>.key` (mode 0600) and returns
    /// their paths.
    pub fn write(&self, dir: &Path, name: &str, cert: &str, key: &str) -> (PathBuf, PathBuf) {
        write_pair(dir, name, cert, key)
    }

    fn sign(&self, params: CertificateParams) -> (String, String) {
        let key = KeyPair::generate().expect("generate leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign leaf certificate");
        (cert.pem(), key.serialize_pem())
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes a PEM certificate and key pair; usable for foreign material too.
pub fn write_pair(dir: &Path, name: &str, cert: &str, key: &str) -> (PathBuf, PathBuf) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, cert)
        .unwrap_or_else(|e| panic!("write {}: {e}", cert_path.display()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&key_path)
        .unwrap_or_else(|e| panic!("open {}: {e}", key_path.display()));
    f.write_all(key.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", key_path.display()));
    (cert_path, key_path)
}

fn base_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    // Fixed, sane validity: rcgen's default (1975..4096) is legal but odd
    // enough that some verifiers flag it; keep within UTCTime-friendly years.
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2049, 12, 31);
    params.use_authority_key_identifier_extension = true;
    params
}
