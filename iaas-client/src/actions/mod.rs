//! Typed actions: one request struct per action (named after it), one output
//! struct per response shape, and one method per action on [`Client`].
//!
//! Request structs serialize to the flat parameters of
//! `docs/API-REFERENCE.md` (absent options and empty lists are not sent);
//! responses decode leniently (`#[serde(default)]`), since real endpoints
//! omit fields freely.
//!
//! Describe actions implement [`Describe`] and get two methods:
//! `describe_x(&req) -> Page<Item>` (one page) and `describe_x_all(&req) ->
//! Vec<Item>` (every page). Other actions implement [`Action`].

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::Client;
use crate::error::Error;
use crate::params::flatten;

/// Defines `Action` impls and the matching `Client` methods.
macro_rules! actions {
    ($( $req:ident => $out:ty, $method:ident; )*) => {
        $(
            impl $crate::actions::Action for $req {
                const ACTION: &'static str = stringify!($req);
                type Output = $out;
            }

            impl $crate::client::Client {
                #[doc = concat!("Calls `", stringify!($req), "`.")]
                pub async fn $method(&self, req: &$req) -> Result<$out, $crate::error::Error> {
                    self.execute(req).await
                }
            }
        )*
    };
}

/// Defines `Describe` impls and the matching paged `Client` methods.
macro_rules! describe_actions {
    ($( $req:ident => $item:ty, $set:literal, $method:ident, $method_all:ident; )*) => {
        $(
            impl $crate::actions::Describe for $req {
                const ACTION: &'static str = stringify!($req);
                const SET_FIELD: &'static str = $set;
                type Item = $item;
                fn set_offset(&mut self, offset: u64) {
                    self.offset = Some(offset);
                }
                fn set_limit(&mut self, limit: u64) {
                    self.limit = Some(limit);
                }
            }

            impl $crate::client::Client {
                #[doc = concat!("Calls `", stringify!($req), "` and returns one page of `", $set, "`.")]
                pub async fn $method(&self, req: &$req) -> Result<$crate::actions::Page<$item>, $crate::error::Error> {
                    self.describe(req).await
                }

                #[doc = concat!(
                    "Calls `", stringify!($req), "` page by page (", stringify!(100),
                    " per page, from offset 0) and returns every item of `", $set, "`."
                )]
                pub async fn $method_all(&self, req: &$req) -> Result<Vec<$item>, $crate::error::Error> {
                    self.describe_all(req).await
                }
            }
        )*
    };
}

/// Defines a request whose only parameter is a list of ids, with a `new` constructor.
macro_rules! ids_request {
    ($(#[$doc:meta])* $name:ident { $field:ident }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
        pub struct $name {
            #[doc = concat!("`", stringify!($field), ".n`: the ids to act on.")]
            #[serde(skip_serializing_if = "Vec::is_empty")]
            pub $field: Vec<String>,
        }

        impl $name {
            /// Builds the request from ids.
            pub fn new<I, S>(ids: I) -> Self
            where
                I: IntoIterator<Item = S>,
                S: Into<String>,
            {
                $name {
                    $field: ids.into_iter().map(Into::into).collect(),
                }
            }
        }
    };
}

/// Defines a response struct (lenient: every field defaults).
macro_rules! output {
    ($(#[$doc:meta])* $name:ident { $( $(#[$fdoc:meta])* $field:ident : $ty:ty ),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        #[serde(default)]
        pub struct $name {
            $( $(#[$fdoc])* pub $field: $ty, )*
        }
    };
}

pub mod eips;
pub mod instances;
pub mod jobs;
pub mod loadbalancers;
pub mod routers;
pub mod security_groups;
pub mod snapshots;
pub mod tags;
pub mod volumes;

pub use eips::*;
pub use instances::*;
pub use jobs::*;
pub use loadbalancers::*;
pub use routers::*;
pub use security_groups::*;
pub use snapshots::*;
pub use tags::*;
pub use volumes::*;

/// Page size used by the `_all` walkers (the API maximum).
pub const PAGE_LIMIT: u64 = 100;

/// A typed non-Describe action.
pub trait Action: Serialize + Sync {
    /// The wire action name.
    const ACTION: &'static str;
    /// The decoded response.
    type Output: DeserializeOwned;
}

/// A Describe action with `offset`/`limit` paging.
pub trait Describe: Serialize + Clone + Sync {
    /// The wire action name.
    const ACTION: &'static str;
    /// The response field holding the items (`volume_set`).
    const SET_FIELD: &'static str;
    /// The record type.
    type Item: DeserializeOwned;
    /// Sets `offset`.
    fn set_offset(&mut self, offset: u64);
    /// Sets `limit`.
    fn set_limit(&mut self, limit: u64);
}

/// One page of a Describe response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The records of this page.
    pub items: Vec<T>,
    /// How many records match in total (all pages).
    pub total_count: u64,
}

impl<T> Default for Page<T> {
    fn default() -> Self {
        Page {
            items: Vec::new(),
            total_count: 0,
        }
    }
}

/// Response of actions that only start a job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobOutput {
    /// The job to wait for (`j-xxxx`).
    pub job_id: String,
}

/// Response of actions that return nothing but success.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoOutput {}

/// Decodes `<set_field>` and `total_count` from a checked envelope.
pub(crate) fn decode_page<T: DeserializeOwned>(
    action: &str,
    set_field: &str,
    mut value: Value,
) -> Result<Page<T>, Error> {
    let items: Vec<T> = match value.get_mut(set_field).map(Value::take) {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => serde_json::from_value(v).map_err(|e| Error::Decode {
            action: action.to_string(),
            detail: format!("{set_field}: {e}"),
        })?,
    };
    let total_count = value
        .get("total_count")
        .and_then(Value::as_u64)
        .unwrap_or(items.len() as u64);
    Ok(Page { items, total_count })
}

impl Client {
    /// Calls any typed action.
    pub async fn execute<A: Action>(&self, req: &A) -> Result<A::Output, Error> {
        self.call(A::ACTION, req).await
    }

    /// Calls a Describe action and returns one page.
    pub async fn describe<D: Describe>(&self, req: &D) -> Result<Page<D::Item>, Error> {
        let params = flatten(req).map_err(|e| Error::Request(format!("{}: {e}", D::ACTION)))?;
        self.run(D::ACTION, params, |v| {
            decode_page(D::ACTION, D::SET_FIELD, v)
        })
        .await
    }

    /// Walks every page of a Describe action from offset 0 with
    /// [`PAGE_LIMIT`] per page (the request's own offset/limit are
    /// replaced), stopping at `total_count` or at an empty page.
    pub async fn describe_all<D: Describe>(&self, req: &D) -> Result<Vec<D::Item>, Error> {
        let mut req = req.clone();
        let mut out = Vec::new();
        let mut offset = 0u64;
        loop {
            req.set_offset(offset);
            req.set_limit(PAGE_LIMIT);
            let page = self.describe(&req).await?;
            let n = page.items.len() as u64;
            out.extend(page.items);
            offset += n;
            if n == 0 || offset >= page.total_count {
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Volume;
    use serde_json::json;

    #[test]
    fn page_decoding() {
        let p: Page<Volume> = decode_page(
            "DescribeVolumes",
            "volume_set",
            json!({"ret_code":0,"total_count":7,"volume_set":[{"volume_id":"vol-1","size":20}]}),
        )
        .unwrap();
        assert_eq!(p.total_count, 7);
        assert_eq!(p.items[0].volume_id, "vol-1");
        assert_eq!(p.items[0].size, 20);

        let p: Page<Volume> =
            decode_page("DescribeVolumes", "volume_set", json!({"ret_code":0})).unwrap();
        assert_eq!(p, Page::default());

        let e = decode_page::<Volume>("DescribeVolumes", "volume_set", json!({"volume_set": 3}))
            .unwrap_err();
        assert!(e.to_string().contains("volume_set"), "{e}");
    }
}
