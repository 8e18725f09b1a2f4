//! A CNI plugin for VPC-routed pods (no encapsulation) and its building blocks.
//!
//! Each pod gets a /32 from the node's pod CIDR on a veth pair; the node
//! routes the /32 to the veth, and the VPC routes the node's pod CIDR to the
//! node (a route the cloud controller asks the cloud for). See [`plugin`].
//! With an IPv6 range as well the pod also gets a /128 (dual-stack, see
//! [`net`]); `ipMasq` adds an optional SNAT rule set ([`masq`]).
//!
//! [`agent`] is the node agent (`cloudsuite-cni-agent`): it waits for the
//! Node's pod CIDR(s), installs the plugin, writes the conflist and
//! reclaims leases of pods that are provably gone.

pub mod agent;
pub mod config;
pub mod error;
pub mod ipam;
pub mod masq;
pub mod net;
pub mod netns;
pub mod plugin;
