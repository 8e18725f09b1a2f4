//! Snapshots: CreateSnapshots, DescribeSnapshots, DeleteSnapshots,
//! CreateVolumeFromSnapshot.

use serde::Serialize;

use crate::model::Snapshot;

use super::JobOutput;

/// `CreateSnapshots`: snapshots volumes (a job).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CreateSnapshots {
    /// Volume ids to snapshot.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// Name of the snapshots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_name: Option<String>,
    /// Full (`true`) or incremental snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_full: Option<bool>,
}

output! {
    /// Response of `CreateSnapshots`.
    CreateSnapshotsOutput {
        /// The snapshot job.
        job_id: String,
        /// Ids of the new snapshots.
        snapshots: Vec<String>,
    }
}

/// `DescribeSnapshots`: lists snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DescribeSnapshots {
    /// Only these ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<String>,
    /// Only snapshots of this volume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
    /// Only these statuses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub status: Vec<String>,
    /// Only snapshots carrying any of these tag ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Substring of id or name.
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
    /// `DeleteSnapshots`: deletes snapshots (a job).
    DeleteSnapshots { snapshots }
}

/// `CreateVolumeFromSnapshot`: restores a snapshot into a new volume (a job).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CreateVolumeFromSnapshot {
    /// Snapshot id.
    pub snapshot: String,
    /// Name of the new volume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_name: Option<String>,
}

output! {
    /// Response of `CreateVolumeFromSnapshot`.
    CreateVolumeFromSnapshotOutput {
        /// The restore job.
        job_id: String,
        /// Id of the new volume.
        volume_id: String,
    }
}

actions! {
    CreateSnapshots => CreateSnapshotsOutput, create_snapshots;
    DeleteSnapshots => JobOutput, delete_snapshots;
    CreateVolumeFromSnapshot => CreateVolumeFromSnapshotOutput, create_volume_from_snapshot;
}

describe_actions! {
    DescribeSnapshots => Snapshot, "snapshot_set", describe_snapshots, describe_snapshots_all;
}
