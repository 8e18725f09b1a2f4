//! A real Kubernetes control plane (etcd + kube-apiserver) for tests.
//!
//! Neither binary is built or shipped by this repository: the caller points
//! `KUBE_APISERVER` and `ETCD` at them (docs/TESTING.md says how to get them).
//! When either is absent, [`ControlPlane::start`] prints one `SKIP:` line and
//! returns `Ok(None)`, so suites can run everywhere and say loudly what they
//! did not cover.
//!
//! Everything runs on loopback: a fresh PKI in a temp dir, etcd and the
//! apiserver on free 127.0.0.1 ports. Both processes are killed by PID when
//! the handle drops (also while unwinding from a panic), and are started with
//! a parent-death signal so that even a test process killed outright does not
//! leave them behind.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Environment variable naming the kube-apiserver binary.
pub const KUBE_APISERVER_ENV: &str = "KUBE_APISERVER";
/// Environment variable naming the etcd binary.
pub const ETCD_ENV: &str = "ETCD";
/// When set (to anything), the temp dir with the PKI and both logs is kept
/// after the control plane stops, and its path printed, for debugging.
pub const KEEP_DIR_ENV: &str = "CONTROL_PLANE_KEEP_DIR";
/// Service CIDR handed to the apiserver (`--service-cluster-ip-range`).
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// How long etcd may take to accept connections.
const ETCD_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the apiserver may take to report ready. It takes a few seconds
/// on an idle machine; the margin is for cores shared with parallel builds
/// and tests, since a spurious start-up failure costs more than a slow one.
const APISERVER_READY_TIMEOUT: Duration = Duration::from_secs(180);
/// Bytes of a process's log quoted in start-up errors.
const LOG_TAIL_BYTES: u64 = 4000;

/// A running etcd + kube-apiserver pair with an admin identity.
pub struct ControlPlane {
    // Field order is drop order: the apiserver dies first (so it does not
    // log etcd errors on the way out), then etcd, and only then is the temp
    // dir with their data and PKI removed.
    apiserver: Proc,
    etcd: Proc,
    server: String,
    kubeconfig_path: PathBuf,
    kubeconfig_yaml: String,
    client: kube::Client,
    pki: Pki,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // kube::Client is not Debug; the rest identifies the instance.
        f.debug_struct("ControlPlane")
            .field("server", &self.server)
            .field("apiserver", &self.apiserver)
            .field("etcd", &self.etcd)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver from the binaries named by
    /// `KUBE_APISERVER` and `ETCD`, or returns `Ok(None)` after one `SKIP:`
    /// line on stderr when either is unset or missing.
    ///
    /// Must be called from a thread that outlives the control plane (a test's
    /// own thread or a runtime worker, not `spawn_blocking`): the children's
    /// parent-death signal fires when the spawning thread exits.
    pub async fn start() -> anyhow::Result<Option<ControlPlane>> {
        let (apiserver_bin, etcd_bin) = match binaries() {
            Ok(bins) => bins,
            Err(why) => {
                eprintln!(
                    "SKIP: real control plane tests need {KUBE_APISERVER_ENV} and {ETCD_ENV} (see docs/TESTING.md): {why}"
                );
                return Ok(None);
            }
        };
        Self::start_with(&apiserver_bin, &etcd_bin).await.map(Some)
    }

    /// Starts a control plane from explicit binary paths (no skipping).
    pub async fn start_with(apiserver_bin: &Path, etcd_bin: &Path) -> anyhow::Result<ControlPlane> {
        // kube's rustls client uses the process-wide provider; the suite's is ring.
        let _ = rustls::crypto::ring::default_provider().install_default();

        let mut dir = tempfile::Builder::new()
            .prefix("control-plane-")
            .tempdir()?;
        if std::env::var_os(KEEP_DIR_ENV).is_some() {
            dir.disable_cleanup(true);
            eprintln!(
                "control plane: keeping {} ({KEEP_DIR_ENV} is set)",
                dir.path().display()
            );
        }
        let pki = Pki::generate(dir.path())?;

        let [etcd_client_port, etcd_peer_port, secure_port] = free_ports()?;
        let mut etcd = start_etcd(etcd_bin, dir.path(), etcd_client_port, etcd_peer_port)?;
        wait_for_port(&mut etcd, etcd_client_port, ETCD_START_TIMEOUT).await?;

        let apiserver = start_apiserver(
            apiserver_bin,
            dir.path(),
            &pki,
            etcd_client_port,
            secure_port,
        )?;
        let server = format!("https://127.0.0.1:{secure_port}");
        let kubeconfig_yaml = pki.kubeconfig(&server, "admin", Some("system:masters"))?;
        let kubeconfig_path = dir.path().join("admin.kubeconfig");
        std::fs::write(&kubeconfig_path, &kubeconfig_yaml)
            .with_context(|| format!("writing {}", kubeconfig_path.display()))?;
        let client = client_from_yaml(&kubeconfig_yaml).await?;

        // Every early return above drops the `Proc`s, which kills them.
        let mut plane = ControlPlane {
            apiserver,
            etcd,
            server,
            kubeconfig_path,
            kubeconfig_yaml,
            client,
            pki,
            dir,
        };
        plane.wait_ready().await?;
        Ok(plane)
    }

    /// Polls `/readyz` until it answers `ok`, the apiserver exits, or the
    /// deadline passes; errors quote the apiserver's log tail.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + APISERVER_READY_TIMEOUT;
        loop {
            if let Some(status) = self.apiserver.child.try_wait()? {
                bail!(
                    "kube-apiserver exited during start-up with {status}; log tail:\n{}",
                    self.apiserver.log_tail()
                );
            }
            if let Some(status) = self.etcd.child.try_wait()? {
                bail!(
                    "etcd exited during apiserver start-up with {status}; log tail:\n{}",
                    self.etcd.log_tail()
                );
            }
            let request = http::Request::get("/readyz").body(Vec::new())?;
            let last = match tokio::time::timeout(
                Duration::from_secs(5),
                self.client.request_text(request),
            )
            .await
            {
                Ok(Ok(body)) if body.trim() == "ok" => return Ok(()),
                Ok(Ok(body)) => body,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "/readyz did not answer within 5 s".into(),
            };
            if Instant::now() >= deadline {
                bail!(
                    "kube-apiserver not ready after {:?} (last /readyz: {last}); log tail:\n{}",
                    APISERVER_READY_TIMEOUT,
                    self.apiserver.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A client authenticated as `admin` (group `system:masters`).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Path of an admin kubeconfig with embedded credentials, for binaries
    /// under test. Valid while `self` lives.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// A kubeconfig (YAML) for another identity: a fresh client certificate
    /// with CN `user` and O `group`, e.g. `("system:kube-controller-manager",
    /// None)` or `("system:node:n1", Some("system:nodes"))`, so binaries
    /// under test can run with only the rights RBAC grants them.
    pub fn kubeconfig_for(&self, user: &str, group: Option<&str>) -> anyhow::Result<String> {
        self.pki.kubeconfig(&self.server, user, group)
    }

    /// A client for another identity (see [`ControlPlane::kubeconfig_for`]).
    pub async fn client_for(
        &self,
        user: &str,
        group: Option<&str>,
    ) -> anyhow::Result<kube::Client> {
        client_from_yaml(&self.kubeconfig_for(user, group)?).await
    }

    /// The admin kubeconfig's YAML text.
    pub fn kubeconfig_yaml(&self) -> &str {
        &self.kubeconfig_yaml
    }

    /// The apiserver's URL, e.g. `https://127.0.0.1:41234`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The temp dir holding the PKI, etcd's data and both processes' logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last few KB of the apiserver's log, for failure messages.
    pub fn apiserver_log_tail(&self) -> String {
        self.apiserver.log_tail()
    }
}

/// A child process whose stdout and stderr go to a log file.
#[derive(Debug)]
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` in its own process group (so terminal signals aimed at
    /// the test runner's group do not hit it half-way) with its output in
    /// `log` and SIGKILL as its parent-death signal.
    fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> anyhow::Result<Proc> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().with_context(|| {
            format!("starting {name} ({})", cmd.get_program().to_string_lossy())
        })?;
        Ok(Proc { name, child, log })
    }

    /// The end of the log, lossily decoded.
    fn log_tail(&self) -> String {
        let read = || -> std::io::Result<String> {
            let mut f = File::open(&self.log)?;
            let len = f.metadata()?.len();
            f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf).into_owned())
        };
        read().unwrap_or_else(|e| {
            format!("({} log {} unreadable: {e})", self.name, self.log.display())
        })
    }
}

impl Drop for Proc {
    /// SIGKILL by PID and reap, so nothing outlives its owner (also on an
    /// early return during start-up or while unwinding from a panic).
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Makes the kernel SIGKILL the child when the thread that spawned it exits,
/// so a test process killed without unwinding leaks no etcd or apiserver.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the hook runs in the forked child before exec and only calls
    // prctl(2), which is async-signal-safe and touches no shared state.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The binaries named by the environment, or why they cannot be used.
fn binaries() -> Result<(PathBuf, PathBuf), String> {
    let lookup = |var: &str| -> Result<PathBuf, String> {
        let value = std::env::var_os(var).filter(|v| !v.is_empty());
        let path = PathBuf::from(value.ok_or_else(|| format!("{var} is not set"))?);
        if !path.is_file() {
            return Err(format!("{var}={} is not a file", path.display()));
        }
        Ok(path)
    };
    Ok((lookup(KUBE_APISERVER_ENV)?, lookup(ETCD_ENV)?))
}

/// A client from a kubeconfig's YAML text.
async fn client_from_yaml(yaml: &str) -> anyhow::Result<kube::Client> {
    let kubeconfig =
        kube::config::Kubeconfig::from_yaml(yaml).context("parsing generated kubeconfig")?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    kube::Client::try_from(config).context("building a client from the generated kubeconfig")
}

/// `N` distinct loopback ports that were free a moment ago (all listeners are
/// held until every port is chosen, so they differ). Another process could
/// take one before ours binds; the start-up error then quotes the bind
/// failure from the process's log.
fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// Waits until something accepts on 127.0.0.1:`port`, failing early with the
/// log tail if the process exits.
async fn wait_for_port(proc: &mut Proc, port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        if let Some(status) = proc.child.try_wait()? {
            bail!(
                "{} exited during start-up with {status}; log tail:\n{}",
                proc.name,
                proc.log_tail()
            );
        }
        let connect = tokio::net::TcpStream::connect(addr);
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), connect).await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{} did not accept on {addr} within {timeout:?}; log tail:\n{}",
                proc.name,
                proc.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn start_etcd(bin: &Path, dir: &Path, client_port: u16, peer_port: u16) -> anyhow::Result<Proc> {
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let mut cmd = Command::new(bin);
    cmd.arg("--name=test")
        .arg(format!("--data-dir={}", dir.join("etcd").display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=test={peer_url}"))
        .arg("--initial-cluster-state=new")
        .arg("--logger=zap")
        .arg("--log-level=warn");
    Proc::spawn("etcd", cmd, dir.join("etcd.log"))
}

fn start_apiserver(
    bin: &Path,
    dir: &Path,
    pki: &Pki,
    etcd_port: u16,
    secure_port: u16,
) -> anyhow::Result<Proc> {
    let path = |p: &Path| p.display().to_string();
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
        .arg(format!("--secure-port={secure_port}"))
        .arg("--bind-address=127.0.0.1")
        .arg("--advertise-address=127.0.0.1")
        // Endpoints may not hold loopback addresses, so the reconciler of the
        // `kubernetes` Service's endpoints would fail and log every 10 s.
        .arg("--endpoint-reconciler-type=none")
        // Written only if the serving cert were missing; keep it out of /var/run.
        .arg(format!("--cert-dir={}", path(&dir.join("apiserver-certs"))))
        .arg(format!("--tls-cert-file={}", path(&pki.serving_cert)))
        .arg(format!("--tls-private-key-file={}", path(&pki.serving_key)))
        .arg(format!("--client-ca-file={}", path(&pki.ca_cert)))
        .arg("--service-account-issuer=https://kubernetes.default.svc")
        .arg(format!(
            "--service-account-key-file={}",
            path(&pki.sa_public)
        ))
        .arg(format!(
            "--service-account-signing-key-file={}",
            path(&pki.sa_key)
        ))
        .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
        .arg("--authorization-mode=Node,RBAC")
        // No controller-manager runs, so no namespace ever gets its default
        // ServiceAccount; the admission plugin would then reject every Pod.
        .arg("--disable-admission-plugins=ServiceAccount")
        .arg("--allow-privileged=true")
        .arg("--profiling=false")
        .arg("-v=1");
    Proc::spawn("kube-apiserver", cmd, dir.join("kube-apiserver.log"))
}

/// The generated PKI: file paths the apiserver reads, and the CA that signs
/// client certificates for kubeconfigs.
#[derive(Debug)]
struct Pki {
    ca_cert: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    sa_key: PathBuf,
    sa_public: PathBuf,
    ca_pem: String,
    ca: Issuer<'static, KeyPair>,
}

impl Pki {
    /// A CA, the apiserver's serving cert (127.0.0.1, localhost and the
    /// in-cluster names) and a service-account key pair, all ECDSA P-256,
    /// written to `dir`.
    fn generate(dir: &Path) -> anyhow::Result<Pki> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = name("test-control-plane-ca", None);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let ca = Issuer::new(ca_params, ca_key);

        let serving_key = KeyPair::generate()?;
        let mut serving = CertificateParams::new(vec![
            "localhost".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
        ])?;
        serving
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        // The first address of the service CIDR: the in-cluster `kubernetes` Service.
        serving
            .subject_alt_names
            .push(SanType::IpAddress([10, 96, 0, 1].into()));
        serving.distinguished_name = name("kube-apiserver", None);
        serving.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert = serving.signed_by(&serving_key, &ca)?;

        let sa_key = KeyPair::generate()?;

        let write = |file: &str, text: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(file);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        Ok(Pki {
            ca_cert: write("ca.crt", &ca_cert.pem())?,
            serving_cert: write("apiserver.crt", &serving_cert.pem())?,
            serving_key: write("apiserver.key", &serving_key.serialize_pem())?,
            sa_key: write("sa.key", &sa_key.serialize_pem())?,
            sa_public: write("sa.pub", &sa_key.public_key_pem())?,
            ca_pem: ca_cert.pem(),
            ca,
        })
    }

    /// A kubeconfig for `server` authenticating as `user` (certificate CN)
    /// in `group` (O), with every credential embedded so it stays usable if
    /// copied elsewhere (e.g. into a namespace's filesystem view).
    fn kubeconfig(&self, server: &str, user: &str, group: Option<&str>) -> anyhow::Result<String> {
        anyhow::ensure!(!user.is_empty(), "kubeconfig user: must not be empty");
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(user, group);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.ca)?;

        let b64 = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem);
        // A JSON string is a valid YAML scalar, so any user name is quoted safely.
        let user = serde_json::to_string(user)?;
        Ok(format!(
            "apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: test
  context:
    cluster: test
    user: {user}
current-context: test
",
            ca = b64(&self.ca_pem),
            cert = b64(&cert.pem()),
            key = b64(&key.serialize_pem()),
        ))
    }
}

/// A distinguished name with a common name and optionally an organisation
/// (Kubernetes reads O as the user's groups).
fn name(common: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common);
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn
}
