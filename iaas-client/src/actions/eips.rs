//! Public addresses: AllocateEips, DescribeEips, ReleaseEips,
//! AssociateEipsToLoadBalancer, DissociateEipsFromLoadBalancer.

use serde::Serialize;

use crate::model::Eip;

use super::JobOutput;

/// `AllocateEips`: allocates public addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AllocateEips {
    /// Bandwidth in Mbps.
    pub bandwidth: u32,
    /// How many (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Name of the addresses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eip_name: Option<String>,
}

output! {
    /// Response of `AllocateEips`.
    AllocateEipsOutput {
        /// A job, when the endpoint allocates asynchronously (may be empty).
        job_id: String,
        /// Ids of the new addresses.
        eips: Vec<String>,
    }
}

/// `DescribeEips`: lists public addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DescribeEips {
    /// Only these ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub eips: Vec<String>,
    /// Only these statuses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub status: Vec<String>,
    /// Only addresses carrying any of these tag ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Substring of id, name or address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_word: Option<String>,
    /// Paging offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Page size (max 100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

ids_request! {
    /// `ReleaseEips`: releases addresses, which must not be associated (a job).
    ReleaseEips { eips }
}

/// `AssociateEipsToLoadBalancer`: binds addresses to a load balancer (a job).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AssociateEipsToLoadBalancer {
    /// Address ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub eips: Vec<String>,
    /// Load balancer id.
    pub loadbalancer: String,
}

/// `DissociateEipsFromLoadBalancer`: unbinds addresses from a load balancer (a job).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DissociateEipsFromLoadBalancer {
    /// Address ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub eips: Vec<String>,
    /// Load balancer id.
    pub loadbalancer: String,
}

actions! {
    AllocateEips => AllocateEipsOutput, allocate_eips;
    ReleaseEips => JobOutput, release_eips;
    AssociateEipsToLoadBalancer => JobOutput, associate_eips_to_load_balancer;
    DissociateEipsFromLoadBalancer => JobOutput, dissociate_eips_from_load_balancer;
}

describe_actions! {
    DescribeEips => Eip, "eip_set", describe_eips, describe_eips_all;
}
