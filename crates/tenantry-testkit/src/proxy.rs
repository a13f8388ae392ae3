//! A fault-injecting TCP proxy: a real TCP hop between a client and a server that can be
//! switched at runtime to add latency, reset connections, swallow traffic or turn new
//! connections away.
//!
//! ```no_run
//! # fn demo(pg: &tenantry_testkit::TestCluster) {
//! use tenantry_testkit::proxy::{Fault, FaultProxy};
//! let proxy = FaultProxy::start(("127.0.0.1", pg.port())).unwrap();
//! // Register the server at `proxy.port()` instead of `pg.port()`, then:
//! proxy.set(Fault::Blackhole);
//! proxy.set(Fault::PassThrough);
//! # }
//! ```
//!
//! The proxy runs on a thread and runtime of its own, so a test that blocks its own
//! runtime (or has none) does not stall it. Each connection is driven by one task that
//! watches the fault: a switch applies to the connections already open as well as to new
//! ones (see [`Fault`] for how each one does). Dropping the proxy closes everything.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

/// What the proxy does to the traffic through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Every byte forwarded as it comes.
    PassThrough,
    /// Each chunk read is held this long before it is forwarded: `up` from the client to
    /// the server, `down` back.
    Latency { up: Duration, down: Duration },
    /// Every open connection is reset (RST on both sides) at the switch; a new one is
    /// reset once `after_bytes` bytes (both directions) have gone through it.
    Reset { after_bytes: u64 },
    /// Connections are accepted and read from, but nothing is forwarded or answered, in
    /// either direction (open ones too): the peer waits forever.
    Blackhole,
    /// New connections are closed at once (RST right after the accept), as a server
    /// that turns everyone away; open ones go on.
    Refuse,
}

/// A running proxy; stopped, with every connection through it closed, when dropped.
pub struct FaultProxy {
    port: u16,
    fault: watch::Sender<Fault>,
    shared: Arc<Counters>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct Counters {
    live: AtomicUsize,
    accepted: AtomicU64,
    resets: AtomicU64,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `target`, passing everything through.
    pub fn start(target: impl ToSocketAddrs) -> std::io::Result<Self> {
        let target = target
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("the target address resolves to nothing"))?;
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        std_listener.set_nonblocking(true)?;
        let port = std_listener.local_addr()?.port();
        let (fault, watched) = watch::channel(Fault::PassThrough);
        let shared = Arc::new(Counters::default());
        let (stop, stopped) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let counters = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{port}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("a tokio listener");
                    tokio::select! {
                        _ = accept_loop(listener, target, watched, counters) => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime ends every connection task, closing their sockets.
            })?;
        Ok(Self {
            port,
            fault,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The loopback port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Switches the fault; it applies at once to open connections and to new ones.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// The fault now in force.
    pub fn fault(&self) -> Fault {
        *self.fault.borrow()
    }

    /// Connections open through the proxy now.
    pub fn live(&self) -> usize {
        self.shared.live.load(Ordering::SeqCst)
    }

    /// Connections accepted since start, and those reset by the proxy.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.accepted.load(Ordering::SeqCst),
            self.shared.resets.load(Ordering::SeqCst),
        )
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    fault: watch::Receiver<Fault>,
    counters: Arc<Counters>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of descriptors, say: try again shortly.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        counters.accepted.fetch_add(1, Ordering::SeqCst);
        if *fault.borrow() == Fault::Refuse {
            counters.resets.fetch_add(1, Ordering::SeqCst);
            reset(&client);
            continue;
        }
        let (fault, counters) = (fault.clone(), counters.clone());
        tokio::spawn(async move {
            counters.live.fetch_add(1, Ordering::SeqCst);
            let was_reset = connection(client, target, fault).await;
            if was_reset {
                counters.resets.fetch_add(1, Ordering::SeqCst);
            }
            counters.live.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Closes a socket with RST rather than FIN: the peer sees "connection reset".
fn reset(socket: &TcpStream) {
    let _ = socket.set_zero_linger();
}

/// Drives one connection until either side closes it or the fault resets it; true when
/// the proxy reset it.
async fn connection(
    mut client: TcpStream,
    target: SocketAddr,
    mut fault: watch::Receiver<Fault>,
) -> bool {
    let mut server = match TcpStream::connect(target).await {
        Ok(s) => s,
        Err(_) => {
            reset(&client);
            return true;
        }
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    // The fault in force at the accept is not a switch made while this one was open.
    fault.borrow_and_update();
    let mut moved: u64 = 0;
    let mut up_buf = vec![0u8; 16 * 1024];
    let mut down_buf = vec![0u8; 16 * 1024];
    let was_reset = {
        let (mut client_rx, mut client_tx) = client.split();
        let (mut server_rx, mut server_tx) = server.split();
        loop {
            // A fault switched on while the connection was open applies to it now.
            let (n, up) = tokio::select! {
                changed = fault.changed() => {
                    if changed.is_err() {
                        break false;
                    }
                    if matches!(*fault.borrow_and_update(), Fault::Reset { .. }) {
                        break true;
                    }
                    continue;
                }
                read = client_rx.read(&mut up_buf) => (read, true),
                read = server_rx.read(&mut down_buf) => (read, false),
            };
            let n = match n {
                Ok(0) | Err(_) => break false,
                Ok(n) => n,
            };
            moved += n as u64;
            let now = *fault.borrow();
            let delay = match now {
                Fault::PassThrough | Fault::Refuse => Duration::ZERO,
                Fault::Latency { up: d, .. } if up => d,
                Fault::Latency { down: d, .. } => d,
                Fault::Reset { after_bytes } if moved > after_bytes => break true,
                Fault::Reset { .. } => Duration::ZERO,
                // Read, and never forwarded.
                Fault::Blackhole => continue,
            };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let written = if up {
                server_tx.write_all(&up_buf[..n]).await
            } else {
                client_tx.write_all(&down_buf[..n]).await
            };
            if written.is_err() {
                break false;
            }
        }
    };
    if was_reset {
        reset(&client);
        reset(&server);
    }
    was_reset
}

#[cfg(test)]
mod tests;
