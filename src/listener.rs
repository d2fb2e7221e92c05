//! The server's own listening sockets. Connections are accepted here and handed to gRPC with
//! `add_channel_from_fd`, so that a drain can stop taking connections while the server goes on
//! serving those it has: gRPC core's own listeners close only with the server's shutdown, and
//! from that moment core cancels every call that still arrives (see README, "Restarts").
//!
//! Each connection's descriptor is kept duplicated here, only to count the connections still
//! open: gRPC shuts a socket down both ways when it is done with it, which its duplicate shows as
//! a hang-up.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt as _;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use grpcio::Server;

/// A bound listening socket, not yet accepting.
pub enum Socket {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Socket {
    /// Binds `address`: host:port, or unix:/path (a stale socket file there is replaced).
    pub fn bind(address: &str) -> io::Result<Socket> {
        match address.strip_prefix("unix:") {
            Some(path) => {
                let path = PathBuf::from(path.trim_start_matches("//"));
                if std::fs::symlink_metadata(&path).is_ok_and(|metadata| metadata.file_type().is_socket()) {
                    std::fs::remove_file(&path)?;
                }
                Ok(Socket::Unix(UnixListener::bind(&path)?, path))
            }
            None => Ok(Socket::Tcp(TcpListener::bind(address)?)),
        }
    }

    /// The address as a client dials it: the port chosen for `:0`.
    pub fn address(&self) -> String {
        match self {
            Socket::Tcp(listener) => listener.local_addr().map_or_else(|_| "?".into(), |address| address.to_string()),
            Socket::Unix(_, path) => format!("unix:{}", path.display()),
        }
    }

    fn raw_fd(&self) -> RawFd {
        match self {
            Socket::Tcp(listener) => listener.as_raw_fd(),
            Socket::Unix(listener, _) => listener.as_raw_fd(),
        }
    }

    /// The next connection, ready for gRPC: non-blocking, and for TCP without Nagle's delay.
    fn accept(&self) -> io::Result<OwnedFd> {
        match self {
            Socket::Tcp(listener) => {
                let (stream, _) = listener.accept()?;
                stream.set_nodelay(true)?;
                stream.set_nonblocking(true)?;
                Ok(stream.into())
            }
            Socket::Unix(listener, _) => {
                let (stream, _) = listener.accept()?;
                stream.set_nonblocking(true)?;
                Ok(stream.into())
            }
        }
    }
}

/// The sockets, accepting on a thread each until closed.
pub struct Listeners {
    sockets: Vec<Arc<Socket>>,
    shared: Arc<Shared>,
}

struct Shared {
    closed: AtomicBool,
    /// A duplicate of each connection's descriptor.
    connections: Mutex<Vec<OwnedFd>>,
}

impl Listeners {
    /// Starts accepting on every socket; each connection goes to `server`, which must be started.
    pub fn accept(sockets: Vec<Socket>, server: Arc<Mutex<Server>>) -> Listeners {
        let shared = Arc::new(Shared { closed: AtomicBool::new(false), connections: Mutex::new(Vec::new()) });
        let sockets: Vec<Arc<Socket>> = sockets.into_iter().map(Arc::new).collect();
        for socket in &sockets {
            let (socket, shared, server) = (socket.clone(), shared.clone(), server.clone());
            std::thread::Builder::new()
                .name("accept".into())
                .spawn(move || shared.accept_on(&socket, &server))
                .expect("a thread starts");
        }
        Listeners { sockets, shared }
    }

    /// Stops taking connections: clients that try get refused and go to other replicas.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        for socket in &self.sockets {
            // Wakes the thread blocked in accept(2), which then sees `closed`.
            // SAFETY: shutdown(2) on a descriptor this struct owns; no memory is involved.
            unsafe { libc::shutdown(socket.raw_fd(), libc::SHUT_RDWR) };
            if let Socket::Unix(_, path) = &**socket {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// How many connections gRPC still has open.
    pub fn open_connections(&self) -> usize {
        let mut connections = self.shared.connections();
        prune(&mut connections);
        connections.len()
    }
}

impl Shared {
    fn accept_on(&self, socket: &Socket, server: &Mutex<Server>) {
        while !self.closed.load(Ordering::SeqCst) {
            let connection = match socket.accept() {
                Ok(connection) => connection,
                Err(_) if self.closed.load(Ordering::SeqCst) => break,
                Err(error) => {
                    // Out of descriptors, most likely: try again shortly rather than spin.
                    log::warn!("cannot accept a connection on {}: {error}", socket.address());
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let Ok(duplicate) = connection.try_clone() else {
                log::warn!("cannot duplicate a connection's descriptor: closing it");
                continue;
            };
            // Under the server's lock, so that the drain's shutdown cannot come in between.
            let mut server = server.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if self.closed.load(Ordering::SeqCst) {
                break;
            }
            let mut connections = self.connections();
            prune(&mut connections);
            connections.push(duplicate);
            drop(connections);
            // SAFETY: the descriptor is a connected, non-blocking stream socket that nothing else
            // uses from here on (the duplicate is only polled); gRPC owns and closes it.
            unsafe { server.add_channel_from_fd(connection.into_raw_fd()) };
        }
    }

    fn connections(&self) -> MutexGuard<'_, Vec<OwnedFd>> {
        self.connections.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Drops the duplicates of connections gRPC has shut down.
fn prune(connections: &mut Vec<OwnedFd>) {
    let mut polled: Vec<libc::pollfd> =
        connections.iter().map(|fd| libc::pollfd { fd: fd.as_raw_fd(), events: 0, revents: 0 }).collect();
    // SAFETY: `polled` is a valid array of that many pollfd; a zero timeout never blocks.
    let ready = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, 0) };
    if ready > 0 {
        let mut hung_up = polled.iter().map(|fd| fd.revents & (libc::POLLHUP | libc::POLLNVAL) != 0);
        connections.retain(|_| !hung_up.next().unwrap_or(false));
    }
}
