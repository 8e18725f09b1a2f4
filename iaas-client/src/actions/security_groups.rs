//! Security groups and their rules.

use serde::Serialize;

use crate::model::{SecurityGroup, SecurityGroupRule};

use super::JobOutput;

/// `CreateSecurityGroup`: creates a firewall.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CreateSecurityGroup {
    /// Name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_group_name: Option<String>,
}

output! {
    /// Response of `CreateSecurityGroup`.
    CreateSecurityGroupOutput {
        /// Id of the new group.
        security_group_id: String,
    }
}

/// `DescribeSecurityGroups`: lists firewalls.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DescribeSecurityGroups {
    /// Only these ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<String>,
    /// Substring of id or name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_word: Option<String>,
    /// Only groups carrying any of these tag ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Paging offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Page size (max 100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

ids_request! {
    /// `DeleteSecurityGroups`: deletes groups, which must not be in use.
    DeleteSecurityGroups { security_groups }
}

output! {
    /// Response of `DeleteSecurityGroups`.
    DeleteSecurityGroupsOutput {
        /// Ids deleted.
        security_groups: Vec<String>,
    }
}

/// One rule of `AddSecurityGroupRules` (`rules.n.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SecurityGroupRuleSpec {
    /// tcp, udp, icmp, ...
    pub protocol: String,
    /// 0 (highest) .. 100.
    pub priority: i32,
    /// accept or drop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// 0 ingress, 1 egress.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<i32>,
    /// Port range start (tcp/udp).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val1: Option<String>,
    /// Port range end (tcp/udp).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val2: Option<String>,
    /// Source CIDR.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val3: Option<String>,
    /// Name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_group_rule_name: Option<String>,
}

/// `AddSecurityGroupRules`: adds rules (applied by `ApplySecurityGroup`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AddSecurityGroupRules {
    /// Group id.
    pub security_group: String,
    /// The rules.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<SecurityGroupRuleSpec>,
}

output! {
    /// Response of `AddSecurityGroupRules`.
    AddSecurityGroupRulesOutput {
        /// Ids of the new rules, in request order.
        security_group_rules: Vec<String>,
    }
}

/// `DescribeSecurityGroupRules`: lists rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DescribeSecurityGroupRules {
    /// Only rules of this group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_group: Option<String>,
    /// Only these ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub security_group_rules: Vec<String>,
    /// Only this direction (0 ingress, 1 egress).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<i32>,
    /// Paging offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Page size (max 100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

ids_request! {
    /// `DeleteSecurityGroupRules`: deletes rules.
    DeleteSecurityGroupRules { security_group_rules }
}

output! {
    /// Response of `DeleteSecurityGroupRules`.
    DeleteSecurityGroupRulesOutput {
        /// Ids deleted.
        security_group_rules: Vec<String>,
    }
}

/// `ApplySecurityGroup`: puts a group's rules in force on resources (a job).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplySecurityGroup {
    /// Group id.
    pub security_group: String,
    /// Instances to apply it to (empty: where it is already applied).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<String>,
}

actions! {
    CreateSecurityGroup => CreateSecurityGroupOutput, create_security_group;
    DeleteSecurityGroups => DeleteSecurityGroupsOutput, delete_security_groups;
    AddSecurityGroupRules => AddSecurityGroupRulesOutput, add_security_group_rules;
    DeleteSecurityGroupRules => DeleteSecurityGroupRulesOutput, delete_security_group_rules;
    ApplySecurityGroup => JobOutput, apply_security_group;
}

describe_actions! {
    DescribeSecurityGroups => SecurityGroup, "security_group_set", describe_security_groups, describe_security_groups_all;
    DescribeSecurityGroupRules => SecurityGroupRule, "security_group_rule_set",
        describe_security_group_rules, describe_security_group_rules_all;
}
