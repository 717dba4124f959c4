//! Whether this process still holds a listening socket, asked of the kernel
//! (Linux `/proc`) rather than by connecting: after a test's server stops, its
//! port-0 address may already be another test's listener, so "connect fails"
//! says nothing about the server. A socket's inode is never reused while
//! any process holds it, so "no fd of ours points at that inode" is exact.

use std::net::SocketAddr;

/// The inode of the TCP socket in LISTEN state bound to `addr`, from
/// `/proc/net/tcp` or `/proc/net/tcp6`. Panics (a test helper) when none.
pub fn listening_inode(addr: SocketAddr) -> u64 {
    let table = if addr.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let text = std::fs::read_to_string(table).unwrap_or_else(|e| panic!("read {table}: {e}"));
    let port = format!(":{:04X}", addr.port());
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address, state (0A = LISTEN), …, inode (column 9).
            (cols.len() > 9 && cols[1].ends_with(&port) && cols[3] == "0A")
                .then(|| cols[9].parse::<u64>().ok())
                .flatten()
        })
        .find(|&inode| holds_socket(inode))
        .unwrap_or_else(|| panic!("no listening socket of this process on {addr}"))
}

/// Whether any open file descriptor of this process is socket `inode`.
pub fn holds_socket(inode: u64) -> bool {
    let want = format!("socket:[{inode}]");
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .any(|target| target.to_string_lossy() == want)
}
