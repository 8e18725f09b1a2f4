//! The walk's IaaS part: the shared client drives every resource kind of the
//! emulator over signed HTTP, waits for the jobs, and tears down everything
//! it created, then checks that nothing leaked.

use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use iaas_client::Client;
use iaas_client::actions::*;
use iaas_client::model::{ResourceTagPair, STATIC_TYPE_ROUTE};

use crate::walk::Walk;

/// Prefix of every resource name the walk creates, to find leftovers.
pub const WALK_PREFIX: &str = "walk-";

/// What the walk created and must remove.
#[derive(Debug, Default)]
struct Created {
    instance: Option<String>,
    volumes: Vec<String>,
    snapshots: Vec<String>,
    eip: Option<String>,
    security_group: Option<String>,
    loadbalancer: Option<String>,
    certificate: Option<String>,
    policy: Option<String>,
    tag: Option<String>,
    statics: Vec<String>,
}

const JOB_TIMEOUT: Option<Duration> = Some(Duration::from_secs(60));

/// Runs every IaaS step; returns whether all passed.
pub async fn run(walk: &mut Walk, client: &Client) -> bool {
    let mut c = Created::default();

    walk.section("IaaS: instances and network");
    let ok_instances = walk
        .step("describe seeded instances, vxnet, router", seeded(client))
        .await;
    walk.step("run, stop, start an instance", instances(client, &mut c))
        .await;
    if ok_instances {
        walk.step(
            "route static (pod CIDR via a node) applied with UpdateRouters",
            routes(client, &mut c),
        )
        .await;
    }

    walk.section("IaaS: volumes and snapshots");
    walk.step(
        "create 2 volumes (one job each), describe",
        create_volumes(client, &mut c),
    )
    .await;
    walk.step("attach to an instance, device reported", attach(client, &c))
        .await;
    walk.step("resize while attached (grow only)", resize(client, &c))
        .await;
    walk.step(
        "snapshot, restore into a new volume, clone",
        snapshots(client, &mut c),
    )
    .await;
    walk.step(
        "detach, delete volumes and snapshots",
        delete_volumes(client, &mut c),
    )
    .await;

    walk.section("IaaS: load balancers");
    walk.step(
        "allocate EIP, create security group with rules",
        eip_and_sg(client, &mut c),
    )
    .await;
    walk.step(
        "create LB on the EIP, tcp + https listeners, backends",
        loadbalancer(client, &mut c),
    )
    .await;
    walk.step(
        "L7 policy with domain and url rules, apply",
        policy(client, &mut c),
    )
    .await;
    walk.step(
        "delete LB in order, release EIP, delete SG and certificate",
        delete_lb(client, &mut c),
    )
    .await;

    walk.section("IaaS: tags and jobs");
    walk.step(
        "tag a resource, filter by tag, untag, delete tag",
        tags(client, &mut c),
    )
    .await;
    walk.step("paging walks every job", jobs(client)).await;

    walk.section("IaaS: teardown");
    walk.step("terminate the walk's instance", terminate(client, &mut c))
        .await;
    walk.step(
        "leak check: nothing the walk created remains",
        leak_check(client),
    )
    .await;
    walk.all_passed()
}

fn name(what: &str) -> String {
    format!("{WALK_PREFIX}{what}")
}

async fn seeded(client: &Client) -> anyhow::Result<String> {
    let instances = client
        .describe_instances_all(&DescribeInstances::default())
        .await?;
    let running = instances.iter().filter(|i| i.status == "running").count();
    ensure!(
        running >= 2,
        "expected at least 2 running seeded instances, found {running}"
    );
    let vxnets = client
        .describe_vxnets_all(&DescribeVxnets {
            verbose: true,
            ..Default::default()
        })
        .await?;
    let vxnet = vxnets.first().context("no vxnet seeded")?;
    let router = vxnet
        .router
        .as_ref()
        .context("seeded vxnet has no router")?;
    Ok(format!(
        "{running} instances running on {} ({}) behind {}",
        vxnet.vxnet_id, router.ip_network, router.router_id
    ))
}

async fn instances(client: &Client, c: &mut Created) -> anyhow::Result<String> {
    let vxnet = client
        .describe_vxnets_all(&DescribeVxnets::default())
        .await?;
    let vxnet = vxnet.first().context("no vxnet")?.vxnet_id.clone();
    let out = client
        .run_instances(&RunInstances {
            instance_name: Some(name("node")),
            instance_type: Some("c1m2".into()),
            count: Some(1),
            vxnets: vec![vxnet],
            ..Default::default()
        })
        .await?;
    let id = out
        .instances
        .first()
        .context("RunInstances returned no id")?
        .clone();
    c.instance = Some(id.clone());
    client.wait_job(&out.job_id, JOB_TIMEOUT).await?;
    let job = client.stop_instances(&StopInstances::new([&id])).await?;
    client.wait_job(&job.job_id, JOB_TIMEOUT).await?;
    expect_instance_status(client, &id, "stopped").await?;
    let job = client.start_instances(&StartInstances::new([&id])).await?;
    client.wait_job(&job.job_id, JOB_TIMEOUT).await?;
    let inst = expect_instance_status(client, &id, "running").await?;
    let ip = inst
        .vxnets
        .first()
        .map(|v| v.private_ip.clone())
        .unwrap_or_default();
    ensure!(!ip.is_empty(), "instance {id} has no private IP");
    Ok(format!("{id} running at {ip} after stop/start"))
}

async fn expect_instance_status(
    client: &Client,
    id: &str,
    status: &str,
) -> anyhow::Result<iaas_client::model::Instance> {
    let page = client
        .describe_instances(&DescribeInstances {
            instances: vec![id.to_string()],
            ..Default::default()
        })
        .await?;
    let inst = page
        .items
        .into_iter()
        .next()
        .with_context(|| format!("instance {id} not found"))?;
    ensure!(
        inst.status == status,
        "instance {id} is {}, expected {status}",
        inst.status
    );
    Ok(inst)
}

async fn routes(client: &Client, c: &mut Created) -> anyhow::Result<String> {
    let vxnets = client
        .describe_vxnets_all(&DescribeVxnets::default())
        .await?;
    let vxnet = vxnets.first().context("no vxnet")?;
    let router = vxnet
        .router
        .as_ref()
        .context("no router")?
        .router_id
        .clone();
    let instances = client
        .describe_instances_all(&DescribeInstances {
            status: vec!["running".into()],
            ..Default::default()
        })
        .await?;
    let node = instances.first().context("no running instance")?;
    let next_hop = node
        .vxnets
        .first()
        .context("instance without NIC")?
        .private_ip
        .clone();
    let out = client
        .add_router_statics(&AddRouterStatics {
            router: router.clone(),
            vxnet: Some(vxnet.vxnet_id.clone()),
            statics: vec![RouterStaticSpec::route(
                "10.244.1.0/24",
                next_hop.clone(),
                Some(name("route")),
            )],
        })
        .await?;
    c.statics = out.router_statics.clone();
    let job = client
        .update_routers(&UpdateRouters::new([&router]))
        .await?;
    client.wait_job(&job.job_id, JOB_TIMEOUT).await?;
    let statics = client
        .describe_router_statics_all(&DescribeRouterStatics {
            router: Some(router.clone()),
            static_type: Some(STATIC_TYPE_ROUTE),
            ..Default::default()
        })
        .await?;
    let ours = statics
        .iter()
        .find(|s| c.statics.contains(&s.router_static_id))
        .context("route static not listed")?;
    ensure!(
        ours.is_applied == 1,
        "route static not applied after UpdateRouters"
    );
    // Remove it again: routes are owned by the route controller, not the walk.
    client
        .delete_router_statics(&DeleteRouterStatics::new(c.statics.clone()))
        .await?;
    let job = client
        .update_routers(&UpdateRouters::new([&router]))
        .await?;
    client.wait_job(&job.job_id, JOB_TIMEOUT).await?;
    c.statics.clear();
    Ok(format!(
        "10.244.1.0/24 via {next_hop} on {router}, applied then removed"
    ))
}

async fn walk_instance(client: &Client, c: &Created) -> anyhow::Result<String> {
    if let Some(id) = &c.instance {
        return Ok(id.clone());
    }
    let instances = client
        .describe_instances_all(&DescribeInstances {
            status: vec!["running".into()],
            ..Default::default()
        })
        .await?;
    Ok(instances
        .first()
        .context("no running instance")?
        .instance_id
        .clone())
}

async fn create_volumes(client: &Client, c: &mut Created) -> anyhow::Result<String> {
    let mut jobs = Vec::new();
    for i in 1..=2 {
        let out = client
            .create_volumes(&CreateVolumes {
                size: 10,
                volume_name: Some(name(&format!("vol-{i}"))),
                volume_type: Some(0),
                count: Some(1),
            })
            .await?;
        c.volumes.extend(out.volumes.iter().cloned());
        jobs.push(out.job_id);
    }
    client.wait_jobs(&jobs, JOB_TIMEOUT).await?;
    let vols = client
        .describe_volumes_all(&DescribeVolumes {
            volumes: c.volumes.clone(),
            ..Default::default()
        })
        .await?;
    ensure!(vols.len() == 2, "expected 2 volumes, got {}", vols.len());
    for v in &vols {
        ensure!(v.status == "available", "{} is {}", v.volume_id, v.status);
    }
    Ok(format!("{} available", c.volumes.join(", ")))
}

async fn attach(client: &Client, c: &Created) -> anyhow::Result<String> {
    let instance = walk_instance(client, c).await?;
    let vol = c.volumes.first().context("no volume")?.clone();
    let job = client
        .attach_volumes(&AttachVolumes {
            volumes: vec![vol.clone()],
            instance: instance.clone(),
        })
        .await?;
    client.wait_job(&job.job_id, JOB_TIMEOUT).await?;
    let v = one_volume(client, &vol).await?;
    ensure!(v.status == "in-use", "{vol} is {} after attach", v.status);
    let att = v.instance.context("attached volume has no instance")?;
    ensure!(
        att.instance_id == instance,
        "attached to {} not {instance}",
        att.instance_id
    );
    ensure!(!att.device.is_empty(), "no device reported");
    // Attaching again to the same instance is refused (wrong state), not duplicated.
    let again = client
        .attach_volumes(&AttachVolumes {
            volumes: vec![vol.clone()],
            instance: instance.clone(),
        })
        .await;
    ensure!(
        again.is_err(),
        "second attach of an in-use volume was accepted"
    );
    Ok(format!("{vol} on {instance} as {}", att.device))
}

async fn one_volume(client: &Client, id: &str) -> anyhow::Result<iaas_client::model::Volume> {
    let page = client
        .describe_volumes(&DescribeVolumes {
            volumes: vec![id.to_string()],
            ..Default::default()
        })
        .await?;
    page.items
        .into_iter()
        .next()
        .with_context(|| format!("volume {id} not found"))
}

async fn resize(client: &Client, c: &Created) -> anyhow::Result<String> {
    let vol = c.volumes.first().context("no volume")?.clone();
    let job = client
        .resize_volumes(&ResizeVolumes {
            volumes: vec![vol.clone()],
            size: 20,
        })
        .await?;
    client.wait_job(&job.job_id, JOB_TIMEOUT).await?;
    let v = one_volume(client, &vol).await?;
    ensure!(v.size == 20, "size is {} after resize to 20", v.size);
    let shrink = client
        .resize_volumes(&ResizeVolumes {
            volumes: vec![vol.clone()],
            size: 10,
        })
        .await;
    ensure!(shrink.is_err(), "shrinking was accepted");
    Ok(format!("{vol} 10 -> 20 GB; shrink refused"))
}

async fn snapshots(client: &Client, c: &mut Created) -> anyhow::Result<String> {
    let vol = c.volumes.first().context("no volume")?.clone();
    let out = client
        .create_snapshots(&CreateSnapshots {
            resources: vec![vol.clone()],
            snapshot_name: Some(name("snap")),
            is_full: Some(true),
        })
        .await?;
    c.snapshots.extend(out.snapshots.iter().cloned());
    client.wait_job(&out.job_id, JOB_TIMEOUT).await?;
    let snap = out.snapshots.first().context("no snapshot id")?.clone();
    let restored = client
        .create_volume_from_snapshot(&CreateVolumeFromSnapshot {
            snapshot: snap.clone(),
            volume_name: Some(name("restored")),
        })
        .await?;
    c.volumes.push(restored.volume_id.clone());
    client.wait_job(&restored.job_id, JOB_TIMEOUT).await?;
    let r = one_volume(client, &restored.volume_id).await?;
    ensure!(
        r.size == 20,
        "restored volume is {} GB, snapshot was of 20 GB",
        r.size
    );
    let src = c.volumes.get(1).context("no second volume")?.clone();
    let clone = client
        .clone_volumes(&CloneVolumes {
            volume: src.clone(),
            volume_name: Some(name("clone")),
            count: Some(1),
        })
        .await?;
    c.volumes.extend(clone.volumes.iter().cloned());
    client.wait_job(&clone.job_id, JOB_TIMEOUT).await?;
    Ok(format!(
        "{snap} of {vol} -> {}; clone of {src} -> {}",
        restored.volume_id,
        clone.volumes.join(",")
    ))
}

async fn delete_volumes(client: &Client, c: &mut Created) -> anyhow::Result<String> {
    let vols = client
        .describe_volumes_all(&DescribeVolumes {
            volumes: c.volumes.clone(),
            ..Default::default()
        })
        .await?;
    // Deleting an attached volume is refused: detach first (the order users get wrong).
    for v in vols.iter().filter(|v| v.status == "in-use") {
        let inst = v
            .instance
            .as_ref()
            .map(|i| i.instance_id.clone())
            .unwrap_or_default();
        let refused = client
            .delete_volumes(&DeleteVolumes::new([&v.volume_id]))
            .await;
        ensure!(
            refused.is_err(),
            "deleting in-use {} was accepted",
            v.volume_id
        );
        let job = client
            .detach_volumes(&DetachVolumes {
                volumes: vec![v.volume_id.clone()],
                instance: inst,
            })
            .await?;
        client.wait_job(&job.job_id, JOB_TIMEOUT).await?;
    }
    let job = client
        .delete_volumes(&DeleteVolumes::new(c.volumes.clone()))
        .await?;
    client.wait_job(&job.job_id, JOB_TIMEOUT).await?;
    let job = client
        .delete_snapshots(&DeleteSnapshots::new(c.snapshots.clone()))
        .await?;
    client.wait_job(&job.job_id, JOB_TIMEOUT).await?;
    let n = c.volumes.len() + c.snapshots.len();
    c.volumes.clear();
    c.snapshots.clear();
    Ok(format!("{n} volumes and snapshots deleted"))
}

async fn eip_and_sg(client: &Client, c: &mut Created) -> anyhow::Result<String> {
    let eips = client
        .allocate_eips(&AllocateEips {
            bandwidth: 10,
            count: Some(1),
            eip_name: Some(name("eip")),
        })
        .await?;
    let eip = eips.eips.first().context("no EIP allocated")?.clone();
    c.eip = Some(eip.clone());
    let sg = client
        .create_security_group(&CreateSecurityGroup {
            security_group_name: Some(name("sg")),
        })
        .await?;
    c.security_group = Some(sg.security_group_id.clone());
    client
        .add_security_group_rules(&AddSecurityGroupRules {
            security_group: sg.security_group_id.clone(),
            rules: vec![tcp_ingress(80, "0.0.0.0/0"), tcp_ingress(443, "10.0.0.0/8")],
        })
        .await?;
    let job = client
        .apply_security_group(&ApplySecurityGroup {
            security_group: sg.security_group_id.clone(),
            instances: vec![],
        })
        .await?;
    client.wait_job(&job.job_id, JOB_TIMEOUT).await?;
    let addr = client
        .describe_eips(&DescribeEips {
            eips: vec![eip.clone()],
            ..Default::default()
        })
        .await?;
    let addr = addr
        .items
        .first()
        .context("EIP not listed")?
        .eip_addr
        .clone();
    Ok(format!(
        "{eip} ({addr}), {} with 2 rules",
        sg.security_group_id
    ))
}

fn tcp_ingress(port: u16, source: &str) -> SecurityGroupRuleSpec {
    SecurityGroupRuleSpec {
        protocol: "tcp".into(),
        priority: 10,
        action: Some("accept".into()),
        direction: Some(0),
        val1: Some(port.to_string()),
        val2: Some(port.to_string()),
        val3: Some(source.to_string()),
        security_group_rule_name: Some(name("rule")),
    }
}

async fn loadbalancer(client: &Client, c: &mut Created) -> anyhow::Result<String> {
    let eip = c.eip.clone().context("no EIP")?;
    let out = client
        .create_load_balancer(&CreateLoadBalancer {
            eips: vec![eip.clone()],
            loadbalancer_name: Some(name("lb")),
            loadbalancer_type: Some(0),
            security_group: c.security_group.clone(),
            ..Default::default()
        })
        .await?;
    c.loadbalancer = Some(out.loadbalancer_id.clone());
    client.wait_job(&out.job_id, JOB_TIMEOUT).await?;
    let lb = out.loadbalancer_id.clone();

    let key = rcgen::generate_simple_self_signed(vec!["walk.example.com".to_string()])?;
    let cert = client
        .create_server_certificate(&CreateServerCertificate {
            server_certificate_name: Some(name("cert")),
            certificate_content: key.cert.pem(),
            private_key: key.signing_key.serialize_pem(),
        })
        .await?;
    c.certificate = Some(cert.server_certificate_id.clone());

    let listeners = client
        .add_load_balancer_listeners(&AddLoadBalancerListeners {
            loadbalancer: lb.clone(),
            listeners: vec![
                ListenerSpec {
                    listener_port: 80,
                    listener_protocol: "tcp".into(),
                    backend_protocol: Some("tcp".into()),
                    balance_mode: Some("roundrobin".into()),
                    healthy_check_method: Some("tcp".into()),
                    healthy_check_option: Some("10|5|2|5".into()),
                    ..Default::default()
                },
                ListenerSpec {
                    listener_port: 443,
                    listener_protocol: "https".into(),
                    backend_protocol: Some("http".into()),
                    balance_mode: Some("leastconn".into()),
                    server_certificate_id: Some(cert.server_certificate_id.clone()),
                    forwardfor: Some(1),
                    ..Default::default()
                },
            ],
        })
        .await?;
    ensure!(
        listeners.loadbalancer_listeners.len() == 2,
        "expected 2 listener ids"
    );
    let instances = client
        .describe_instances_all(&DescribeInstances {
            status: vec!["running".into()],
            ..Default::default()
        })
        .await?;
    let backends: Vec<BackendSpec> = instances
        .iter()
        .take(2)
        .map(|i| BackendSpec {
            resource_id: i.instance_id.clone(),
            port: 30080,
            weight: Some(10),
            ..Default::default()
        })
        .collect();
    for l in &listeners.loadbalancer_listeners {
        client
            .add_load_balancer_backends(&AddLoadBalancerBackends {
                loadbalancer_listener: l.clone(),
                backends: backends.clone(),
            })
            .await?;
    }
    let before = client
        .describe_load_balancers(&DescribeLoadBalancers {
            loadbalancers: vec![lb.clone()],
            ..Default::default()
        })
        .await?;
    ensure!(
        before.items.first().map(|l| l.is_applied) == Some(0),
        "changes should be pending before UpdateLoadBalancers"
    );
    let job = client
        .update_load_balancers(&UpdateLoadBalancers::new([&lb]))
        .await?;
    client.wait_job(&job.job_id, JOB_TIMEOUT).await?;
    let after = client
        .describe_load_balancers(&DescribeLoadBalancers {
            loadbalancers: vec![lb.clone()],
            verbose: true,
            ..Default::default()
        })
        .await?;
    let l = after.items.first().context("LB not listed")?;
    ensure!(
        l.status == "active" && l.is_applied == 1,
        "LB is {} applied={}",
        l.status,
        l.is_applied
    );
    ensure!(
        l.listeners.len() == 2,
        "verbose describe shows {} listeners",
        l.listeners.len()
    );
    let addr = l
        .eips
        .first()
        .map(|e| e.eip_addr.clone())
        .unwrap_or_default();
    Ok(format!(
        "{lb} active on {addr}: 2 listeners x {} backends",
        backends.len()
    ))
}

async fn policy(client: &Client, c: &mut Created) -> anyhow::Result<String> {
    let p = client
        .create_load_balancer_policy(&CreateLoadBalancerPolicy {
            loadbalancer_policy_name: Some(name("policy")),
            operator: Some("and".into()),
        })
        .await?;
    c.policy = Some(p.loadbalancer_policy_id.clone());
    let rules = client
        .add_load_balancer_policy_rules(&AddLoadBalancerPolicyRules {
            loadbalancer_policy: p.loadbalancer_policy_id.clone(),
            rules: vec![
                PolicyRuleSpec {
                    rule_type: "domain".into(),
                    val: "walk.example.com".into(),
                    ..Default::default()
                },
                PolicyRuleSpec {
                    rule_type: "url".into(),
                    val: "/api".into(),
                    ..Default::default()
                },
            ],
        })
        .await?;
    let job = client
        .apply_load_balancer_policy(&ApplyLoadBalancerPolicy {
            loadbalancer_policy: p.loadbalancer_policy_id.clone(),
        })
        .await?;
    client.wait_job(&job.job_id, JOB_TIMEOUT).await?;
    let listed = client
        .describe_load_balancer_policy_rules_all(&DescribeLoadBalancerPolicyRules {
            loadbalancer_policy: Some(p.loadbalancer_policy_id.clone()),
            ..Default::default()
        })
        .await?;
    ensure!(listed.len() == 2, "policy lists {} rules", listed.len());
    Ok(format!(
        "{} with {} rules",
        p.loadbalancer_policy_id,
        rules.loadbalancer_policy_rules.len()
    ))
}

async fn delete_lb(client: &Client, c: &mut Created) -> anyhow::Result<String> {
    let lb = c.loadbalancer.clone().context("no LB")?;
    // The EIP cannot be released while the LB holds it.
    if let Some(eip) = &c.eip {
        let refused = client.release_eips(&ReleaseEips::new([eip])).await;
        ensure!(refused.is_err(), "releasing an associated EIP was accepted");
    }
    let listeners = client
        .describe_load_balancer_listeners_all(&DescribeLoadBalancerListeners {
            loadbalancer: Some(lb.clone()),
            ..Default::default()
        })
        .await?;
    let backends = client
        .describe_load_balancer_backends_all(&DescribeLoadBalancerBackends {
            loadbalancer: Some(lb.clone()),
            ..Default::default()
        })
        .await?;
    if !backends.is_empty() {
        client
            .delete_load_balancer_backends(&DeleteLoadBalancerBackends::new(
                backends.iter().map(|b| b.loadbalancer_backend_id.clone()),
            ))
            .await?;
    }
    if !listeners.is_empty() {
        client
            .delete_load_balancer_listeners(&DeleteLoadBalancerListeners::new(
                listeners.iter().map(|l| l.loadbalancer_listener_id.clone()),
            ))
            .await?;
    }
    let job = client
        .delete_load_balancers(&DeleteLoadBalancers::new([&lb]))
        .await?;
    client.wait_job(&job.job_id, JOB_TIMEOUT).await?;
    c.loadbalancer = None;
    if let Some(p) = c.policy.take() {
        client
            .delete_load_balancer_policies(&DeleteLoadBalancerPolicies::new([p]))
            .await?;
    }
    if let Some(eip) = c.eip.take() {
        let job = client.release_eips(&ReleaseEips::new([eip])).await?;
        client.wait_job(&job.job_id, JOB_TIMEOUT).await?;
    }
    if let Some(sg) = c.security_group.take() {
        client
            .delete_security_groups(&DeleteSecurityGroups::new([sg]))
            .await?;
    }
    if let Some(cert) = c.certificate.take() {
        client
            .delete_server_certificates(&DeleteServerCertificates::new([cert]))
            .await?;
    }
    Ok(format!(
        "{} backends, {} listeners, LB, EIP, SG, certificate",
        backends.len(),
        listeners.len()
    ))
}

async fn tags(client: &Client, c: &mut Created) -> anyhow::Result<String> {
    let tag = client
        .create_tag(&CreateTag {
            tag_name: name("tag"),
            description: Some("walk".into()),
        })
        .await?;
    c.tag = Some(tag.tag_id.clone());
    let vol = client
        .create_volumes(&CreateVolumes {
            size: 10,
            volume_name: Some(name("tagged")),
            volume_type: Some(0),
            count: Some(1),
        })
        .await?;
    c.volumes.extend(vol.volumes.iter().cloned());
    client.wait_job(&vol.job_id, JOB_TIMEOUT).await?;
    let vol_id = vol.volumes.first().context("no volume")?.clone();
    let pair = ResourceTagPair {
        tag_id: tag.tag_id.clone(),
        resource_type: "volume".into(),
        resource_id: vol_id.clone(),
    };
    client
        .attach_tags(&AttachTags {
            resource_tag_pairs: vec![pair.clone()],
        })
        .await?;
    let tagged = client
        .describe_volumes_all(&DescribeVolumes {
            tags: vec![tag.tag_id.clone()],
            ..Default::default()
        })
        .await?;
    ensure!(
        tagged.len() == 1 && tagged[0].volume_id == vol_id,
        "tag filter returned {} volumes",
        tagged.len()
    );
    ensure!(
        tagged[0].tags.iter().any(|t| t.tag_id == tag.tag_id),
        "volume does not list its tag"
    );
    client
        .detach_tags(&DetachTags {
            resource_tag_pairs: vec![pair],
        })
        .await?;
    let tagged = client
        .describe_volumes_all(&DescribeVolumes {
            tags: vec![tag.tag_id.clone()],
            ..Default::default()
        })
        .await?;
    ensure!(tagged.is_empty(), "volume still tagged after DetachTags");
    client.delete_tags(&DeleteTags::new([&tag.tag_id])).await?;
    c.tag = None;
    let job = client
        .delete_volumes(&DeleteVolumes::new([&vol_id]))
        .await?;
    client.wait_job(&job.job_id, JOB_TIMEOUT).await?;
    c.volumes.retain(|v| v != &vol_id);
    Ok(format!(
        "{} on {vol_id}: filtered, untagged, deleted",
        tag.tag_id
    ))
}

async fn jobs(client: &Client) -> anyhow::Result<String> {
    let first = client
        .describe_jobs(&DescribeJobs {
            limit: Some(5),
            ..Default::default()
        })
        .await?;
    let all = client.describe_jobs_all(&DescribeJobs::default()).await?;
    ensure!(
        all.len() as u64 == first.total_count,
        "paging saw {} of {} jobs",
        all.len(),
        first.total_count
    );
    let failed = all.iter().filter(|j| j.status == "failed").count();
    let unfinished = all
        .iter()
        .filter(|j| j.status == "pending" || j.status == "working")
        .count();
    ensure!(unfinished == 0, "{unfinished} jobs still unfinished");
    Ok(format!(
        "{} jobs over {} pages of 5 ({} failed)",
        all.len(),
        all.len().div_ceil(5),
        failed
    ))
}

async fn terminate(client: &Client, c: &mut Created) -> anyhow::Result<String> {
    let Some(id) = c.instance.take() else {
        return Ok("no instance was created".into());
    };
    let job = client
        .terminate_instances(&TerminateInstances::new([&id]))
        .await?;
    client.wait_job(&job.job_id, JOB_TIMEOUT).await?;
    Ok(format!("{id} terminated"))
}

/// Live resources in the cloud, optionally only those whose name starts with
/// `prefix` (the walk's own); the seed (router, vxnet, instances, default
/// security group) is never listed, and instances only with a prefix.
async fn live_resources(client: &Client, prefix: Option<&str>) -> anyhow::Result<Vec<String>> {
    let search = prefix.map(str::to_string);
    let named = |name: &str| prefix.is_none_or(|p| name.starts_with(p));
    let live = |s: &str| !matches!(s, "deleted" | "ceased" | "released" | "terminated");
    let mut left = Vec::new();
    for v in client
        .describe_volumes_all(&DescribeVolumes {
            search_word: search.clone(),
            ..Default::default()
        })
        .await?
    {
        if live(&v.status) && named(&v.volume_name) {
            left.push(format!("volume {} ({})", v.volume_id, v.status));
        }
    }
    for s in client
        .describe_snapshots_all(&DescribeSnapshots {
            search_word: search.clone(),
            ..Default::default()
        })
        .await?
    {
        if live(&s.status) && named(&s.snapshot_name) {
            left.push(format!("snapshot {} ({})", s.snapshot_id, s.status));
        }
    }
    for l in client
        .describe_load_balancers_all(&DescribeLoadBalancers {
            search_word: search.clone(),
            ..Default::default()
        })
        .await?
    {
        if live(&l.status) && named(&l.loadbalancer_name) {
            left.push(format!("loadbalancer {} ({})", l.loadbalancer_id, l.status));
        }
    }
    for e in client
        .describe_eips_all(&DescribeEips {
            search_word: search.clone(),
            ..Default::default()
        })
        .await?
    {
        if live(&e.status) && named(&e.eip_name) {
            left.push(format!("eip {} ({})", e.eip_id, e.status));
        }
    }
    for g in client
        .describe_security_groups_all(&DescribeSecurityGroups {
            search_word: search.clone(),
            ..Default::default()
        })
        .await?
    {
        if g.is_default == 0 && named(&g.security_group_name) {
            left.push(format!("security group {}", g.security_group_id));
        }
    }
    for c in client
        .describe_server_certificates_all(&DescribeServerCertificates {
            search_word: search.clone(),
            ..Default::default()
        })
        .await?
    {
        if named(&c.server_certificate_name) {
            left.push(format!("server certificate {}", c.server_certificate_id));
        }
    }
    for p in client
        .describe_load_balancer_policies_all(&DescribeLoadBalancerPolicies::default())
        .await?
    {
        if named(&p.loadbalancer_policy_name) {
            left.push(format!("policy {}", p.loadbalancer_policy_id));
        }
    }
    for t in client
        .describe_tags_all(&DescribeTags {
            search_word: search.clone(),
            ..Default::default()
        })
        .await?
    {
        if named(&t.tag_name) {
            left.push(format!("tag {}", t.tag_id));
        }
    }
    for s in client
        .describe_router_statics_all(&DescribeRouterStatics::default())
        .await?
    {
        if named(&s.router_static_name) {
            left.push(format!("router static {}", s.router_static_id));
        }
    }
    if prefix.is_some() {
        for i in client
            .describe_instances_all(&DescribeInstances {
                search_word: search,
                ..Default::default()
            })
            .await?
        {
            if live(&i.status) && named(&i.instance_name) {
                left.push(format!("instance {} ({})", i.instance_id, i.status));
            }
        }
    }
    Ok(left)
}

/// Every live resource whose name starts with [`WALK_PREFIX`].
pub async fn leftovers(client: &Client) -> anyhow::Result<Vec<String>> {
    live_resources(client, Some(WALK_PREFIX)).await
}

async fn leak_check(client: &Client) -> anyhow::Result<String> {
    let left = leftovers(client).await?;
    if !left.is_empty() {
        bail!("{} resources leaked: {}", left.len(), left.join(", "));
    }
    Ok(
        "0 leaked (volumes, snapshots, LBs, EIPs, SGs, certificates, tags, statics, instances)"
            .into(),
    )
}

/// Every live resource in the cloud that is not part of the seed (the
/// router, vxnet, instances and default security group): what a finished
/// walk must leave empty.
pub async fn cloud_leftovers(client: &Client) -> anyhow::Result<Vec<String>> {
    live_resources(client, None).await
}

/// The walk's last step: the whole cloud is back to its seed.
pub async fn final_leak_check(client: &Client) -> anyhow::Result<String> {
    let left = cloud_leftovers(client).await?;
    if !left.is_empty() {
        bail!("{} resources leaked: {}", left.len(), left.join(", "));
    }
    Ok(
        "0 volumes, snapshots, LBs, EIPs, security groups, certificates, policies, tags, routes"
            .into(),
    )
}
