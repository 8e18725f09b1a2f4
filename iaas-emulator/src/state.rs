//! The emulator's whole state: one [`Table`] per kind, plus seeding.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use iaas_client::model::{
    Eip, Instance, InstanceVxnet, LoadBalancer, LoadBalancerBackend, LoadBalancerListener,
    LoadBalancerPolicy, LoadBalancerPolicyRule, ResourceTagPair, Router, RouterStatic,
    SecurityGroup, SecurityGroupRule, ServerCertificate, Snapshot, Tag, Volume, Vxnet, VxnetRouter,
};
use serde::{Deserialize, Serialize};

use crate::config::EmulatorConfig;
use crate::error::{ApiError, ApiResult, EmuError};
use crate::jobs::JobRec;
use crate::store::{Store, Table, TableIo, Write};
use crate::util::{Cidr, new_id, now_rfc3339, random_string};

/// Emulator-wide facts kept in the store (row `meta` of table `meta`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Meta {
    /// The zone.
    pub zone: String,
    /// The access key id clients sign with.
    pub access_key_id: String,
    /// Its secret.
    pub secret_access_key: String,
}

/// A server certificate with the private key the API never returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CertRec {
    /// What Describe shows.
    pub cert: ServerCertificate,
    /// PEM private key, handed only to the LB driver.
    pub private_key: String,
}

/// First address handed out on a vxnet (.1 is the router, .2-.10 reserved as on QingCloud).
pub const FIRST_HOST: u32 = 11;

/// Every record the emulator holds.
#[derive(Debug)]
pub struct State {
    /// Singleton `meta` row.
    pub meta: Table<Meta>,
    /// Instances.
    pub instances: Table<Instance>,
    /// Vxnets.
    pub vxnets: Table<Vxnet>,
    /// Routers.
    pub routers: Table<Router>,
    /// Router statics.
    pub statics: Table<RouterStatic>,
    /// Volumes.
    pub volumes: Table<Volume>,
    /// Snapshots.
    pub snapshots: Table<Snapshot>,
    /// Jobs with their operations.
    pub jobs: Table<JobRec>,
    /// Load balancers (listeners kept apart).
    pub lbs: Table<LoadBalancer>,
    /// Listeners (backends kept apart).
    pub listeners: Table<LoadBalancerListener>,
    /// Backends.
    pub backends: Table<LoadBalancerBackend>,
    /// L7 policies (rules kept apart).
    pub policies: Table<LoadBalancerPolicy>,
    /// L7 policy rules.
    pub rules: Table<LoadBalancerPolicyRule>,
    /// Server certificates with keys.
    pub certs: Table<CertRec>,
    /// EIPs.
    pub eips: Table<Eip>,
    /// Security groups.
    pub sgs: Table<SecurityGroup>,
    /// Security group rules.
    pub sg_rules: Table<SecurityGroupRule>,
    /// Tags.
    pub tags: Table<Tag>,
    /// Tag bindings keyed `tag_id|resource_type|resource_id`.
    pub tag_pairs: Table<ResourceTagPair>,
    /// Configuration generation per LB: bumped by every listener/backend
    /// change, so that an apply job marks the LB applied only when nothing
    /// changed after it read the configuration.
    pub lb_generations: Table<u64>,
    seq: u64,
}

impl Default for State {
    fn default() -> Self {
        State {
            meta: Table::new("meta"),
            instances: Table::new("instances"),
            vxnets: Table::new("vxnets"),
            routers: Table::new("routers"),
            statics: Table::new("router_statics"),
            volumes: Table::new("volumes"),
            snapshots: Table::new("snapshots"),
            jobs: Table::new("jobs"),
            lbs: Table::new("loadbalancers"),
            listeners: Table::new("lb_listeners"),
            backends: Table::new("lb_backends"),
            policies: Table::new("lb_policies"),
            rules: Table::new("lb_policy_rules"),
            certs: Table::new("server_certificates"),
            eips: Table::new("eips"),
            sgs: Table::new("security_groups"),
            sg_rules: Table::new("security_group_rules"),
            tags: Table::new("tags"),
            tag_pairs: Table::new("tag_pairs"),
            lb_generations: Table::new("lb_generations"),
            seq: 0,
        }
    }
}

impl State {
    fn tables(&mut self) -> [&mut dyn TableIo; 20] {
        [
            &mut self.meta,
            &mut self.instances,
            &mut self.vxnets,
            &mut self.routers,
            &mut self.statics,
            &mut self.volumes,
            &mut self.snapshots,
            &mut self.jobs,
            &mut self.lbs,
            &mut self.listeners,
            &mut self.backends,
            &mut self.policies,
            &mut self.rules,
            &mut self.certs,
            &mut self.eips,
            &mut self.sgs,
            &mut self.sg_rules,
            &mut self.tags,
            &mut self.tag_pairs,
            &mut self.lb_generations,
        ]
    }

    /// Replaces the cache with what the store holds.
    pub fn load(&mut self, store: &Store) -> Result<(), EmuError> {
        let mut tables = self.tables();
        store.load(&mut tables)?;
        self.seq = self.tables().iter().map(|t| t.max_seq()).max().unwrap_or(0);
        Ok(())
    }

    /// Serialises every change since the last drain and forgets it; when a
    /// row cannot be serialised, every change is rolled back instead.
    pub fn drain_writes(&mut self) -> Result<Vec<Write>, EmuError> {
        let mut out = Vec::new();
        let mut failed = None;
        for t in self.tables() {
            if let Err(e) = t.collect(&mut out) {
                failed = Some(e);
                break;
            }
        }
        if let Some(e) = failed {
            self.rollback();
            return Err(e);
        }
        for t in self.tables() {
            t.settle();
        }
        Ok(out)
    }

    /// Undoes every change since the last drain (a failed request's).
    pub fn rollback(&mut self) {
        for t in self.tables() {
            t.rollback();
        }
    }

    /// The next creation sequence number.
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// The persisted meta row.
    pub fn meta(&self) -> Meta {
        self.meta.get("meta").cloned().unwrap_or_default()
    }

    /// Seeds a fresh store: zone, credentials, VPC router, vxnet, instances,
    /// default security group. Does nothing when a meta row exists.
    pub fn seed(&mut self, config: &EmulatorConfig) -> Result<bool, EmuError> {
        if self.meta.get("meta").is_some() {
            return Ok(false);
        }
        let (access_key_id, secret_access_key) = match &config.credentials {
            Some(c) => (c.access_key_id.clone(), c.secret_access_key.clone()),
            None => (
                format!(
                    "EMU{}",
                    random_string(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 17)
                ),
                random_string(
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                    40,
                ),
            ),
        };
        let seq = self.next_seq();
        self.meta.insert(
            "meta",
            seq,
            Meta {
                zone: config.zone.clone(),
                access_key_id,
                secret_access_key,
            },
        );
        let now = now_rfc3339();
        let vxnet_cidr = Cidr::parse(&config.vxnet_network, true).map_err(EmuError::Config)?;
        let router_id = new_id("rtr");
        let vxnet_id = new_id("vxnet");
        let manager_ip = vxnet_cidr.nth(1).map(|a| a.to_string()).unwrap_or_default();
        let seq = self.next_seq();
        self.routers.insert(
            &router_id,
            seq,
            Router {
                router_id: router_id.clone(),
                router_name: "vpc".to_string(),
                status: "active".to_string(),
                is_applied: 1,
                vpc_network: config.vpc_network.clone(),
                vxnets: vec![vxnet_id.clone()],
                create_time: now.clone(),
                ..Default::default()
            },
        );
        let seq = self.next_seq();
        self.vxnets.insert(
            &vxnet_id,
            seq,
            Vxnet {
                vxnet_id: vxnet_id.clone(),
                vxnet_name: "vxnet-default".to_string(),
                vxnet_type: 1,
                router: Some(VxnetRouter {
                    router_id: router_id.clone(),
                    router_name: "vpc".to_string(),
                    ip_network: vxnet_cidr.to_string(),
                    manager_ip,
                }),
                create_time: now.clone(),
                zone_id: config.zone.clone(),
                ..Default::default()
            },
        );
        for n in 1..=config.instances {
            let id = new_id("i");
            let ip = self
                .allocate_private_ip(&vxnet_id, None)
                .map_err(|e| EmuError::Config(e.message))?;
            let seq = self.next_seq();
            self.instances.insert(
                &id,
                seq,
                Instance {
                    instance_id: id.clone(),
                    instance_name: format!("node-{n}"),
                    instance_type: "c1m2".to_string(),
                    status: "running".to_string(),
                    vxnets: vec![InstanceVxnet {
                        vxnet_id: vxnet_id.clone(),
                        vxnet_name: "vxnet-default".to_string(),
                        private_ip: ip,
                        nic_id: nic_id(),
                    }],
                    zone_id: config.zone.clone(),
                    create_time: now.clone(),
                    ..Default::default()
                },
            );
        }
        let sg_id = new_id("sg");
        let seq = self.next_seq();
        self.sgs.insert(
            &sg_id,
            seq,
            SecurityGroup {
                security_group_id: sg_id.clone(),
                security_group_name: "default".to_string(),
                is_applied: 1,
                is_default: 1,
                create_time: now,
                ..Default::default()
            },
        );
        Ok(true)
    }

    /// Presents an existing host as a running instance, idempotent by name:
    /// a host adopted again keeps its id and takes the new address and type.
    /// It joins the first vxnet whose CIDR holds its address (none otherwise)
    /// and never gets a data plane of its own.
    pub fn adopt(&mut self, host: &crate::config::AdoptedHost, zone: &str) -> ApiResult<Instance> {
        let name = host.name.trim();
        if name.is_empty() || name.len() > 253 {
            return Err(ApiError::invalid("name", "must be 1-253 characters"));
        }
        let ip: Ipv4Addr = host.private_ip.trim().parse().map_err(|_| {
            ApiError::invalid(
                "private_ip",
                format!("{:?} is not an IPv4 address", host.private_ip),
            )
        })?;
        let vxnet = self
            .vxnets
            .ordered()
            .into_iter()
            .find(|v| {
                v.router
                    .as_ref()
                    .and_then(|r| Cidr::parse(&r.ip_network, false).ok())
                    .is_some_and(|c| c.contains(ip))
            })
            .map(|v| (v.vxnet_id.clone(), v.vxnet_name.clone()));
        let nic = InstanceVxnet {
            vxnet_id: vxnet.as_ref().map(|v| v.0.clone()).unwrap_or_default(),
            vxnet_name: vxnet.map(|v| v.1).unwrap_or_default(),
            private_ip: ip.to_string(),
            nic_id: nic_id(),
        };
        let instance_type = host
            .instance_type
            .clone()
            .unwrap_or_else(|| "host".to_string());
        let existing = self
            .instances
            .values()
            .find(|i| i.adopted && i.instance_name == name)
            .map(|i| i.instance_id.clone());
        let id = existing.unwrap_or_else(|| new_id("i"));
        let seq = self.next_seq();
        let previous = self.instances.get(&id).cloned();
        let inst = Instance {
            instance_id: id.clone(),
            instance_name: name.to_string(),
            instance_type,
            status: "running".to_string(),
            vxnets: vec![nic],
            zone_id: zone.to_string(),
            create_time: previous
                .as_ref()
                .map(|p| p.create_time.clone())
                .unwrap_or_else(now_rfc3339),
            adopted: true,
            ..previous.unwrap_or_default()
        };
        self.instances.insert(&id, seq, inst.clone());
        Ok(inst)
    }

    /// Addresses in use on a vxnet (instances and internal LBs).
    pub fn used_ips(&self, vxnet_id: &str) -> BTreeSet<String> {
        let mut used: BTreeSet<String> = self
            .instances
            .values()
            .filter(|i| i.status != "terminated" && i.status != "ceased")
            .flat_map(|i| i.vxnets.iter())
            .filter(|n| n.vxnet_id == vxnet_id)
            .map(|n| n.private_ip.clone())
            .collect();
        for lb in self.lbs.values().filter(|lb| lb.vxnet_id == vxnet_id) {
            used.extend(lb.private_ips.iter().cloned());
        }
        used
    }

    /// The CIDR of a vxnet.
    pub fn vxnet_cidr(&self, vxnet_id: &str) -> ApiResult<Cidr> {
        let vx = self
            .vxnets
            .get(vxnet_id)
            .ok_or_else(|| ApiError::not_found("vxnet", vxnet_id))?;
        let net = vx
            .router
            .as_ref()
            .map(|r| r.ip_network.as_str())
            .unwrap_or_default();
        Cidr::parse(net, false).map_err(|e| {
            ApiError::internal(format!("vxnet [{vxnet_id}] has no usable network: {e}"))
        })
    }

    /// Picks a free address on the vxnet (or checks `wanted` is inside and free).
    pub fn allocate_private_ip(&self, vxnet_id: &str, wanted: Option<&str>) -> ApiResult<String> {
        let cidr = self.vxnet_cidr(vxnet_id)?;
        let used = self.used_ips(vxnet_id);
        if let Some(w) = wanted {
            let ip: Ipv4Addr = w.parse().map_err(|_| {
                ApiError::invalid("private_ip", format!("{w:?} is not an IPv4 address"))
            })?;
            let idx = u32::from(ip).wrapping_sub(u32::from(cidr.network));
            if !cidr.contains(ip) || idx < FIRST_HOST || idx as u64 + 1 >= cidr.size() {
                return Err(ApiError::invalid(
                    "private_ip",
                    format!("{w} is not a usable address of vxnet [{vxnet_id}] ({cidr})"),
                ));
            }
            if used.contains(w) {
                return Err(ApiError::exists(format!(
                    "private ip {w} is already in use on vxnet [{vxnet_id}]"
                )));
            }
            return Ok(w.to_string());
        }
        // Last address is broadcast.
        (FIRST_HOST..(cidr.size().saturating_sub(1) as u32))
            .filter_map(|n| cidr.nth(n))
            .map(|a| a.to_string())
            .find(|a| !used.contains(a))
            .ok_or_else(|| {
                ApiError::insufficient(format!(
                    "vxnet [{vxnet_id}] has no free address left in {cidr}"
                ))
            })
    }
}

/// A MAC-like NIC id (QingCloud shows NICs by MAC).
pub fn nic_id() -> String {
    let r = random_string(b"0123456789abcdef", 8);
    format!("52:54:{}:{}:{}:{}", &r[0..2], &r[2..4], &r[4..6], &r[6..8])
}

impl State {
    /// Removes every tag binding of a resource (it is gone).
    pub fn untag_resource(&mut self, resource_id: &str) {
        for key in self.tag_pairs.ids_where(|p| p.resource_id == resource_id) {
            self.tag_pairs.remove(&key);
        }
    }

    /// Removes a load balancer with its listeners, backends and tag bindings;
    /// its EIPs go back to `available` and its security group forgets it.
    pub fn remove_loadbalancer(&mut self, lb_id: &str) {
        for l in self.listeners.ids_where(|l| l.loadbalancer_id == lb_id) {
            self.listeners.remove(&l);
        }
        for b in self.backends.ids_where(|b| b.loadbalancer_id == lb_id) {
            self.backends.remove(&b);
        }
        for e in self
            .eips
            .ids_where(|e| e.resource.as_ref().is_some_and(|r| r.resource_id == lb_id))
        {
            if let Some(e) = self.eips.get_mut(&e) {
                e.status = "available".into();
                e.transition_status.clear();
                e.resource = None;
            }
        }
        for sg in self
            .sgs
            .ids_where(|s| s.resources.iter().any(|r| r.resource_id == lb_id))
        {
            if let Some(sg) = self.sgs.get_mut(&sg) {
                sg.resources.retain(|r| r.resource_id != lb_id);
            }
        }
        self.lbs.remove(lb_id);
        self.lb_generations.remove(lb_id);
        self.untag_resource(lb_id);
    }

    /// The configuration generation of an LB.
    pub fn lb_generation(&self, lb_id: &str) -> u64 {
        self.lb_generations.get(lb_id).copied().unwrap_or(0)
    }

    /// Records a configuration change of an LB (it is no longer applied).
    pub fn bump_lb(&mut self, lb_id: &str) {
        let next = self.lb_generation(lb_id) + 1;
        let seq = self.next_seq();
        self.lb_generations.insert(lb_id, seq, next);
        if let Some(lb) = self.lbs.get_mut(lb_id) {
            lb.is_applied = 0;
        }
    }
}
