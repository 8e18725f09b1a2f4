//! Load balancers, listeners, backends, L7 policies and server certificates.

use std::fmt;

use serde::Serialize;

use crate::model::{
    LoadBalancer, LoadBalancerBackend, LoadBalancerListener, LoadBalancerPolicy,
    LoadBalancerPolicyRule, ServerCertificate,
};

use super::{JobOutput, NoOutput};

/// `CreateLoadBalancer`: creates a public (`eips`) or internal (`vxnet`) load balancer (a job).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CreateLoadBalancer {
    /// Public addresses to bind (public LB).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub eips: Vec<String>,
    /// Vxnet of an internal LB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vxnet: Option<String>,
    /// Fixed private address on `vxnet`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<String>,
    /// Size class (0..5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loadbalancer_type: Option<i32>,
    /// Name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loadbalancer_name: Option<String>,
    /// Security group applied to the LB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_group: Option<String>,
}

output! {
    /// Response of `CreateLoadBalancer`.
    CreateLoadBalancerOutput {
        /// The creation job.
        job_id: String,
        /// Id of the new load balancer.
        loadbalancer_id: String,
    }
}

/// `DescribeLoadBalancers`: lists load balancers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DescribeLoadBalancers {
    /// Only these ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub loadbalancers: Vec<String>,
    /// Only these statuses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub status: Vec<String>,
    /// Only LBs carrying any of these tag ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Substring of id or name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_word: Option<String>,
    /// Include listeners (and their backends).
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
    /// `UpdateLoadBalancers`: applies pending listener/backend/policy changes (a job).
    UpdateLoadBalancers { loadbalancers }
}

ids_request! {
    /// `DeleteLoadBalancers`: deletes load balancers (a job).
    DeleteLoadBalancers { loadbalancers }
}

/// One listener of `AddLoadBalancerListeners` (`listeners.n.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ListenerSpec {
    /// Port the listener binds.
    pub listener_port: u16,
    /// tcp, udp, http, https.
    pub listener_protocol: String,
    /// tcp, udp, http (defaults to the listener protocol).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_protocol: Option<String>,
    /// roundrobin, leastconn, source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance_mode: Option<String>,
    /// `tcp` or `http|/path`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy_check_method: Option<String>,
    /// `interval|timeout|unhealthy|healthy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy_check_option: Option<String>,
    /// Session stickiness spec.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_sticky: Option<String>,
    /// Header flags (1 = X-Forwarded-For).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwardfor: Option<i32>,
    /// Server certificate id for https listeners (several: comma-separated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_certificate_id: Option<String>,
    /// Name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loadbalancer_listener_name: Option<String>,
}

/// `AddLoadBalancerListeners`: adds listeners (applied by `UpdateLoadBalancers`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AddLoadBalancerListeners {
    /// Load balancer id.
    pub loadbalancer: String,
    /// The listeners.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<ListenerSpec>,
}

output! {
    /// Response of `AddLoadBalancerListeners`.
    AddLoadBalancerListenersOutput {
        /// Ids of the new listeners, in request order.
        loadbalancer_listeners: Vec<String>,
    }
}

/// `DescribeLoadBalancerListeners`: lists listeners.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DescribeLoadBalancerListeners {
    /// Only these ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub loadbalancer_listeners: Vec<String>,
    /// Only listeners of this load balancer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loadbalancer: Option<String>,
    /// Include backends.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub verbose: bool,
    /// Paging offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Page size (max 100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

/// `ModifyLoadBalancerListenerAttributes`: changes a listener (not its port or protocol).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ModifyLoadBalancerListenerAttributes {
    /// Listener id.
    pub loadbalancer_listener: String,
    /// New name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loadbalancer_listener_name: Option<String>,
    /// tcp, udp, http.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_protocol: Option<String>,
    /// roundrobin, leastconn, source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance_mode: Option<String>,
    /// `tcp` or `http|/path`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy_check_method: Option<String>,
    /// `interval|timeout|unhealthy|healthy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy_check_option: Option<String>,
    /// Session stickiness spec (empty string turns it off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_sticky: Option<String>,
    /// Header flags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwardfor: Option<i32>,
    /// Server certificate id(s), comma-separated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_certificate_id: Option<String>,
}

ids_request! {
    /// `DeleteLoadBalancerListeners`: deletes listeners and their backends.
    DeleteLoadBalancerListeners { loadbalancer_listeners }
}

output! {
    /// Response of `DeleteLoadBalancerListeners`.
    DeleteLoadBalancerListenersOutput {
        /// Ids deleted.
        loadbalancer_listeners: Vec<String>,
    }
}

/// One backend of `AddLoadBalancerBackends` (`backends.n.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BackendSpec {
    /// Instance id, or an IP address for direct (pod) backends.
    pub resource_id: String,
    /// Backend port.
    pub port: u16,
    /// Weight 1..100.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// L7 policy this backend serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loadbalancer_policy_id: Option<String>,
    /// Name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loadbalancer_backend_name: Option<String>,
}

/// `AddLoadBalancerBackends`: adds backends to a listener (applied by `UpdateLoadBalancers`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AddLoadBalancerBackends {
    /// Listener id.
    pub loadbalancer_listener: String,
    /// The backends.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendSpec>,
}

output! {
    /// Response of `AddLoadBalancerBackends`.
    AddLoadBalancerBackendsOutput {
        /// Ids of the new backends, in request order.
        loadbalancer_backends: Vec<String>,
    }
}

/// `DescribeLoadBalancerBackends`: lists backends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DescribeLoadBalancerBackends {
    /// Only these ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub loadbalancer_backends: Vec<String>,
    /// Only backends of this listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loadbalancer_listener: Option<String>,
    /// Only backends of this load balancer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loadbalancer: Option<String>,
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

/// `ModifyLoadBalancerBackendAttributes`: changes a backend's port or weight.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ModifyLoadBalancerBackendAttributes {
    /// Backend id.
    pub loadbalancer_backend: String,
    /// New port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// New weight.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

ids_request! {
    /// `DeleteLoadBalancerBackends`: deletes backends.
    DeleteLoadBalancerBackends { loadbalancer_backends }
}

output! {
    /// Response of `DeleteLoadBalancerBackends`.
    DeleteLoadBalancerBackendsOutput {
        /// Ids deleted.
        loadbalancer_backends: Vec<String>,
    }
}

/// `CreateLoadBalancerPolicy`: creates an L7 forwarding policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CreateLoadBalancerPolicy {
    /// Name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loadbalancer_policy_name: Option<String>,
    /// `and` or `or` between rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
}

output! {
    /// Response of `CreateLoadBalancerPolicy`.
    CreateLoadBalancerPolicyOutput {
        /// Id of the new policy.
        loadbalancer_policy_id: String,
    }
}

/// `DescribeLoadBalancerPolicies`: lists L7 policies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DescribeLoadBalancerPolicies {
    /// Only these ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub loadbalancer_policies: Vec<String>,
    /// Include rules.
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
    /// `DeleteLoadBalancerPolicies`: deletes L7 policies.
    DeleteLoadBalancerPolicies { loadbalancer_policies }
}

output! {
    /// Response of `DeleteLoadBalancerPolicies`.
    DeleteLoadBalancerPoliciesOutput {
        /// Ids deleted.
        loadbalancer_policies: Vec<String>,
    }
}

/// One rule of `AddLoadBalancerPolicyRules` (`rules.n.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PolicyRuleSpec {
    /// `domain` or `url`.
    pub rule_type: String,
    /// The host or path pattern.
    pub val: String,
    /// Name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loadbalancer_policy_rule_name: Option<String>,
}

/// `AddLoadBalancerPolicyRules`: adds rules to a policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AddLoadBalancerPolicyRules {
    /// Policy id.
    pub loadbalancer_policy: String,
    /// The rules.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<PolicyRuleSpec>,
}

output! {
    /// Response of `AddLoadBalancerPolicyRules`.
    AddLoadBalancerPolicyRulesOutput {
        /// Ids of the new rules, in request order.
        loadbalancer_policy_rules: Vec<String>,
    }
}

/// `DescribeLoadBalancerPolicyRules`: lists policy rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DescribeLoadBalancerPolicyRules {
    /// Only these ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub loadbalancer_policy_rules: Vec<String>,
    /// Only rules of this policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loadbalancer_policy: Option<String>,
    /// Paging offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Page size (max 100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

ids_request! {
    /// `DeleteLoadBalancerPolicyRules`: deletes policy rules.
    DeleteLoadBalancerPolicyRules { loadbalancer_policy_rules }
}

output! {
    /// Response of `DeleteLoadBalancerPolicyRules`.
    DeleteLoadBalancerPolicyRulesOutput {
        /// Ids deleted.
        loadbalancer_policy_rules: Vec<String>,
    }
}

/// `ApplyLoadBalancerPolicy`: puts a policy's rule changes in force (a job).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplyLoadBalancerPolicy {
    /// Policy id.
    pub loadbalancer_policy: String,
}

/// `CreateServerCertificate`: uploads a TLS certificate and its key.
/// `Debug` never shows the private key.
#[derive(Clone, Default, PartialEq, Eq, Serialize)]
pub struct CreateServerCertificate {
    /// Name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_certificate_name: Option<String>,
    /// PEM certificate chain.
    pub certificate_content: String,
    /// PEM private key.
    pub private_key: String,
}

impl fmt::Debug for CreateServerCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateServerCertificate")
            .field("server_certificate_name", &self.server_certificate_name)
            .field(
                "certificate_content",
                &format_args!("<{} bytes>", self.certificate_content.len()),
            )
            .field("private_key", &"<redacted>")
            .finish()
    }
}

output! {
    /// Response of `CreateServerCertificate`.
    CreateServerCertificateOutput {
        /// Id of the new certificate.
        server_certificate_id: String,
    }
}

/// `DescribeServerCertificates`: lists certificates (never their keys).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DescribeServerCertificates {
    /// Only these ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub server_certificates: Vec<String>,
    /// Substring of id or name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_word: Option<String>,
    /// Only certificates carrying any of these tag ids.
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
    /// `DeleteServerCertificates`: deletes certificates.
    DeleteServerCertificates { server_certificates }
}

output! {
    /// Response of `DeleteServerCertificates`.
    DeleteServerCertificatesOutput {
        /// Ids deleted.
        server_certificates: Vec<String>,
    }
}

actions! {
    CreateLoadBalancer => CreateLoadBalancerOutput, create_load_balancer;
    UpdateLoadBalancers => JobOutput, update_load_balancers;
    DeleteLoadBalancers => JobOutput, delete_load_balancers;
    AddLoadBalancerListeners => AddLoadBalancerListenersOutput, add_load_balancer_listeners;
    ModifyLoadBalancerListenerAttributes => NoOutput, modify_load_balancer_listener_attributes;
    DeleteLoadBalancerListeners => DeleteLoadBalancerListenersOutput, delete_load_balancer_listeners;
    AddLoadBalancerBackends => AddLoadBalancerBackendsOutput, add_load_balancer_backends;
    ModifyLoadBalancerBackendAttributes => NoOutput, modify_load_balancer_backend_attributes;
    DeleteLoadBalancerBackends => DeleteLoadBalancerBackendsOutput, delete_load_balancer_backends;
    CreateLoadBalancerPolicy => CreateLoadBalancerPolicyOutput, create_load_balancer_policy;
    DeleteLoadBalancerPolicies => DeleteLoadBalancerPoliciesOutput, delete_load_balancer_policies;
    AddLoadBalancerPolicyRules => AddLoadBalancerPolicyRulesOutput, add_load_balancer_policy_rules;
    DeleteLoadBalancerPolicyRules => DeleteLoadBalancerPolicyRulesOutput, delete_load_balancer_policy_rules;
    ApplyLoadBalancerPolicy => JobOutput, apply_load_balancer_policy;
    CreateServerCertificate => CreateServerCertificateOutput, create_server_certificate;
    DeleteServerCertificates => DeleteServerCertificatesOutput, delete_server_certificates;
}

describe_actions! {
    DescribeLoadBalancers => LoadBalancer, "loadbalancer_set", describe_load_balancers, describe_load_balancers_all;
    DescribeLoadBalancerListeners => LoadBalancerListener, "loadbalancer_listener_set",
        describe_load_balancer_listeners, describe_load_balancer_listeners_all;
    DescribeLoadBalancerBackends => LoadBalancerBackend, "loadbalancer_backend_set",
        describe_load_balancer_backends, describe_load_balancer_backends_all;
    DescribeLoadBalancerPolicies => LoadBalancerPolicy, "loadbalancer_policy_set",
        describe_load_balancer_policies, describe_load_balancer_policies_all;
    DescribeLoadBalancerPolicyRules => LoadBalancerPolicyRule, "loadbalancer_policy_rule_set",
        describe_load_balancer_policy_rules, describe_load_balancer_policy_rules_all;
    DescribeServerCertificates => ServerCertificate, "server_certificate_set",
        describe_server_certificates, describe_server_certificates_all;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::flatten;
    use std::collections::BTreeMap;

    #[test]
    fn listeners_flatten_as_records() {
        let r = AddLoadBalancerListeners {
            loadbalancer: "lb-1".into(),
            listeners: vec![
                ListenerSpec {
                    listener_port: 80,
                    listener_protocol: "http".into(),
                    forwardfor: Some(1),
                    ..Default::default()
                },
                ListenerSpec {
                    listener_port: 443,
                    listener_protocol: "https".into(),
                    server_certificate_id: Some("sc-1".into()),
                    ..Default::default()
                },
            ],
        };
        let got: BTreeMap<String, String> = flatten(&r).unwrap().into_iter().collect();
        let want: BTreeMap<String, String> = [
            ("loadbalancer", "lb-1"),
            ("listeners.1.listener_port", "80"),
            ("listeners.1.listener_protocol", "http"),
            ("listeners.1.forwardfor", "1"),
            ("listeners.2.listener_port", "443"),
            ("listeners.2.listener_protocol", "https"),
            ("listeners.2.server_certificate_id", "sc-1"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn certificate_request_debug_redacts_key() {
        let r = CreateServerCertificate {
            server_certificate_name: Some("c".into()),
            certificate_content: "CERT".into(),
            private_key: "-----BEGIN PRIVATE KEY----- SECRETKEY".into(),
        };
        let s = format!("{r:?}");
        assert!(!s.contains("SECRETKEY") && s.contains("redacted"), "{s}");
    }
}
