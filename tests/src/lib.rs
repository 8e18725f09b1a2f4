//! End-to-end helpers shared by the suites in `tests/tests/` and the walk.

pub mod calls;
pub mod cni_walk;
pub mod control_plane;
pub mod csi_walk;
pub mod iaas_walk;
pub mod ingress_walk;
pub mod lb_walk;
pub mod netns;
pub mod raw;
pub mod wait;
pub mod walk;

use iaas_emulator::{Emulator, EmulatorConfig};

/// A running in-process emulator with its data dir (removed on drop).
#[derive(Debug)]
pub struct TestCloud {
    /// The emulator.
    pub emulator: Emulator,
    /// Its data dir.
    pub dir: tempfile::TempDir,
}

impl TestCloud {
    /// Starts an emulator with the test configuration (ephemeral port, short job delays).
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Starts an emulator after `adjust` has changed the test configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut EmulatorConfig)) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut config = EmulatorConfig::for_tests(dir.path());
        adjust(&mut config);
        let emulator = Emulator::start(config).await?;
        Ok(TestCloud { emulator, dir })
    }

    /// Address and credentials for raw requests.
    pub fn target(&self) -> raw::Target {
        raw::Target {
            endpoint: self.emulator.endpoint(),
            access_key_id: self.emulator.access_key_id().to_string(),
            secret: self.emulator.secret_access_key().to_string(),
            zone: self.emulator.zone().to_string(),
        }
    }

    /// A client for this emulator, with the given adjustments to its config.
    pub fn client_with(
        &self,
        adjust: impl FnOnce(&mut iaas_client::Config),
    ) -> anyhow::Result<iaas_client::Client> {
        let mut config =
            iaas_client::Config::from_credentials_file(self.emulator.credentials_file())?;
        adjust(&mut config);
        Ok(iaas_client::Client::new(config)?)
    }

    /// A client for this emulator with the default config.
    pub fn client(&self) -> anyhow::Result<iaas_client::Client> {
        self.client_with(|_| {})
    }
}

/// Path of the `iaas-emulator` binary built beside the running test, built on
/// demand when the test was run for this package alone.
pub fn emulator_binary() -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> -> target/<profile>/iaas-emulator
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or_else(|| anyhow::anyhow!("unexpected test binary location {}", exe.display()))?;
    let bin = profile_dir.join("iaas-emulator");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args([
            "build",
            "-q",
            "-p",
            "iaas-emulator",
            "--bin",
            "iaas-emulator",
        ]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status()?;
        anyhow::ensure!(
            status.success() && bin.exists(),
            "could not build {}",
            bin.display()
        );
    }
    Ok(bin)
}

/// An emulator running as its own process; killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct EmulatorProcess {
    child: std::process::Child,
    /// Its bound address, e.g. `127.0.0.1:41234`.
    pub addr: String,
    /// Its data dir.
    pub data_dir: std::path::PathBuf,
}

impl EmulatorProcess {
    /// Starts `iaas-emulator serve` on an ephemeral loopback port, control
    /// plane only (a SIGKILLed process could not tear its namespaces and loop
    /// devices down), and waits until it has written its address.
    pub fn spawn(data_dir: &std::path::Path, extra: &[&str]) -> anyhow::Result<Self> {
        let addr_file = data_dir.join("addr");
        let _ = std::fs::remove_file(&addr_file);
        let child = std::process::Command::new(emulator_binary()?)
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "--control-plane-only",
                "--listen",
                "127.0.0.1:0",
                "--addr-file",
            ])
            .arg(&addr_file)
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let mut proc = EmulatorProcess {
            child,
            addr: String::new(),
            data_dir: data_dir.to_path_buf(),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Ok(addr) = std::fs::read_to_string(&addr_file)
                && !addr.trim().is_empty()
            {
                proc.addr = addr.trim().to_string();
                return Ok(proc);
            }
            if let Some(status) = proc.child.try_wait()? {
                anyhow::bail!("emulator exited early with {status}");
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "emulator did not report its address in 30 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// A client for it (credentials from its data dir, endpoint from its address).
    pub fn client(
        &self,
        adjust: impl FnOnce(&mut iaas_client::Config),
    ) -> anyhow::Result<iaas_client::Client> {
        let mut config =
            iaas_client::Config::from_credentials_file(self.data_dir.join("credentials.yaml"))?;
        config.endpoint = format!("http://{}", self.addr);
        adjust(&mut config);
        Ok(iaas_client::Client::new(config)?)
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EmulatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
