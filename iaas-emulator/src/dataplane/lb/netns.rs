//! Creating sockets inside a network namespace.
//!
//! A socket belongs to the network namespace of the thread that created it,
//! for its whole life. So a namespace gets one long-lived helper thread that
//! has `setns`-ed into it and creates sockets on request; the sockets are then
//! handed back and used from the proxy's runtime like any other.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Mutex, mpsc};
use std::time::Duration;

use nix::sched::CloneFlags;
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

type Job = Box<dyn FnOnce() + Send>;

/// Where the proxy's sockets are created: the current namespace, or the
/// namespace of a helper thread.
#[derive(Debug)]
pub struct SocketFactory {
    /// Jobs for the helper thread; it exits when this sender is dropped.
    jobs: Option<Mutex<mpsc::Sender<Job>>>,
}

impl SocketFactory {
    /// Sockets in the current network namespace.
    pub fn current() -> Self {
        SocketFactory { jobs: None }
    }

    /// Sockets in the namespace at `path` (for example `/run/netns/NAME`).
    pub fn in_netns(path: &Path) -> io::Result<Self> {
        let file = File::open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<io::Result<()>>(1);
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name("lb-netns".to_string())
            .spawn(move || {
                // setns only moves this thread; the rest of the process stays put.
                if let Err(e) = nix::sched::setns(&file, CloneFlags::CLONE_NEWNET) {
                    let _ = ready_tx.send(Err(io::Error::other(format!("setns {shown}: {e}"))));
                    return;
                }
                drop(file);
                let _ = ready_tx.send(Ok(()));
                while let Ok(job) = rx.recv() {
                    job();
                }
            })?;
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("namespace helper thread died"))??;
        Ok(SocketFactory {
            jobs: Some(Mutex::new(tx)),
        })
    }

    fn sender(&self) -> Option<mpsc::Sender<Job>> {
        self.jobs
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Runs `f` in the namespace, blocking the caller (not for async code).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
        let Some(tx) = self.sender() else {
            return Ok(f());
        };
        let (rtx, rrx) = mpsc::sync_channel(1);
        tx.send(Box::new(move || {
            let _ = rtx.send(f());
        }))
        .map_err(|_| io::Error::other("namespace helper thread gone"))?;
        rrx.recv()
            .map_err(|_| io::Error::other("namespace helper thread dropped a job"))
    }

    /// Runs `f` in the namespace without blocking the async caller.
    pub async fn run_async<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        let Some(tx) = self.sender() else {
            return Ok(f());
        };
        let (rtx, rrx) = tokio::sync::oneshot::channel();
        tx.send(Box::new(move || {
            let _ = rtx.send(f());
        }))
        .map_err(|_| io::Error::other("namespace helper thread gone"))?;
        rrx.await
            .map_err(|_| io::Error::other("namespace helper thread dropped a job"))
    }

    /// Binds a listening TCP socket (std; convert inside a runtime context).
    pub fn bind_tcp(&self, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
        let l = self.run(move || std::net::TcpListener::bind(addr))??;
        l.set_nonblocking(true)?;
        Ok(l)
    }

    /// Binds a UDP socket (std; convert inside a runtime context).
    pub fn bind_udp(&self, addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
        let s = self.run(move || std::net::UdpSocket::bind(addr))??;
        s.set_nonblocking(true)?;
        Ok(s)
    }

    /// Dials a TCP backend from the namespace, giving up after `timeout`.
    pub async fn connect_tcp(&self, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        let socket = self
            .run_async(move || {
                if addr.is_ipv4() {
                    TcpSocket::new_v4()
                } else {
                    TcpSocket::new_v6()
                }
            })
            .await??;
        let stream = tokio::time::timeout(timeout, socket.connect(addr))
            .await
            .map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {addr}"))
            })??;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// A UDP socket in the namespace connected to `backend`.
    pub async fn udp_upstream(&self, backend: SocketAddr) -> io::Result<UdpSocket> {
        let local: SocketAddr = if backend.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let std_sock = self
            .run_async(move || std::net::UdpSocket::bind(local))
            .await??;
        std_sock.set_nonblocking(true)?;
        let sock = UdpSocket::from_std(std_sock)?;
        sock.connect(backend).await?;
        Ok(sock)
    }
}
