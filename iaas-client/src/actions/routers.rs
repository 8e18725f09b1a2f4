//! VPC routers and their statics: DescribeRouters, UpdateRouters,
//! AddRouterStatics, DescribeRouterStatics, DeleteRouterStatics.

use serde::Serialize;

use crate::model::{Router, RouterStatic};

use super::JobOutput;

/// `DescribeRouters`: lists VPC routers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DescribeRouters {
    /// Only these ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routers: Vec<String>,
    /// Only the router of this vxnet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vxnet: Option<String>,
    /// Only these statuses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub status: Vec<String>,
    /// Paging offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Page size (max 100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

ids_request! {
    /// `UpdateRouters`: applies pending statics, so the data plane routes them (a job).
    UpdateRouters { routers }
}

/// One static of `AddRouterStatics` (`statics.n.*`). For pod routes use
/// [`crate::model::STATIC_TYPE_ROUTE`] with `val1` = destination CIDR and
/// `val2` = next-hop IP (see [`RouterStaticSpec::route`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RouterStaticSpec {
    /// Rule type.
    pub static_type: i32,
    /// Rule value 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val1: Option<String>,
    /// Rule value 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val2: Option<String>,
    /// Rule value 3.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val3: Option<String>,
    /// Rule value 4.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val4: Option<String>,
    /// Rule value 5.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val5: Option<String>,
    /// Rule value 6.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val6: Option<String>,
    /// Name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub router_static_name: Option<String>,
}

impl RouterStaticSpec {
    /// A route entry: `destination` CIDR via `next_hop` IP.
    pub fn route(
        destination: impl Into<String>,
        next_hop: impl Into<String>,
        name: Option<String>,
    ) -> Self {
        RouterStaticSpec {
            static_type: crate::model::STATIC_TYPE_ROUTE,
            val1: Some(destination.into()),
            val2: Some(next_hop.into()),
            router_static_name: name,
            ..Default::default()
        }
    }
}

/// `AddRouterStatics`: adds statics to a router (applied by `UpdateRouters`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AddRouterStatics {
    /// Router id.
    pub router: String,
    /// Vxnet the statics apply to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vxnet: Option<String>,
    /// The statics.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub statics: Vec<RouterStaticSpec>,
}

output! {
    /// Response of `AddRouterStatics`.
    AddRouterStaticsOutput {
        /// Ids of the new statics, in request order.
        router_statics: Vec<String>,
    }
}

/// `DescribeRouterStatics`: lists router statics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DescribeRouterStatics {
    /// Only these ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub router_statics: Vec<String>,
    /// Only statics of this router.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub router: Option<String>,
    /// Only statics on this vxnet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vxnet: Option<String>,
    /// Only statics of this type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub static_type: Option<i32>,
    /// Paging offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Page size (max 100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

ids_request! {
    /// `DeleteRouterStatics`: deletes statics (applied by `UpdateRouters`).
    DeleteRouterStatics { router_statics }
}

output! {
    /// Response of `DeleteRouterStatics`.
    DeleteRouterStaticsOutput {
        /// Ids deleted.
        router_statics: Vec<String>,
    }
}

actions! {
    UpdateRouters => JobOutput, update_routers;
    AddRouterStatics => AddRouterStaticsOutput, add_router_statics;
    DeleteRouterStatics => DeleteRouterStaticsOutput, delete_router_statics;
}

describe_actions! {
    DescribeRouters => Router, "router_set", describe_routers, describe_routers_all;
    DescribeRouterStatics => RouterStatic, "router_static_set", describe_router_statics, describe_router_statics_all;
}
