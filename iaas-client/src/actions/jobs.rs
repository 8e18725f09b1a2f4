//! Jobs: DescribeJobs (waiting helpers live in [`crate::jobs`]).

use serde::Serialize;

use crate::model::Job;

/// `DescribeJobs`: lists asynchronous jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DescribeJobs {
    /// Only these ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<String>,
    /// Only these statuses (pending, working, successful, failed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub status: Vec<String>,
    /// Paging offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Page size (max 100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

describe_actions! {
    DescribeJobs => Job, "job_set", describe_jobs, describe_jobs_all;
}
