//! `apiserver-standin`: the kube-apiserver stand-in as a process, for the lab
//! and for tests that need to kill or stop a backend (see `vip_tests::standin`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use vip_tests::standin::{self, StandinOptions};

#[derive(Parser)]
#[command(about = "HTTPS kube-apiserver stand-in: /readyz, /livez, /version, watch streams")]
struct Args {
    /// Address to listen on, e.g. 10.77.0.12:6443 or [::]:6443.
    #[arg(long)]
    listen: SocketAddr,
    /// Server certificate chain (PEM).
    #[arg(long)]
    cert: PathBuf,
    /// Server private key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// Name reported in `X-Standin-Name` and `/whoami`.
    #[arg(long)]
    name: String,
    /// Require client certificates signed by this CA (PEM).
    #[arg(long)]
    client_ca: Option<PathBuf>,
    /// What `/version` reports as gitVersion, e.g. v1.33.0.
    #[arg(long, default_value = vip_tests::standin::GIT_VERSION)]
    git_version: String,
    /// Interval between watch events.
    #[arg(long, default_value_t = 1000)]
    watch_interval_ms: u64,
}

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {what} {}: pass an existing PEM file (vip_tests::certs::TestPki::write creates them)",
            path.display()
        )
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let opts = StandinOptions {
        listen: args.listen,
        cert_pem: read(&args.cert, "--cert")?,
        key_pem: read(&args.key, "--key")?,
        name: args.name,
        watch_interval: Duration::from_millis(args.watch_interval_ms.max(1)),
        client_ca_pem: args
            .client_ca
            .as_deref()
            .map(|p| read(p, "--client-ca"))
            .transpose()?,
        git_version: args.git_version,
    };
    // Fail before binding, naming the file at fault.
    standin::tls_config(&opts).with_context(|| {
        format!(
            "invalid TLS material (--cert {}, --key {}{})",
            args.cert.display(),
            args.key.display(),
            args.client_ca
                .as_deref()
                .map(|p| format!(", --client-ca {}", p.display()))
                .unwrap_or_default()
        )
    })?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {}: is the address configured and free?",
                    opts.listen
                )
            })?;
        let addr = listener.local_addr().context("listener address")?;
        let mut stdout = std::io::stdout();
        writeln!(stdout, "listening on {addr}").context("write to stdout")?;
        stdout.flush().context("flush stdout")?;

        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("install the SIGTERM handler")?;
        tokio::select! {
            r = standin::serve(opts, listener) => r.context("stand-in stopped")?,
            _ = term.recv() => {}
            r = tokio::signal::ctrl_c() => r.context("wait for SIGINT")?,
        }
        Ok(())
    })
}
