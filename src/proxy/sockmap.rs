//! The kernel data path (`data_path = "sockmap"`, Linux): a BPF program
//! hands every byte that arrives on one socket of a pair to the other
//! socket's send queue, so sluice is not woken per message. This module
//! owns the maps, the program (built here from its instructions: no BPF
//! toolchain needed) and the joining of a pair; `super::forward` keeps
//! polling the pair for what only the relay can do (EOF, errors, idle).
//!
//! Three maps, all keyed by socket cookie: `peers` (where a socket's bytes
//! go; no program on it), `hooked` (the program is attached here, so
//! inserting a socket is what starts redirecting its bytes) and
//! `redirected` (bytes the program moved per socket). Filling `peers`
//! before hooking either socket leaves no instant in which a hooked
//! socket's peer is unknown. The counts let the relay tell when the kernel
//! has delivered all of a side's bytes before it passes that side's EOF
//! on: the kernel sends redirected bytes from a work queue, and a FIN (or
//! a close) passed on earlier would cut them off.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::LazyLock;

use super::sock::Sock;

/// Pairs joined at once (two sockets each).
const MAX_PAIRS: u32 = 1 << 17;

// From <linux/bpf.h>.
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_SOCKHASH: u32 = 18;
const BPF_PROG_TYPE_SK_SKB: u32 = 14;
const BPF_SK_SKB_VERDICT: u32 = 38;
const BPF_F_NO_PREALLOC: u32 = 1;
const BPF_NOEXIST: u64 = 1;
const FUNC_MAP_LOOKUP_ELEM: i32 = 1;
const FUNC_GET_SOCKET_COOKIE: i32 = 46;
const FUNC_SK_REDIRECT_HASH: i32 = 72;
const SO_COOKIE: libc::c_int = 57;

/// The loaded program and its maps, once per process.
pub struct Redirector {
    /// Socket cookie → the socket its bytes go to.
    peers: OwnedFd,
    /// Socket cookie → the socket itself, once its bytes are redirected.
    hooked: OwnedFd,
    /// Socket cookie → bytes the program redirected from that socket.
    redirected: OwnedFd,
    _program: OwnedFd,
}

static REDIRECTOR: LazyLock<Result<Redirector, String>> = LazyLock::new(Redirector::load);

impl Redirector {
    /// The process's redirector, or why the kernel would not take it (no
    /// privilege, an old kernel, not Linux).
    pub fn get() -> Result<&'static Redirector, &'static str> {
        REDIRECTOR.as_ref().map_err(String::as_str)
    }

    fn load() -> Result<Redirector, String> {
        let sockhash =
            || create_map(BPF_MAP_TYPE_SOCKHASH, 4, 0).map_err(|e| format!("creating a SOCKHASH map: {e}"));
        let (peers, hooked) = (sockhash()?, sockhash()?);
        let redirected = create_map(BPF_MAP_TYPE_HASH, 8, BPF_F_NO_PREALLOC)
            .map_err(|e| format!("creating a BPF hash map: {e}"))?;
        let program = load_program(peers.as_raw_fd(), redirected.as_raw_fd())?;
        #[repr(C)]
        struct Attach {
            target_fd: u32,
            attach_bpf_fd: u32,
            attach_type: u32,
            attach_flags: u32,
        }
        let attach = Attach {
            target_fd: hooked.as_raw_fd() as u32,
            attach_bpf_fd: program.as_raw_fd() as u32,
            attach_type: BPF_SK_SKB_VERDICT,
            attach_flags: 0,
        };
        bpf(BPF_PROG_ATTACH, &attach).map_err(|e| format!("attaching the verdict program: {e}"))?;
        Ok(Redirector {
            peers,
            hooked,
            redirected,
            _program: program,
        })
    }

    /// Hands the pair to the kernel: from now on what the client sends is
    /// sent on by the backend's socket (if `up`) and the other way round
    /// (if `down`); a socket that already had its peer's EOF cannot be
    /// hooked, so its direction stays the relay's. Nothing either socket had
    /// received and not yet read is lost or reordered: it goes through the
    /// program first. The caller must not write to a socket the kernel
    /// writes to.
    pub fn join(&'static self, client: &Sock, backend: &Sock) -> io::Result<Joined> {
        let (client_fd, backend_fd) = (client.as_raw_fd(), backend.as_raw_fd());
        let mut joined = Joined {
            redirector: self,
            client: cookie(client_fd)?,
            backend: cookie(backend_fd)?,
            written_to_client: send_side(client_fd)?.written,
            written_to_backend: send_side(backend_fd)?.written,
            up: false,
            down: false,
        };
        for key in [joined.client, joined.backend] {
            update(&self.redirected, key, &0u64)?;
        }
        update(&self.peers, joined.client, &(backend_fd as u32))?;
        update(&self.peers, joined.backend, &(client_fd as u32))?;
        joined.up = hook(&self.hooked, joined.client, client_fd).is_ok();
        joined.down = hook(&self.hooked, joined.backend, backend_fd).is_ok();
        if joined.up || joined.down {
            Ok(joined)
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "neither socket could be hooked",
            ))
        }
    }
}

/// Starts redirecting what `fd` receives, including what it holds already.
fn hook(hooked: &OwnedFd, key: u64, fd: RawFd) -> io::Result<()> {
    update(hooked, key, &(fd as u32))?;
    // Bytes queued before the hook wait for the next arrival; setting the
    // low-water mark runs the program over them now (tcp_set_rcvlowat
    // signals data-ready), without reading any of them here. Hooked
    // either way: should this fail, they go with the next arrival.
    let _ = set_rcvlowat(fd, 1);
    Ok(())
}

/// One element operation on `map`; `value` points at the value to store
/// or at room for the one looked up (null for a delete).
fn on_element(command: libc::c_long, map: &OwnedFd, key: u64, value: u64, flags: u64) -> io::Result<()> {
    let elem = MapElem {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: &key as *const u64 as u64,
        value,
        flags,
    };
    bpf(command, &elem).map(drop)
}

fn update<V>(map: &OwnedFd, key: u64, value: &V) -> io::Result<()> {
    on_element(
        BPF_MAP_UPDATE_ELEM,
        map,
        key,
        value as *const V as u64,
        BPF_NOEXIST,
    )
}

fn delete(map: &OwnedFd, key: u64) {
    let _ = on_element(BPF_MAP_DELETE_ELEM, map, key, 0, 0);
}

/// A pair the kernel forwards, in one direction or both; forgets the pair
/// when dropped (sockets also leave the maps by themselves when closed).
pub struct Joined {
    redirector: &'static Redirector,
    client: u64,
    backend: u64,
    /// What had been written to each socket before the join.
    written_to_client: u64,
    written_to_backend: u64,
    /// The kernel moves client → backend bytes.
    pub up: bool,
    /// The kernel moves backend → client bytes.
    pub down: bool,
}

/// Whether all the bytes the kernel moved one way reached the
/// destination's send queue (or never can: it is closed or broken).
pub struct Progress {
    pub delivered: bool,
    /// What the destination holds: written to it so far, and whether its
    /// send queue is empty (nothing waits for the peer).
    pub written: u64,
    pub sent_all: bool,
}

impl Joined {
    /// Client → backend (`up`) or backend → client so far. `copied` is what
    /// the relay itself wrote to the destination since the join.
    pub fn progress(&self, up: bool, to: &Sock, copied: u64) -> io::Result<Progress> {
        let before = if up {
            self.written_to_backend
        } else {
            self.written_to_client
        };
        let redirected = self.redirected(up)?;
        let to = send_side(to.as_raw_fd())?;
        let since = to.written.saturating_sub(before);
        Ok(Progress {
            delivered: since >= redirected + copied || !to.open,
            written: to.written,
            sent_all: to.sent_all,
        })
    }

    /// Bytes the kernel took from the client (`up`) or the backend so far.
    pub fn redirected(&self, up: bool) -> io::Result<u64> {
        let cookie = if up { self.client } else { self.backend };
        let mut count = 0u64;
        let room = &mut count as *mut u64 as u64;
        on_element(BPF_MAP_LOOKUP_ELEM, &self.redirector.redirected, cookie, room, 0)?;
        Ok(count)
    }
}

impl Drop for Joined {
    fn drop(&mut self) {
        let Redirector {
            peers,
            hooked,
            redirected,
            ..
        } = self.redirector;
        for cookie in [self.client, self.backend] {
            for map in [hooked, peers, redirected] {
                delete(map, cookie);
            }
        }
    }
}

#[repr(C)]
struct MapElem {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn bpf<A>(command: libc::c_long, attr: &A) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a #[repr(C)] prefix of union bpf_attr for
    // `command`; the kernel reads `size_of::<A>()` bytes of it, and any
    // pointers in it point at live memory of the sizes the map declares.
    os_result(unsafe { libc::syscall(libc::SYS_bpf, command, attr as *const A, size_of::<A>() as u32) })
}

/// A system call's return: negative for the error in errno.
fn os_result<R: Into<i64> + Copy>(ret: R) -> io::Result<R> {
    if ret.into() < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn create_map(map_type: u32, value_size: u32, flags: u32) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    let attr = MapCreate {
        map_type,
        key_size: 8,
        value_size,
        max_entries: 2 * MAX_PAIRS,
        map_flags: flags,
    };
    let fd = bpf(BPF_MAP_CREATE, &attr)?;
    // SAFETY: BPF_MAP_CREATE returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// One eBPF instruction: opcode, registers (dst low nibble), offset, immediate.
const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    (code as u64)
        | (((src << 4 | dst) as u64) << 8)
        | ((off as u16 as u64) << 16)
        | ((imm as u32 as u64) << 32)
}

/// The verdict program:
///
/// ```text
/// r6 = ctx
/// if ctx->len == 0: return SK_DROP                ; a bare FIN, see below
/// key = get_socket_cookie(ctx)                    ; the receiving socket
/// if sk_redirect_hash(ctx, peers, &key, 0) == SK_DROP: return SK_PASS
///                                                 ; no peer yet: keep it
/// count = map_lookup_elem(redirected, &key)
/// if count: atomic *count += ctx->len
/// return SK_PASS                                  ; with the redirect set
/// ```
///
/// A bare FIN must not be redirected (the destination's queue takes a
/// zero-length send as a broken socket) nor passed (queued behind the
/// bytes waiting for this socket, it breaks that queue the same way).
/// Dropped, it is still seen: the socket is shut for reading, so the
/// relay reads EOF.
fn load_program(peers: RawFd, redirected: RawFd) -> Result<OwnedFd, String> {
    const MOV64_REG: u8 = 0xbf;
    const MOV64_IMM: u8 = 0xb7;
    const ADD64_IMM: u8 = 0x07;
    const STX_DW: u8 = 0x7b;
    const LDX_W: u8 = 0x61;
    const ATOMIC_DW: u8 = 0xdb;
    const LD_IMM64: u8 = 0x18;
    const PSEUDO_MAP_FD: u8 = 1;
    const JEQ_IMM: u8 = 0x15;
    const JNE_IMM: u8 = 0x55;
    const CALL: u8 = 0x85;
    const EXIT: u8 = 0x95;
    let program = [
        insn(MOV64_REG, 6, 1, 0, 0),
        insn(LDX_W, 2, 6, 0, 0),     // r2 = ctx->len
        insn(JNE_IMM, 2, 0, 2, 0),   // has bytes: go on
        insn(MOV64_IMM, 0, 0, 0, 0), // SK_DROP
        insn(EXIT, 0, 0, 0, 0),
        insn(CALL, 0, 0, 0, FUNC_GET_SOCKET_COOKIE),
        insn(STX_DW, 10, 0, -8, 0),
        insn(MOV64_REG, 1, 6, 0, 0),
        insn(LD_IMM64, 2, PSEUDO_MAP_FD, 0, peers),
        0,
        insn(MOV64_REG, 3, 10, 0, 0),
        insn(ADD64_IMM, 3, 0, 0, -8),
        insn(MOV64_IMM, 4, 0, 0, 0),
        insn(CALL, 0, 0, 0, FUNC_SK_REDIRECT_HASH),
        insn(JEQ_IMM, 0, 0, 8, 0), // not redirected: to `return SK_PASS`
        insn(LD_IMM64, 1, PSEUDO_MAP_FD, 0, redirected),
        0,
        insn(MOV64_REG, 2, 10, 0, 0),
        insn(ADD64_IMM, 2, 0, 0, -8),
        insn(CALL, 0, 0, 0, FUNC_MAP_LOOKUP_ELEM),
        insn(JEQ_IMM, 0, 0, 2, 0),   // no counter: to `return SK_PASS`
        insn(LDX_W, 1, 6, 0, 0),     // r1 = ctx->len
        insn(ATOMIC_DW, 0, 1, 0, 0), // lock *(u64 *)r0 += r1
        insn(MOV64_IMM, 0, 0, 0, 1), // SK_PASS
        insn(EXIT, 0, 0, 0, 0),
    ];
    #[repr(C)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
    }
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_SK_SKB,
        insn_cnt: program.len() as u32,
        insns: program.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
    };
    match bpf(BPF_PROG_LOAD, &attr) {
        // SAFETY: BPF_PROG_LOAD returned a new descriptor that nothing else owns.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let verifier = String::from_utf8_lossy(&log[..end]);
            Err(format!("loading the verdict program: {e} {}", verifier.trim()))
        }
    }
}

/// A socket option made of plain integers, which must fill `T` entirely.
fn socket_option<T: PlainOption>(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<T> {
    // SAFETY: `T` is plain integers (`PlainOption`); zero is a valid value.
    let mut value: T = unsafe { zeroed() };
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`.
    os_result(unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &mut len) })?;
    if (len as usize) < size_of::<T>() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a shorter socket option than asked for",
        ));
    }
    Ok(value)
}

/// Types made only of integers, for which all-zero bytes are a value.
trait PlainOption {}
impl PlainOption for u64 {}
impl PlainOption for TcpInfo {}

fn cookie(fd: RawFd) -> io::Result<u64> {
    socket_option(fd, libc::SOL_SOCKET, SO_COOKIE)
}

fn set_rcvlowat(fd: RawFd, bytes: libc::c_int) -> io::Result<()> {
    let len = size_of::<libc::c_int>() as libc::socklen_t;
    let option = (&raw const bytes).cast();
    // SAFETY: setsockopt reads `len` bytes from `bytes`.
    os_result(unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVLOWAT, option, len) }).map(drop)
}

/// A TCP socket's sending side, from one TCP_INFO snapshot.
struct SendSide {
    /// Bytes ever written to its send queue, by anyone: first
    /// transmissions plus what waits unsent.
    written: u64,
    /// It can still send.
    open: bool,
    /// Nothing unsent or unacknowledged.
    sent_all: bool,
}

fn send_side(fd: RawFd) -> io::Result<SendSide> {
    let info: TcpInfo = socket_option(fd, libc::IPPROTO_TCP, libc::TCP_INFO)?;
    Ok(SendSide {
        written: info.bytes_sent.saturating_sub(info.bytes_retrans) + u64::from(info.notsent_bytes),
        open: matches!(info.state, TCP_ESTABLISHED | TCP_CLOSE_WAIT),
        sent_all: info.notsent_bytes == 0 && info.unacked == 0,
    })
}

// `tcpi_state` values (<netinet/tcp.h>).
const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSE_WAIT: u8 = 8;

/// `struct tcp_info` (<linux/tcp.h>) up to the byte counts used here.
#[repr(C)]
struct TcpInfo {
    state: u8,
    _head: [u8; 23],
    unacked: u32,
    _more: [u8; 116],
    notsent_bytes: u32,
    _middle: [u8; 52],
    bytes_sent: u64,
    bytes_retrans: u64,
}

const _: () = assert!(std::mem::offset_of!(TcpInfo, unacked) == 24);
const _: () = assert!(std::mem::offset_of!(TcpInfo, notsent_bytes) == 144);
const _: () = assert!(std::mem::offset_of!(TcpInfo, bytes_sent) == 200);

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    use super::super::sock;
    use super::*;

    fn read_exactly(stream: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        stream.read_exact(&mut buf).unwrap();
        buf
    }

    #[tokio::test]
    async fn the_kernel_forwards_a_joined_pair_both_ways_and_counts_it() {
        let redirector = match Redirector::get() {
            Ok(redirector) => redirector,
            // Unprivileged or not Linux: the relay falls back, and says why.
            Err(why) => {
                assert!(!why.is_empty());
                return;
            }
        };
        let front = TcpListener::bind("127.0.0.1:0").unwrap();
        front.set_nonblocking(true).unwrap();
        let front_addr = front.local_addr().unwrap();
        let front = sock::register_listener(front).unwrap();
        let back = TcpListener::bind("127.0.0.1:0").unwrap();

        let mut client_app = TcpStream::connect(front_addr).unwrap();
        let (client, _) = sock::accept(&front).await.unwrap();
        let backend = sock::connect(back.local_addr().unwrap()).await.unwrap();
        let (mut backend_app, _) = back.accept().unwrap();
        for app in [&client_app, &backend_app] {
            app.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        // Sent before the join: waits in the receive queue, must not stall.
        client_app.write_all(b"early").unwrap();
        let joined = redirector.join(&client, &backend).unwrap();
        assert!(joined.up && joined.down);
        assert_eq!(read_exactly(&mut backend_app, 5), b"early");
        backend_app.write_all(b"a longer reply").unwrap();
        assert_eq!(read_exactly(&mut client_app, 14), b"a longer reply");
        let redirected = (
            joined.redirected(true).unwrap(),
            joined.redirected(false).unwrap(),
        );
        assert_eq!(redirected, (5, 14));
        assert!(joined.progress(true, &backend, 0).unwrap().delivered);
        assert!(joined.progress(false, &client, 0).unwrap().delivered);
        // One byte the relay says it wrote itself is not there.
        assert!(!joined.progress(true, &backend, 1).unwrap().delivered);
    }
}
