//! Block volumes: CreateVolumes, DescribeVolumes, AttachVolumes,
//! DetachVolumes, DeleteVolumes, ResizeVolumes, CloneVolumes.

use serde::Serialize;

use crate::model::Volume;

use super::JobOutput;

/// `CreateVolumes`: creates `count` volumes of `size` GB (a job).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CreateVolumes {
    /// Size in GB.
    pub size: u64,
    /// Name given to every created volume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_name: Option<String>,
    /// Disk type (0 performance, 2 capacity, 3 super performance, 5 neonsan, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_type: Option<i32>,
    /// How many (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}

output! {
    /// Response of `CreateVolumes`.
    CreateVolumesOutput {
        /// The creation job.
        job_id: String,
        /// Ids of the new volumes.
        volumes: Vec<String>,
    }
}

/// `DescribeVolumes`: lists volumes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DescribeVolumes {
    /// Only these ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// Only volumes attached to this instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Only these statuses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub status: Vec<String>,
    /// Only volumes carrying any of these tag ids.
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

/// `AttachVolumes`: attaches volumes to an instance (a job; the device then
/// shows in `DescribeVolumes` as `instance.device`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AttachVolumes {
    /// Volume ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// Instance id.
    pub instance: String,
}

/// `DetachVolumes`: detaches volumes from an instance (a job).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DetachVolumes {
    /// Volume ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// Instance id.
    pub instance: String,
}

ids_request! {
    /// `DeleteVolumes`: deletes volumes, which must be available (a job).
    DeleteVolumes { volumes }
}

/// `ResizeVolumes`: grows volumes to `size` GB (a job; shrinking is refused).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ResizeVolumes {
    /// Volume ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// New size in GB.
    pub size: u64,
}

/// `CloneVolumes`: copies a volume into `count` new ones (a job).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CloneVolumes {
    /// Source volume id.
    pub volume: String,
    /// Name of the copies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_name: Option<String>,
    /// How many (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}

output! {
    /// Response of `CloneVolumes`.
    CloneVolumesOutput {
        /// The clone job.
        job_id: String,
        /// Ids of the new volumes.
        volumes: Vec<String>,
    }
}

actions! {
    CreateVolumes => CreateVolumesOutput, create_volumes;
    AttachVolumes => JobOutput, attach_volumes;
    DetachVolumes => JobOutput, detach_volumes;
    DeleteVolumes => JobOutput, delete_volumes;
    ResizeVolumes => JobOutput, resize_volumes;
    CloneVolumes => CloneVolumesOutput, clone_volumes;
}

describe_actions! {
    DescribeVolumes => Volume, "volume_set", describe_volumes, describe_volumes_all;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::flatten;

    fn flat<T: Serialize>(t: &T) -> Vec<(String, String)> {
        let mut v = flatten(t).unwrap();
        v.sort();
        v
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v: Vec<_> = p
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn wire_names() {
        let r = DescribeVolumes {
            volumes: vec!["vol-a".into(), "vol-b".into()],
            verbose: true,
            ..Default::default()
        };
        assert_eq!(
            flat(&r),
            pairs(&[
                ("volumes.1", "vol-a"),
                ("volumes.2", "vol-b"),
                ("verbose", "1")
            ])
        );
        assert!(flat(&DescribeVolumes::default()).is_empty());
        let r = CreateVolumes {
            size: 20,
            volume_name: Some("pvc-1".into()),
            ..Default::default()
        };
        assert_eq!(flat(&r), pairs(&[("size", "20"), ("volume_name", "pvc-1")]));
        assert_eq!(
            flat(&AttachVolumes {
                volumes: vec!["vol-a".into()],
                instance: "i-1".into()
            }),
            pairs(&[("volumes.1", "vol-a"), ("instance", "i-1")])
        );
        assert_eq!(
            flat(&DeleteVolumes::new(["vol-x"])),
            pairs(&[("volumes.1", "vol-x")])
        );
    }

    #[test]
    fn outputs_decode_leniently() {
        let o: CreateVolumesOutput = serde_json::from_str(
            r#"{"action":"CreateVolumesResponse","ret_code":0,"job_id":"j-1","volumes":["vol-1"]}"#,
        )
        .unwrap();
        assert_eq!(o.job_id, "j-1");
        assert_eq!(o.volumes, vec!["vol-1"]);
        let o: JobOutput = serde_json::from_str(r#"{"ret_code":0}"#).unwrap();
        assert_eq!(o.job_id, "");
    }
}
