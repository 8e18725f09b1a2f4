//! The CNI commands: parse, act, answer with a result or an error JSON.

use std::net::IpAddr;

use serde_json::{Value, json};

use crate::config::{CNI_VERSION, Command, Env, NetConf, SUPPORTED_VERSIONS};
use crate::error::{CniError, CniResult, Code, nl_err};
use crate::ipam::{LeaseStore, Owner};
use crate::net;
use crate::netns::Netns;

/// Runs one invocation: `env` from the environment, `stdin` the network
/// configuration. Returns what to print on stdout on success.
pub fn run(env: &Env, stdin: &[u8]) -> CniResult<String> {
    if env.command == Command::Version {
        return Ok(
            json!({"cniVersion": CNI_VERSION, "supportedVersions": SUPPORTED_VERSIONS}).to_string(),
        );
    }
    let conf = NetConf::parse(stdin)?;
    match env.command {
        Command::Add => add(env, &conf),
        Command::Del => del(env, &conf).map(|()| String::new()),
        Command::Check => check(env, &conf).map(|()| String::new()),
        Command::Gc => gc(&conf).map(|()| String::new()),
        Command::Status => status(&conf).map(|()| String::new()),
        Command::Version => unreachable!("answered above"),
    }
}

/// A single-threaded runtime: every netlink socket is opened on this thread,
/// which is what lets a socket be opened inside another namespace.
fn runtime() -> CniResult<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| crate::error::io_err("start the netlink runtime", e))
}

/// Opens a netlink handle in the current namespace, driving it on the runtime.
fn connect() -> CniResult<rtnetlink::Handle> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| nl_err("open a netlink socket", e))?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Opens a netlink handle whose socket lives in `ns`.
fn connect_in(ns: &Netns) -> CniResult<rtnetlink::Handle> {
    let _inside = ns.enter()?;
    connect()
}

/// Names the step at which [`crash_point`] stops the plugin. Test-only.
pub const CRASH_POINT_ENV: &str = "CLOUDSUITE_CNI_TEST_CRASH_POINT";

/// A test-only crash point (crash-safety tests SIGKILL the plugin at a
/// known step). When [`CRASH_POINT_ENV`] equals `step`, the process stops
/// itself with SIGSTOP at that step; the test sees the stopped state and
/// kills it. The steps of ADD are `after-lease` (the lease file is written,
/// no interface exists) and `after-veth` (the veth pair exists, down, with
/// no address or route). Harmless in production: runtimes do not set the
/// variable, and a stopped process is what a crash there would leave anyway.
pub fn crash_point(step: &str) {
    if std::env::var_os(CRASH_POINT_ENV).is_some_and(|v| v == step) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
    }
}

fn add(env: &Env, conf: &NetConf) -> CniResult<String> {
    let netns_path = env.netns.as_deref().expect("validated: ADD has CNI_NETNS");
    let pod_ns = Netns::open(netns_path)?;
    let store = LeaseStore::open(&conf.lease_dir)?;
    let netns_text = netns_path.display().to_string();
    let ips = store.allocate(
        &conf.pools,
        &Owner {
            container_id: &env.container_id,
            ifname: &env.ifname,
            netns: &netns_text,
        },
    )?;
    crash_point("after-lease");
    let host_ifname = net::host_veth_name(&env.container_id, &env.ifname);
    let rt = runtime()?;
    let outcome = rt.block_on(async {
        let host = connect()?;
        let pod = connect_in(&pod_ns)?;
        // One look at the uplink serves both: the MTU unless configured,
        // the GSO/GRO limits unless bigTCP is off.
        let uplink = match (conf.mtu, conf.big_tcp) {
            (Some(_), false) => None,
            _ => Some(net::uplink(&host).await?),
        };
        let mtu = conf
            .mtu
            .or(uplink.map(|u| u.mtu))
            .unwrap_or(net::FALLBACK_MTU);
        // (The agent turns bigTCP off in the conflist while a tunnel is up
        // on the node: a link listing per ADD would cost about a millisecond.)
        let offload = uplink
            .filter(|_| conf.big_tcp)
            .map(|u| u.offload)
            .unwrap_or_default();
        let setup = net::setup(
            &host,
            &pod,
            &pod_ns,
            &host_ifname,
            &env.ifname,
            &ips,
            mtu,
            offload,
        );
        match setup.await {
            Ok(a) => Ok(a),
            Err(e) => {
                // Undo: nothing of a failed ADD may stay behind.
                let _ = net::teardown(&host, &host_ifname).await;
                Err(e)
            }
        }
    });
    let attached = match outcome {
        Ok(a) => a,
        Err(e) => {
            let _ = store.release(&env.container_id, &env.ifname);
            return Err(e);
        }
    };
    if conf.ip_masq
        && let Err(e) = crate::masq::ensure(conf)
    {
        // The pod would reach the outside with an unroutable source: undo.
        let _ = rt.block_on(async { net::teardown(&connect()?, &host_ifname).await });
        let _ = store.release(&env.container_id, &env.ifname);
        return Err(e);
    }
    Ok(result_json(conf, env, &ips, &attached).to_string())
}

/// The ADD result in the configuration's version.
fn result_json(conf: &NetConf, env: &Env, ips: &[IpAddr], a: &net::Attached) -> Value {
    let legacy = conf.cni_version.starts_with("0.");
    let ipcs: Vec<Value> = ips
        .iter()
        .map(|ip| {
            let mut ipc = json!({
                "address": format!("{ip}/{}", net::host_prefix(*ip)),
                "gateway": net::gateway_for(*ip).to_string(),
                "interface": 1,
            });
            if legacy {
                ipc["version"] = json!(if ip.is_ipv4() { "4" } else { "6" });
            }
            ipc
        })
        .collect();
    let routes: Vec<Value> = ips
        .iter()
        .map(|ip| {
            let dst = if ip.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
            json!({"dst": dst, "gw": net::gateway_for(*ip).to_string()})
        })
        .collect();
    json!({
        "cniVersion": conf.cni_version,
        "interfaces": [
            {"name": a.host_ifname, "mac": a.host_mac, "mtu": a.mtu},
            {"name": env.ifname, "mac": a.pod_mac, "mtu": a.mtu,
             "sandbox": env.netns.as_ref().map(|p| p.display().to_string()).unwrap_or_default()}
        ],
        "ips": ipcs,
        "routes": routes,
        "dns": conf.dns.clone().unwrap_or_else(|| json!({})),
    })
}

fn del(env: &Env, conf: &NetConf) -> CniResult<()> {
    // The pod's namespace is never entered: the host end is enough to cut
    // the attachment, so a vanished namespace changes nothing.
    let host_ifname = net::host_veth_name(&env.container_id, &env.ifname);
    let rt = runtime()?;
    let index = rt.block_on(async {
        let host = connect()?;
        net::detach(&host, &host_ifname).await
    })?;
    let store = LeaseStore::open(&conf.lease_dir)?;
    store.release(&env.container_id, &env.ifname)?;
    if let Some(index) = index
        && !spawn_reaper(index)
    {
        // No helper process: pay the kernel's unregister wait here instead.
        rt.block_on(async {
            let host = connect()?;
            net::delete_link(&host, index).await
        })?;
    }
    Ok(())
}

/// The argument that turns the plugin binary into the link reaper.
pub const REAP_ARG: &str = "--reap-link";

/// Starts a detached copy of this binary that deletes the (already down)
/// link `index` in this namespace; the runtime does not wait for it. Its
/// stdio is null so the runtime's read of our stdout ends when we exit.
fn spawn_reaper(index: u32) -> bool {
    let Ok(exe) = std::env::current_exe() else {
        return false;
    };
    std::process::Command::new(exe)
        .arg(REAP_ARG)
        .arg(index.to_string())
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}

/// The reaper's work: delete link `index` in the current namespace.
pub fn reap_link(index: u32) -> CniResult<()> {
    runtime()?.block_on(async {
        let host = connect()?;
        net::delete_link(&host, index).await
    })
}

fn check(env: &Env, conf: &NetConf) -> CniResult<()> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            Code::InvalidConfig,
            "CHECK needs prevResult in the configuration",
        )
    })?;
    let store = LeaseStore::open(&conf.lease_dir)?;
    let mut leased = store.find(&env.container_id, &env.ifname)?;
    let mut diffs = Vec::new();
    let mut prev_ips: Vec<IpAddr> = prev["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["address"].as_str())
        .filter_map(|a| a.split('/').next()?.parse().ok())
        .collect();
    if prev_ips.is_empty() {
        return Err(CniError::new(
            Code::InvalidConfig,
            "prevResult.ips has no address",
        ));
    }
    prev_ips.sort_by_key(|ip| (ip.is_ipv6(), *ip));
    leased.sort_by_key(|ip| (ip.is_ipv6(), *ip));
    if leased != prev_ips {
        let show = |v: &[IpAddr]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        diffs.push(format!(
            "leases are [{}], prevResult says [{}]",
            show(&leased),
            show(&prev_ips)
        ));
    }
    let pod_ns = Netns::open(
        env.netns
            .as_deref()
            .expect("validated: CHECK has CNI_NETNS"),
    )?;
    let host_ifname = net::host_veth_name(&env.container_id, &env.ifname);
    let rt = runtime()?;
    let live = rt.block_on(async {
        let host = connect()?;
        let pod = connect_in(&pod_ns)?;
        net::inspect(&host, &pod, &host_ifname, &env.ifname, &prev_ips).await
    })?;
    diffs.extend(live);
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            Code::CheckFailed,
            "the container's network differs from prevResult",
        )
        .with_details(diffs.join("; ")))
    }
}

fn gc(conf: &NetConf) -> CniResult<()> {
    let valid = conf.valid_attachments.clone().unwrap_or_default();
    let store = LeaseStore::open(&conf.lease_dir)?;
    let freed = store.gc(&valid)?;
    if freed.is_empty() {
        return Ok(());
    }
    // Interfaces of reclaimed attachments whose DEL never came.
    let rt = runtime()?;
    rt.block_on(async {
        let host = connect()?;
        for l in freed.iter().filter(|l| !l.container_id.is_empty()) {
            net::teardown(&host, &net::host_veth_name(&l.container_id, &l.ifname)).await?;
        }
        Ok(())
    })
}

fn status(conf: &NetConf) -> CniResult<()> {
    if conf.pools.is_empty() {
        return Err(CniError::new(
            Code::NotAvailable,
            "no pod CIDR is known for this node yet",
        ));
    }
    let store = LeaseStore::open(&conf.lease_dir)?;
    if !store.can_allocate(&conf.pools)? {
        return Err(CniError::new(
            Code::NotAvailable,
            "the node's pod range has no free address",
        ));
    }
    Ok(())
}
