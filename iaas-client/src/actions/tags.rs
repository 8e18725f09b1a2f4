//! Tags: CreateTag, DescribeTags, DeleteTags, AttachTags, DetachTags.

use serde::Serialize;

use crate::model::{ResourceTagPair, Tag};

use super::NoOutput;

/// `CreateTag`: creates a tag.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CreateTag {
    /// Name (unique per owner).
    pub tag_name: String,
    /// Description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

output! {
    /// Response of `CreateTag`.
    CreateTagOutput {
        /// Id of the new tag.
        tag_id: String,
    }
}

/// `DescribeTags`: lists tags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DescribeTags {
    /// Only these ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Substring of id or name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_word: Option<String>,
    /// Include the resource bindings.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub verbose: bool,
    /// Paging offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Page size (max 100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

ids_request! {
    /// `DeleteTags`: deletes tags (and their bindings).
    DeleteTags { tags }
}

output! {
    /// Response of `DeleteTags`.
    DeleteTagsOutput {
        /// Ids deleted.
        tags: Vec<String>,
    }
}

/// `AttachTags`: binds tags to resources.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AttachTags {
    /// `resource_tag_pairs.n.{tag_id, resource_type, resource_id}`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resource_tag_pairs: Vec<ResourceTagPair>,
}

/// `DetachTags`: unbinds tags from resources.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DetachTags {
    /// `resource_tag_pairs.n.{tag_id, resource_type, resource_id}`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resource_tag_pairs: Vec<ResourceTagPair>,
}

actions! {
    CreateTag => CreateTagOutput, create_tag;
    DeleteTags => DeleteTagsOutput, delete_tags;
    AttachTags => NoOutput, attach_tags;
    DetachTags => NoOutput, detach_tags;
}

describe_actions! {
    DescribeTags => Tag, "tag_set", describe_tags, describe_tags_all;
}
