//! Faults to inject between a client and a server, on loopback: a TCP
//! proxy that can freeze (bytes stop flowing both ways and new connections
//! hang, as in a network partition or a stuck server) and thaw, or cut
//! every open connection. Tests point one client at [`FaultProxy::addr`]
//! and leave the others on the real address.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A loopback TCP proxy with a freeze switch.
pub struct FaultProxy {
    addr: SocketAddr,
    frozen: Arc<watch::Sender<bool>>,
    /// The token of the current connections; [`FaultProxy::cut`] cancels
    /// it and puts a fresh one in its place.
    cut: Arc<Mutex<CancellationToken>>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, _) = watch::channel(false);
        let frozen = Arc::new(tx);
        let cut = Arc::new(Mutex::new(CancellationToken::new()));
        let accept = tokio::spawn(accept_loop(listener, target, frozen.clone(), cut.clone()));
        Ok(FaultProxy {
            addr,
            frozen,
            cut,
            accept,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops every byte in both directions; new connections hang too.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Lets bytes flow again.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }

    /// Closes every open connection (new ones are accepted as usual).
    pub fn cut(&self) {
        if let Ok(mut c) = self.cut.lock() {
            c.cancel();
            *c = CancellationToken::new();
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    frozen: Arc<watch::Sender<bool>>,
    cut: Arc<Mutex<CancellationToken>>,
) {
    while let Ok((inbound, _)) = listener.accept().await {
        let frozen = frozen.subscribe();
        let Ok(token) = cut.lock().map(|t| t.clone()) else {
            return;
        };
        tokio::spawn(async move {
            let mut gate = frozen.clone();
            let connect = async {
                gate.wait_for(|f| !*f).await.ok()?;
                TcpStream::connect(target).await.ok()
            };
            let outbound = tokio::select! {
                o = connect => o,
                () = token.cancelled() => None,
            };
            let Some(outbound) = outbound else { return };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            tokio::select! {
                () = pump(ri, wo, frozen.clone()) => {}
                () = pump(ro, wi, frozen) => {}
                () = token.cancelled() => {}
            }
        });
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
