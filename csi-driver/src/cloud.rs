//! Fewer cloud calls under load: concurrent volume lookups and job waits are
//! coalesced into one `DescribeVolumes` / `DescribeJobs` call per round.
//!
//! Batching is natural, not timed: a lookup is sent at once when the line is
//! idle, and lookups arriving while a call is in flight ride together on the
//! next one. A single volume operation therefore pays no extra latency, and
//! fifty concurrent ones share their Describe calls (the IaaS API quota is
//! per account, and the sidecars retry hard when throttled).
//!
//! When a batched call fails, each waiter is told to make its own call, so
//! error codes (not found, throttled, ...) stay exactly those of one request.

use std::collections::HashMap;
use std::time::Duration;

use iaas_client::Client;
use iaas_client::actions::{DescribeJobs, DescribeVolumes, PAGE_LIMIT};
use iaas_client::model::{Job, Volume};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};

/// What a batched lookup hands back: the record (or its absence), or "ask
/// yourself" when the shared call failed.
type Reply<T> = std::result::Result<Option<T>, ()>;

/// Coalesces `DescribeVolumes` by id and `DescribeJobs` polling.
#[derive(Debug, Clone)]
pub struct Cloud {
    client: Client,
    volumes: mpsc::UnboundedSender<(String, oneshot::Sender<Reply<Volume>>)>,
    jobs: mpsc::UnboundedSender<(String, oneshot::Sender<Reply<Job>>)>,
}

impl Cloud {
    /// Starts the batching tasks on the current runtime. Outside a runtime
    /// (unit tests) nothing is batched: every call goes alone.
    pub fn new(client: Client) -> Self {
        let (vtx, vrx) = mpsc::unbounded_channel();
        let (jtx, jrx) = mpsc::unbounded_channel();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(volume_batcher(client.clone(), vrx));
            rt.spawn(job_poller(client.clone(), jrx));
        }
        Cloud {
            client,
            volumes: vtx,
            jobs: jtx,
        }
    }

    /// The underlying client, for calls that are not batched.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The volume with this id, whatever its status; `None` when unknown.
    pub async fn volume(&self, id: &str) -> Result<Option<Volume>> {
        let (tx, rx) = oneshot::channel();
        if self.volumes.send((id.to_string(), tx)).is_ok()
            && let Ok(Ok(found)) = rx.await
        {
            return Ok(found);
        }
        self.volume_alone(id).await
    }

    async fn volume_alone(&self, id: &str) -> Result<Option<Volume>> {
        let page = self
            .client
            .describe_volumes(&DescribeVolumes {
                volumes: vec![id.to_string()],
                ..Default::default()
            })
            .await;
        match page {
            Ok(p) => Ok(p.items.into_iter().find(|v| v.volume_id == id)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits until a job succeeds; a failed job is its error, a job still
    /// running after `timeout` is DEADLINE_EXCEEDED.
    pub async fn wait_job(&self, job_id: &str, timeout: Duration) -> Result<Job> {
        if job_id.is_empty() {
            return Err(Error::Internal(
                "the cloud answered without a job id".into(),
            ));
        }
        let (tx, rx) = oneshot::channel();
        let shared = if self.jobs.send((job_id.to_string(), tx)).is_ok() {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(Ok(Some(job)))) => Some(job),
                Ok(_) => None,
                Err(_) => {
                    return Err(Error::DeadlineExceeded(format!(
                        "job {job_id} not finished after {timeout:?}"
                    )));
                }
            }
        } else {
            None
        };
        let job = match shared {
            Some(job) => job,
            // The shared poller could not answer for this job: wait alone.
            None => self.client.wait_job(job_id, Some(timeout)).await?,
        };
        if iaas_client::jobs::JOB_SUCCESSFUL == job.status {
            Ok(job)
        } else {
            Err(Error::Cloud(iaas_client::Error::JobFailed {
                job_id: job.job_id,
                action: job.job_action,
                code: job.error_code,
                message: job.error_message,
            }))
        }
    }
}

/// Serves volume lookups: one `DescribeVolumes` for everything queued.
async fn volume_batcher(
    client: Client,
    mut rx: mpsc::UnboundedReceiver<(String, oneshot::Sender<Reply<Volume>>)>,
) {
    while let Some(first) = rx.recv().await {
        let mut waiting = vec![first];
        while waiting.len() < PAGE_LIMIT as usize {
            match rx.try_recv() {
                Ok(more) => waiting.push(more),
                Err(_) => break,
            }
        }
        let mut ids: Vec<String> = waiting.iter().map(|(id, _)| id.clone()).collect();
        ids.sort();
        ids.dedup();
        let result = client
            .describe_volumes(&DescribeVolumes {
                volumes: ids,
                limit: Some(PAGE_LIMIT),
                ..Default::default()
            })
            .await;
        match result {
            Ok(page) => {
                let by_id: HashMap<String, Volume> = page
                    .items
                    .into_iter()
                    .map(|v| (v.volume_id.clone(), v))
                    .collect();
                for (id, tx) in waiting {
                    let _ = tx.send(Ok(by_id.get(&id).cloned()));
                }
            }
            // One unknown id can fail the whole call: everyone asks alone.
            Err(_) => {
                for (_, tx) in waiting {
                    let _ = tx.send(Err(()));
                }
            }
        }
    }
}

/// Polls every pending job with one `DescribeJobs` per round.
async fn job_poller(
    client: Client,
    mut rx: mpsc::UnboundedReceiver<(String, oneshot::Sender<Reply<Job>>)>,
) {
    let mut pending: HashMap<String, Vec<oneshot::Sender<Reply<Job>>>> = HashMap::new();
    let mut delay = Duration::from_millis(50);
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some((id, tx)) => pending.entry(id).or_default().push(tx),
                None => return,
            }
            delay = Duration::from_millis(50);
        }
        // A short first wait: jobs rarely finish instantly, and the pause
        // lets concurrent waiters join this round.
        tokio::time::sleep(delay).await;
        let mut joined = false;
        while let Ok((id, tx)) = rx.try_recv() {
            pending.entry(id).or_default().push(tx);
            joined = true;
        }
        // Waiters that gave up (timed out) are dropped.
        pending.retain(|_, txs| {
            txs.retain(|tx| !tx.is_closed());
            !txs.is_empty()
        });
        let ids: Vec<String> = pending.keys().take(PAGE_LIMIT as usize).cloned().collect();
        if ids.is_empty() {
            continue;
        }
        match client
            .describe_jobs(&DescribeJobs {
                jobs: ids.clone(),
                limit: Some(PAGE_LIMIT),
                ..Default::default()
            })
            .await
        {
            Ok(page) => {
                let found: HashMap<&str, &Job> =
                    page.items.iter().map(|j| (j.job_id.as_str(), j)).collect();
                for id in &ids {
                    match found.get(id.as_str()) {
                        Some(job) if iaas_client::jobs::is_terminal(job) => {
                            for tx in pending.remove(id).unwrap_or_default() {
                                let _ = tx.send(Ok(Some((*job).clone())));
                            }
                        }
                        Some(_) => {}
                        // Unknown to the cloud: let the waiter find out alone.
                        None => {
                            for tx in pending.remove(id).unwrap_or_default() {
                                let _ = tx.send(Err(()));
                            }
                        }
                    }
                }
                // Back off while the same jobs run on; newcomers pull the
                // pace back so their first poll is not seconds away.
                delay = if joined {
                    delay.min(Duration::from_millis(200))
                } else {
                    (delay * 2).min(Duration::from_secs(2))
                };
            }
            Err(e) => {
                tracing::debug!(error = %e, "batched DescribeJobs failed; waiters poll alone");
                for (_, txs) in pending.drain() {
                    for tx in txs {
                        let _ = tx.send(Err(()));
                    }
                }
            }
        }
    }
}
