//! Instances and vxnets: DescribeInstances, RunInstances, StopInstances,
//! StartInstances, TerminateInstances, DescribeVxnets.

use serde::Serialize;

use crate::model::{Instance, Vxnet};

use super::JobOutput;

/// `DescribeInstances`: lists instances.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DescribeInstances {
    /// Only these ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<String>,
    /// Only these statuses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub status: Vec<String>,
    /// Only instances carrying any of these tag ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Substring of id or name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_word: Option<String>,
    /// Include nested records.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub verbose: bool,
    /// Paging offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Page size (max 100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

/// `RunInstances`: creates instances (a job).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunInstances {
    /// Name (usually the hostname).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_name: Option<String>,
    /// Type, for example `small_b`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// How many (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Vxnets to attach NICs to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vxnets: Vec<String>,
    /// Image id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
}

output! {
    /// Response of `RunInstances`.
    RunInstancesOutput {
        /// The creation job.
        job_id: String,
        /// Ids of the new instances.
        instances: Vec<String>,
    }
}

ids_request! {
    /// `StopInstances`: stops instances (a job).
    StopInstances { instances }
}

ids_request! {
    /// `StartInstances`: starts instances (a job).
    StartInstances { instances }
}

ids_request! {
    /// `TerminateInstances`: deletes instances (a job).
    TerminateInstances { instances }
}

/// `DescribeVxnets`: lists private networks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DescribeVxnets {
    /// Only these ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vxnets: Vec<String>,
    /// Include the instance ids on each vxnet.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub verbose: bool,
    /// Paging offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Page size (max 100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

actions! {
    RunInstances => RunInstancesOutput, run_instances;
    StopInstances => JobOutput, stop_instances;
    StartInstances => JobOutput, start_instances;
    TerminateInstances => JobOutput, terminate_instances;
}

describe_actions! {
    DescribeInstances => Instance, "instance_set", describe_instances, describe_instances_all;
    DescribeVxnets => Vxnet, "vxnet_set", describe_vxnets, describe_vxnets_all;
}
