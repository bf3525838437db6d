//! A TCP proxy on loopback that a test can cut (connections reset, port closed) or turn into a
//! black hole (connections stay open but nothing passes), to put a network fault between one
//! client and a server while other clients still reach the server directly.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    Blackhole,
}

pub struct TcpProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    mode: watch::Sender<Mode>,
    /// The accept loop and every connection's task.
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl TcpProxy {
    /// A proxy on a free loopback port that forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, _) = watch::channel(Mode::Forward);
        let proxy = TcpProxy {
            addr,
            upstream,
            mode,
            tasks: Arc::default(),
        };
        proxy.accept(listener);
        proxy
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn accept(&self, listener: TcpListener) {
        let (upstream, mode, tasks) = (self.upstream, self.mode.clone(), self.tasks.clone());
        let handle = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let task = tokio::spawn(serve(client, upstream, mode.subscribe()));
                tasks
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(task.abort_handle());
            }
        });
        self.tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(handle.abort_handle());
    }

    /// Resets every connection and closes the port (new connections are refused).
    pub fn cut(&self) {
        for task in self.tasks.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
            task.abort();
        }
    }

    /// Open connections stay open but carry nothing more; new ones are accepted and do the same.
    pub fn blackhole(&self) {
        self.mode.send_replace(Mode::Blackhole);
    }

    /// New connections are forwarded again; the ones the black hole holds stay silent (a client
    /// must notice on its own that they are dead, e.g. with keep-alive pings).
    pub fn heal(&self) {
        self.mode.send_replace(Mode::Forward);
    }

    /// Forwards again, on the same port (after [`cut`](Self::cut) or [`blackhole`](Self::blackhole)).
    pub async fn restore(&self) {
        self.cut();
        self.mode.send_replace(Mode::Forward);
        // The aborted accept loop drops its listener at its next poll: retry the bind briefly.
        for _ in 0..100 {
            if let Ok(listener) = TcpListener::bind(self.addr).await {
                self.accept(listener);
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("cannot bind the proxy's port {} again", self.addr);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

async fn serve(mut client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    if *mode.borrow() == Mode::Blackhole {
        // Hold the connection, say nothing.
        let _held = client;
        std::future::pending::<()>().await;
        return;
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = async { mode.wait_for(|mode| *mode == Mode::Blackhole).await.map(|_| ()) } => {
            // Both sockets stay open until the task is aborted; nothing passes.
            std::future::pending::<()>().await;
        }
    }
}
