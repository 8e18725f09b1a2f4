//! The running emulator: shared state, start-up, the handle tests and the
//! binary hold, and graceful shutdown.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::commit::{CommitStats, Committer};
use crate::config::EmulatorConfig;
use crate::dataplane::DataPlane;
use crate::error::{ApiResult, EmuError};
use crate::faults::{ActionStats, FaultConfig, FaultState};
use crate::jobs;
use crate::state::{Meta, State};
use crate::store::Store;

/// What request handlers and job workers share.
#[derive(Debug)]
pub struct Shared {
    /// Configuration (immutable after start).
    pub config: EmulatorConfig,
    /// The cache; the single writer lock. Never held while waiting for the
    /// committer (see [`Shared::commit`]).
    pub state: Arc<tokio::sync::Mutex<State>>,
    /// The durable store.
    pub store: Store,
    /// The group committer every change goes through.
    pub committer: Committer,
    /// Live faults.
    pub faults: Mutex<FaultState>,
    /// Per-action counters.
    stats: Mutex<BTreeMap<String, ActionStats>>,
    /// Drivers.
    pub dp: DataPlane,
    /// Zone and credentials.
    pub meta: Meta,
    /// Running job workers.
    jobs: Mutex<JoinSet<()>>,
}

impl Shared {
    /// Ends a request's (or job step's) turn on the state: stages its changes
    /// with the group committer, RELEASES the lock, and waits until they are
    /// durable (or, when it changed nothing, until everything it could have
    /// read is). Fails with 5000, the change not made, when the commit fails.
    pub async fn commit(&self, mut st: tokio::sync::MutexGuard<'_, State>) -> ApiResult<()> {
        let ticket = self.committer.stage(&mut st);
        drop(st);
        self.committer.wait(ticket?).await
    }

    /// Adopts an existing host as an instance (see [`State::adopt`]).
    pub async fn adopt(
        &self,
        host: &crate::config::AdoptedHost,
    ) -> ApiResult<iaas_client::model::Instance> {
        let mut st = self.state.lock().await;
        match st.adopt(host, &self.meta.zone) {
            Ok(inst) => {
                self.commit(st).await?;
                Ok(inst)
            }
            Err(e) => {
                self.discard(&mut st);
                self.commit(st).await?;
                Err(e)
            }
        }
    }

    /// Drops the uncommitted changes of a failed handler (in memory: the
    /// store may lag the cache while other requests are being committed).
    pub fn discard(&self, st: &mut State) {
        st.rollback();
    }

    /// Store transaction counters of the group committer.
    pub fn commit_stats(&self) -> CommitStats {
        self.committer.stats()
    }

    /// Starts a job worker.
    pub fn spawn_job(self: &Arc<Self>, job_id: String) {
        let shared = Arc::clone(self);
        if let Ok(mut set) = self.jobs.lock() {
            while set.try_join_next().is_some() {}
            set.spawn(jobs::run_job(shared, job_id));
        }
    }

    /// Delay between job steps (fault config may override).
    pub fn job_delay(&self) -> Duration {
        let default = self.config.job_delay();
        self.faults
            .lock()
            .map(|f| f.job_delay(default))
            .unwrap_or(default)
    }

    /// Counts one answered call.
    pub fn record(&self, action: &str, code: i32) {
        if let Ok(mut s) = self.stats.lock() {
            let e = s.entry(action.to_string()).or_default();
            e.calls += 1;
            if code != 0 {
                e.errors += 1;
            }
            *e.by_ret_code.entry(code).or_default() += 1;
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> BTreeMap<String, ActionStats> {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Zeroes the counters.
    pub fn reset_stats(&self) {
        if let Ok(mut s) = self.stats.lock() {
            s.clear();
        }
    }

    /// Replaces the fault config (validated by the caller).
    pub fn set_faults(&self, cfg: FaultConfig) {
        if let Ok(mut f) = self.faults.lock() {
            f.set(cfg);
        }
    }
}

/// A running emulator.
#[derive(Debug)]
pub struct Emulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    endpoint: String,
    credentials_file: PathBuf,
    tls_cert: Option<PathBuf>,
    first_start: bool,
    shutdown: watch::Sender<bool>,
    server: Option<JoinHandle<()>>,
}

impl Emulator {
    /// Opens the store (seeding it at first start), re-establishes the data
    /// plane, binds, serves, and resumes unfinished jobs.
    pub async fn start(config: EmulatorConfig) -> Result<Emulator, EmuError> {
        config.validate()?;
        let data_dir = config.data_dir.clone();
        let store = Store::open(&data_dir)?;
        let mut state = State::default();
        state.load(&store)?;
        let first_start = state.seed(&config)?;
        for host in &config.adopted_instances {
            let zone = state.meta().zone;
            state.adopt(host, &zone).map_err(|e| {
                EmuError::Config(format!("adopted_instances [{}]: {}", host.name, e.message))
            })?;
        }
        let mut meta = state.meta();
        if meta.zone != config.zone {
            return Err(EmuError::Config(format!(
                "{} holds zone {:?}, configured zone is {:?} (reset the data dir to change it)",
                data_dir.display(),
                meta.zone,
                config.zone
            )));
        }
        if let Some(c) = &config.credentials
            && (c.access_key_id != meta.access_key_id
                || c.secret_access_key != meta.secret_access_key)
        {
            meta.access_key_id = c.access_key_id.clone();
            meta.secret_access_key = c.secret_access_key.clone();
            let seq = state.next_seq();
            state.meta.insert("meta", seq, meta.clone());
        }
        let dp = config.data_plane.clone();
        restore_data_plane(&mut state, &dp).await;
        let writes = state.drain_writes()?;
        store.commit(writes).await?;
        let state = Arc::new(tokio::sync::Mutex::new(state));
        let committer = Committer::start(store.clone(), Arc::clone(&state))?;

        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| EmuError::io(format!("binding {}", config.listen), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| EmuError::io("local address", e))?;
        let (tls, tls_cert) = if config.tls {
            let (acceptor, path) = crate::tls::acceptor(&data_dir, addr)?;
            (Some(acceptor), Some(path))
        } else {
            (None, None)
        };
        let host = if addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        } else {
            addr
        };
        let endpoint = format!("{}://{host}", if config.tls { "https" } else { "http" });
        let credentials_file = data_dir.join("credentials.yaml");
        write_credentials(&credentials_file, &meta, &endpoint)?;

        let mut faults = FaultState::default();
        faults.set(config.faults.clone());
        let unfinished = jobs::unfinished_jobs(&*state.lock().await);
        let shared = Arc::new(Shared {
            config,
            state,
            store,
            committer,
            faults: Mutex::new(faults),
            stats: Mutex::new(BTreeMap::new()),
            dp,
            meta,
            jobs: Mutex::new(JoinSet::new()),
        });
        let (shutdown, rx) = watch::channel(false);
        let app = crate::server::router(Arc::clone(&shared));
        let server = tokio::spawn(crate::server::serve(listener, app, tls, rx));
        if !unfinished.is_empty() {
            tracing::info!(count = unfinished.len(), "resuming unfinished jobs");
        }
        for j in unfinished {
            shared.spawn_job(j);
        }
        tracing::info!(%endpoint, zone = %shared.meta.zone, "iaas emulator serving");
        Ok(Emulator {
            shared,
            addr,
            endpoint,
            credentials_file,
            tls_cert,
            first_start,
            shutdown,
            server: Some(server),
        })
    }

    /// `http://127.0.0.1:PORT` (or https).
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The access key id clients sign with.
    pub fn access_key_id(&self) -> &str {
        &self.shared.meta.access_key_id
    }

    /// Its secret.
    pub fn secret_access_key(&self) -> &str {
        &self.shared.meta.secret_access_key
    }

    /// The zone.
    pub fn zone(&self) -> &str {
        &self.shared.meta.zone
    }

    /// `<data_dir>/credentials.yaml`.
    pub fn credentials_file(&self) -> PathBuf {
        self.credentials_file.clone()
    }

    /// `<data_dir>/tls/cert.pem` when serving TLS.
    pub fn tls_cert_file(&self) -> Option<PathBuf> {
        self.tls_cert.clone()
    }

    /// Whether this start seeded a fresh store (credentials were generated).
    pub fn first_start(&self) -> bool {
        self.first_start
    }

    /// Per-action call counters.
    pub fn stats(&self) -> BTreeMap<String, ActionStats> {
        self.shared.stats()
    }

    /// Zeroes the counters.
    pub fn reset_stats(&self) {
        self.shared.reset_stats()
    }

    /// What handlers share (crate tests reach the committer through it).
    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Store transactions (fsyncs) and the request batches they carried.
    pub fn commit_stats(&self) -> CommitStats {
        self.shared.commit_stats()
    }

    /// Replaces the fault config; an invalid one (a rate outside 0..1,
    /// min > max, ...) is refused with the field named.
    pub fn set_faults(&self, faults: FaultConfig) -> Result<(), EmuError> {
        faults.validate().map_err(EmuError::Config)?;
        self.shared.set_faults(faults);
        Ok(())
    }

    /// Presents an existing host as a running instance (idempotent by name;
    /// durable before it returns). Errors name the field.
    pub async fn adopt(
        &self,
        host: &crate::config::AdoptedHost,
    ) -> Result<iaas_client::model::Instance, EmuError> {
        self.shared
            .adopt(host)
            .await
            .map_err(|e| EmuError::Config(e.message))
    }

    /// Removes every fault (stuck jobs resume).
    pub fn clear_faults(&self) {
        self.shared.set_faults(FaultConfig::default());
    }

    /// Stops accepting, lets in-flight requests finish, stops job workers
    /// (unfinished jobs resume at the next start) and closes the store.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        let workers = self
            .shared
            .jobs
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .ok();
        if let Some(mut set) = workers {
            set.abort_all();
            while set.join_next().await.is_some() {}
        }
        // Wait for stragglers (requests waiting on a commit) to finish, then
        // stop the committer so that the store is released and the same data
        // dir can be opened again right away.
        for _ in 0..500 {
            if Arc::strong_count(&self.shared) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(thread) = self.shared.committer.close() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        tracing::info!("iaas emulator stopped");
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        // A handle dropped without shutdown() still stops serving.
        let _ = self.shutdown.send(true);
        if let Ok(mut s) = self.shared.jobs.lock() {
            s.abort_all();
        }
    }
}

/// Replays attachments and re-applies instances, routes and LBs to the drivers.
async fn restore_data_plane(state: &mut State, dp: &DataPlane) {
    let (attachments, calls) = jobs::restore_plan(state);
    let dp2 = dp.clone();
    let result = tokio::task::spawn_blocking(move || {
        let devices = dp2.volumes.restore(&attachments);
        for call in calls {
            if let Err(e) = call(&dp2) {
                tracing::warn!(error = %e, "re-applying data plane state");
            }
        }
        devices
    })
    .await;
    match result {
        Ok(Ok(devices)) => {
            for (vol, dev) in devices {
                if let Some(v) = state.volumes.get_mut(&vol)
                    && let Some(a) = v.instance.as_mut()
                    && a.device != dev
                {
                    a.device = dev;
                }
            }
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "restoring volume attachments"),
        Err(e) => tracing::warn!(error = %e, "restore task failed"),
    }
}

/// Writes the SDK-style credentials file atomically with mode 0600.
fn write_credentials(path: &Path, meta: &Meta, endpoint: &str) -> Result<(), EmuError> {
    let text = format!(
        "qy_access_key_id: {}\nqy_secret_access_key: {}\nzone: {}\nendpoint: {}\n",
        meta.access_key_id, meta.secret_access_key, meta.zone, endpoint
    );
    write_private(path, text.as_bytes())
}

/// Writes a file atomically (temp + rename) readable by the owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), EmuError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let ctx = |what: &str| format!("{what} {}", tmp.display());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| EmuError::io(ctx("creating"), e))?;
    f.write_all(bytes)
        .map_err(|e| EmuError::io(ctx("writing"), e))?;
    f.sync_all().map_err(|e| EmuError::io(ctx("syncing"), e))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| EmuError::io(format!("renaming to {}", path.display()), e))
}
