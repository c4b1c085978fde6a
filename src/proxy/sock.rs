//! TCP sockets as sluice drives them: each registered with tokio's reactor
//! once, as an `AsyncFd` from the start, so a connection costs one
//! `epoll_ctl` per socket (accepting or connecting with tokio's own types
//! and then moving to `AsyncFd` cost three). Accepted with accept4(2) ready
//! made non-blocking; connected non-blocking with `TCP_NODELAY` already set
//! (accepted sockets inherit it from their listener).

use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};

use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;

/// A connection's socket.
pub type Sock = AsyncFd<TcpStream>;
/// A listener's socket.
pub type Listening = AsyncFd<TcpListener>;

/// Registers a listening socket with the reactor.
pub fn register_listener(listener: TcpListener) -> io::Result<Listening> {
    // SAFETY: a std TcpListener owns its descriptor, which stays open and
    // the same for as long as the AsyncFd holds it.
    unsafe { AsyncFd::register(listener) }.map_err(io::Error::from)
}

fn register(stream: TcpStream) -> io::Result<Sock> {
    // SAFETY: a std TcpStream owns its descriptor, which stays open and the
    // same for as long as the AsyncFd holds it.
    unsafe { AsyncFd::register(stream) }.map_err(io::Error::from)
}

// The waits below poll readiness (`poll_*_ready`), which keeps the waker in
// the socket's own registration: no waiter stored in each future, so the
// futures of every connection's setup stay small.

/// The next connection on `listener`, waiting for one.
pub async fn accept(listener: &Listening) -> io::Result<(Sock, SocketAddr)> {
    loop {
        let mut ready = poll_fn(|cx| listener.poll_read_ready(cx)).await?;
        if let Ok(accepted) = ready.try_io(|l| accept4(l.get_ref())) {
            let (stream, peer) = accepted?;
            return Ok((register(stream)?, peer));
        }
    }
}

/// One accept4(2), the new socket non-blocking and close-on-exec.
fn accept4(listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
    // SAFETY: accept4 writes at most `len` bytes of address into the
    // storage SockAddr::try_init hands it, and sets `len` to what it wrote.
    let (fd, addr) = unsafe {
        SockAddr::try_init(|storage, len| {
            let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
            let fd = libc::accept4(listener.as_raw_fd(), storage.cast(), len, flags);
            if fd < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(fd)
            }
        })
    }?;
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let peer = addr
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "accepted a non-IP socket"))?;
    Ok((stream, peer))
}

/// A connection to `addr`, waiting until it is established or refused.
pub async fn connect(addr: SocketAddr) -> io::Result<Sock> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking(), None)?;
    // Best effort: a socket that cannot take options still forwards correctly.
    let _ = socket.set_tcp_nodelay(true);
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let sock = register(TcpStream::from(socket))?;
    // Writable once the handshake is over; whether it succeeded is the
    // socket's pending error.
    let _connected = poll_fn(|cx| sock.poll_write_ready(cx)).await?;
    match sock.get_ref().take_error()? {
        Some(e) => Err(e),
        None => Ok(sock),
    }
}

/// Reads what `sock` has, waiting for something: 0 at EOF.
pub async fn read_some(sock: &Sock, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut ready = poll_fn(|cx| sock.poll_read_ready(cx)).await?;
        if let Ok(read) = ready.try_io(|s| s.get_ref().read(buf)) {
            return read;
        }
    }
}

/// Writes all of `bytes` to `sock`, waiting for room as needed.
pub async fn write_all(sock: &Sock, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let mut ready = poll_fn(|cx| sock.poll_write_ready(cx)).await?;
        if let Ok(written) = ready.try_io(|s| s.get_ref().write(bytes)) {
            bytes = &bytes[written?..];
        }
    }
    Ok(())
}
