//! Waiting for asynchronous jobs and for resources to reach a state.
//!
//! Polls back off exponentially with jitter from `jobs.initial_poll` to
//! `jobs.max_poll`; a last poll happens at the deadline so a job finishing
//! just in time is not reported as timed out. Each poll is an ordinary call
//! (rate-limited, retried on transient errors, counted in the metrics).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::actions::*;
use crate::client::{Client, remaining};
use crate::codes;
use crate::error::Error;
use crate::model::Job;

/// `DescribeJobs` status of a job that finished well.
pub const JOB_SUCCESSFUL: &str = "successful";
/// `DescribeJobs` status of a job that failed.
pub const JOB_FAILED: &str = "failed";

/// Whether a job has finished, well or not.
pub fn is_terminal(job: &Job) -> bool {
    job.status == JOB_SUCCESSFUL || is_failed(job)
}

fn is_failed(job: &Job) -> bool {
    // QingCloud also reports "done with failure" for partly failed batch jobs.
    job.status == JOB_FAILED || job.status.contains("fail")
}

/// Exponential poll delays with ±20 % jitter, so many waiters started
/// together do not poll in lockstep.
struct PollDelay {
    next: Duration,
    max: Duration,
}

impl PollDelay {
    fn new(initial: Duration, max: Duration) -> Self {
        PollDelay { next: initial, max }
    }

    fn next(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(rand::rng().random_range(0.8..1.2))
    }
}

impl Client {
    /// Waits until a job is `successful` (returns it), `failed`
    /// ([`Error::JobFailed`] with the job's `error_code` and `error_message`)
    /// or the timeout passes ([`Error::JobTimeout`]); `None` uses
    /// `jobs.default_timeout`.
    pub async fn wait_job(&self, job_id: &str, timeout: Option<Duration>) -> Result<Job, Error> {
        let mut jobs = self.wait_jobs(&[job_id], timeout).await?;
        jobs.pop().ok_or_else(|| Error::Decode {
            action: "DescribeJobs".into(),
            detail: format!("job {job_id} missing from the result"),
        })
    }

    /// Waits for several jobs with one `DescribeJobs` call per round (up to
    /// 100 ids per call). Returns the jobs in the order given once all are
    /// terminal; if any failed, the first failed one (in that order) is
    /// returned as [`Error::JobFailed`]. Duplicate ids are polled once. On
    /// timeout, [`Error::JobTimeout`] names the jobs still running
    /// (comma-separated); an id the endpoint does not know is
    /// [`Error::Api`] with code 2100 at once.
    pub async fn wait_jobs<S: AsRef<str>>(
        &self,
        job_ids: &[S],
        timeout: Option<Duration>,
    ) -> Result<Vec<Job>, Error> {
        let ids: Vec<&str> = job_ids.iter().map(AsRef::as_ref).collect();
        if let Some(bad) = ids.iter().find(|id| id.trim().is_empty()) {
            return Err(Error::Request(format!(
                "DescribeJobs: invalid job id {bad:?}"
            )));
        }
        let timeout = timeout.unwrap_or(self.config().jobs.default_timeout);
        let start = Instant::now();
        let deadline = start + timeout;
        let mut delay =
            PollDelay::new(self.config().jobs.initial_poll, self.config().jobs.max_poll);
        let mut pending: BTreeSet<&str> = ids.iter().copied().collect();
        let mut done: HashMap<String, Job> = HashMap::new();
        loop {
            let batch: Vec<&str> = pending.iter().copied().collect();
            for chunk in batch.chunks(PAGE_LIMIT as usize) {
                let req = DescribeJobs {
                    jobs: chunk.iter().map(|s| s.to_string()).collect(),
                    limit: Some(PAGE_LIMIT),
                    ..Default::default()
                };
                let page = self.describe_jobs(&req).await?;
                let mut seen = BTreeSet::new();
                for job in page.items {
                    if !chunk.contains(&job.job_id.as_str()) {
                        continue;
                    }
                    seen.insert(job.job_id.clone());
                    if is_terminal(&job) {
                        pending.remove(job.job_id.as_str());
                        done.insert(job.job_id.clone(), job);
                    }
                }
                // A job id the endpoint does not know will never finish.
                if let Some(missing) = chunk.iter().find(|id| !seen.contains(**id)) {
                    return Err(Error::Api {
                        action: "DescribeJobs".into(),
                        code: codes::NOT_FOUND,
                        message: format!("job [{missing}] not found"),
                    });
                }
            }
            if pending.is_empty() {
                let jobs: Vec<Job> = ids.iter().map(|id| done[*id].clone()).collect();
                if let Some(failed) = jobs.iter().find(|j| is_failed(j)) {
                    return Err(Error::JobFailed {
                        job_id: failed.job_id.clone(),
                        action: failed.job_action.clone(),
                        code: failed.error_code,
                        message: failed.error_message.clone(),
                    });
                }
                return Ok(jobs);
            }
            let left = remaining(deadline);
            if left.is_zero() {
                return Err(Error::JobTimeout {
                    job_id: pending.iter().copied().collect::<Vec<_>>().join(","),
                    waited: start.elapsed(),
                });
            }
            tokio::time::sleep(delay.next().min(left)).await;
        }
    }

    /// Polls `describe` until `ready` accepts its result, returning that
    /// result; errors from `describe` end the wait. After `timeout` (`None`:
    /// `jobs.default_timeout`) the error is [`Error::WaitTimeout`] naming `what`.
    pub async fn wait_until<T, F, Fut, P>(
        &self,
        what: &str,
        mut describe: F,
        mut ready: P,
        timeout: Option<Duration>,
    ) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
        P: FnMut(&T) -> bool,
    {
        let timeout = timeout.unwrap_or(self.config().jobs.default_timeout);
        let start = Instant::now();
        let deadline = start + timeout;
        let mut delay =
            PollDelay::new(self.config().jobs.initial_poll, self.config().jobs.max_poll);
        loop {
            let value = describe().await?;
            if ready(&value) {
                return Ok(value);
            }
            let left = remaining(deadline);
            if left.is_zero() {
                return Err(Error::WaitTimeout {
                    what: what.to_string(),
                    waited: start.elapsed(),
                });
            }
            tokio::time::sleep(delay.next().min(left)).await;
        }
    }
}

impl Client {
    /// Waits until a volume has `status` (for example `available` or
    /// `in-use`) and no transition in progress; returns the volume.
    /// A volume that disappears is [`Error::Api`] with code 2100.
    pub async fn wait_volume_status(
        &self,
        volume_id: &str,
        status: &str,
        timeout: Option<Duration>,
    ) -> Result<crate::model::Volume, Error> {
        let req = DescribeVolumes {
            volumes: vec![volume_id.to_string()],
            ..Default::default()
        };
        self.wait_until(
            &format!("volume {volume_id} to be {status}"),
            || async {
                let page = self.describe_volumes(&req).await?;
                page.items
                    .into_iter()
                    .find(|v| v.volume_id == volume_id)
                    .ok_or_else(|| Error::Api {
                        action: "DescribeVolumes".into(),
                        code: codes::NOT_FOUND,
                        message: format!("resource [{volume_id}] not found"),
                    })
            },
            |v| v.status == status && v.transition_status.is_empty(),
            timeout,
        )
        .await
    }
}

/// Defines `*_and_wait` methods: call, then wait for the returned job.
macro_rules! and_wait {
    ($( $method:ident => $and_wait:ident ($req:ty) -> $out:ty; )*) => {
        impl Client {
            $(
                #[doc = concat!(
                    "Calls [`Client::", stringify!($method), "`] and waits for its job ",
                    "(`jobs.default_timeout`); returns the action's output once the job succeeded."
                )]
                pub async fn $and_wait(&self, req: &$req) -> Result<$out, Error> {
                    let out = self.$method(req).await?;
                    if out.job_id.is_empty() {
                        return Err(Error::Decode {
                            action: <$req as Action>::ACTION.to_string(),
                            detail: "response has no job_id".into(),
                        });
                    }
                    self.wait_job(&out.job_id, None).await?;
                    Ok(out)
                }
            )*
        }
    };
}

and_wait! {
    run_instances => run_instances_and_wait(RunInstances) -> RunInstancesOutput;
    create_volumes => create_volumes_and_wait(CreateVolumes) -> CreateVolumesOutput;
    attach_volumes => attach_volumes_and_wait(AttachVolumes) -> JobOutput;
    detach_volumes => detach_volumes_and_wait(DetachVolumes) -> JobOutput;
    delete_volumes => delete_volumes_and_wait(DeleteVolumes) -> JobOutput;
    resize_volumes => resize_volumes_and_wait(ResizeVolumes) -> JobOutput;
    clone_volumes => clone_volumes_and_wait(CloneVolumes) -> CloneVolumesOutput;
    create_snapshots => create_snapshots_and_wait(CreateSnapshots) -> CreateSnapshotsOutput;
    delete_snapshots => delete_snapshots_and_wait(DeleteSnapshots) -> JobOutput;
    create_volume_from_snapshot => create_volume_from_snapshot_and_wait(CreateVolumeFromSnapshot)
        -> CreateVolumeFromSnapshotOutput;
    create_load_balancer => create_load_balancer_and_wait(CreateLoadBalancer) -> CreateLoadBalancerOutput;
    update_load_balancers => update_load_balancers_and_wait(UpdateLoadBalancers) -> JobOutput;
    delete_load_balancers => delete_load_balancers_and_wait(DeleteLoadBalancers) -> JobOutput;
    apply_load_balancer_policy => apply_load_balancer_policy_and_wait(ApplyLoadBalancerPolicy) -> JobOutput;
    release_eips => release_eips_and_wait(ReleaseEips) -> JobOutput;
    associate_eips_to_load_balancer => associate_eips_to_load_balancer_and_wait(AssociateEipsToLoadBalancer)
        -> JobOutput;
    dissociate_eips_from_load_balancer => dissociate_eips_from_load_balancer_and_wait(DissociateEipsFromLoadBalancer)
        -> JobOutput;
    update_routers => update_routers_and_wait(UpdateRouters) -> JobOutput;
    apply_security_group => apply_security_group_and_wait(ApplySecurityGroup) -> JobOutput;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_delay_grows_to_max_with_jitter() {
        let mut d = PollDelay::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = d.next();
        assert!(
            first >= Duration::from_millis(80) && first <= Duration::from_millis(120),
            "{first:?}"
        );
        for _ in 0..10 {
            d.next();
        }
        let late = d.next();
        assert!(
            late >= Duration::from_millis(800) && late <= Duration::from_millis(1200),
            "{late:?}"
        );
    }

    #[test]
    fn terminal_states() {
        let job = |s: &str| Job {
            status: s.into(),
            ..Default::default()
        };
        assert!(is_terminal(&job("successful")));
        assert!(is_terminal(&job("failed")));
        assert!(is_terminal(&job("done with failure")));
        assert!(!is_terminal(&job("working")));
        assert!(!is_terminal(&job("pending")));
    }
}
