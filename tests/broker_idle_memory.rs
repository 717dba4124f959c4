//! An idle connected client costs the built-in broker little heap, and the
//! heap comes back when it leaves (issue 10: 10,000 idle clients took
//! ~7.7 KiB each). Counts the bytes live on the heap with a counting global
//! allocator, so the number does not depend on the allocator's page
//! handling; the RSS of the shipped binary is measured in docs/benchmarks.md.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::time::Duration;

use common::broker::TestBroker;
use common::wait::wait_until;

/// The system allocator, counting the bytes live.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`; the counter only
// records the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Clients kept connected through the whole test (warms the broker's maps
/// and the runtime up, so the baseline is not its first allocations).
const WARM: usize = 64;
/// Idle clients measured.
const IDLE: usize = 2_000;
/// Heap per idle client allowed. Issue 10 asks for 2 KiB of RSS per client;
/// an idle client held ~7.2 KiB of heap before its handshake and end states
/// were boxed out of the long-lived future and sessions were boxed in the
/// router's map, ~5.5 KiB after, ~4.4 KiB once the outlet was one shared
/// allocation instead of an mpsc, ~3.8 KiB once an idle connection held
/// no read buffer and ~3.4 KiB once a connection ran in one task spawned
/// after its handshake (reads and writes in one loop), ~2.3 KiB once a
/// session held no QoS state before its first QoS 1/2 flow, the
/// connection's loop waited on its outlet with one poll (no future per
/// reason to wake), shared its broker's context and kept one keepalive
/// timer, read and wrote its stream without `split`, and a connection
/// whose CONNACK or PINGRESP went alone gave its write buffers back,
/// ~1.6 KiB once the connection's task held no keepalive timer and no
/// shutdown waiter (the router checks the deadlines and tells of a
/// shutdown through the outlet), kept the accepted connection once
/// instead of twice (an `async fn`'s argument and its local) and its read
/// loop held no packet or event across the wait for a full router inbox.
/// This bound keeps that gain (with a little margin); the rest (the
/// connection's task, the session, the socket's registration, the
/// outlet) is listed in docs/benchmarks.md.
const MAX_HEAP_PER_CLIENT: isize = 1_664;
/// Heap per client that may stay after they all left (maps keep some of
/// their capacity).
const MAX_LEFT_PER_CLIENT: isize = 64;

/// Connects as `id` (keepalive 600 s, clean session), then pings once, so
/// the connection has been through the writer as an idle client that keeps
/// itself alive does.
fn idle_client(addr: SocketAddr, id: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let client_id = format!("idle{id}");
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0x02, 0x58];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut connect = vec![0x10, body.len() as u8];
    connect.extend_from_slice(&body);
    s.write_all(&connect).unwrap();
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK");
    s.write_all(&[0xC0, 0]).unwrap();
    let mut pingresp = [0u8; 2];
    s.read_exact(&mut pingresp).unwrap();
    assert_eq!(pingresp, [0xD0, 0], "PINGRESP");
    s
}

fn connect_all(addr: SocketAddr, ids: std::ops::Range<usize>) -> Vec<TcpStream> {
    tokio::task::block_in_place(|| ids.map(|i| idle_client(addr, i)).collect())
}

/// Live heap once it has stopped moving (connection tasks finish their
/// last steps after the client saw its answer).
async fn settled_heap() -> isize {
    let mut last = LIVE.load(Relaxed);
    let mut steady = 0;
    wait_until(|| {
        let now = LIVE.load(Relaxed);
        steady = if (now - last).abs() < 4096 {
            steady + 1
        } else {
            0
        };
        last = now;
        steady >= 20
    })
    .await;
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_cost_little_heap_and_give_it_back() {
    let b = TestBroker::start_with(|o| o.limits.max_connections = WARM + IDLE + 16).await;
    let _warm = connect_all(b.addr, 0..WARM);
    wait_until(|| b.broker.stats().clients_connected == WARM as u64).await;
    let before = settled_heap().await;

    let idle = connect_all(b.addr, WARM..WARM + IDLE);
    wait_until(|| b.broker.stats().clients_connected == (WARM + IDLE) as u64).await;
    let connected = settled_heap().await;
    let per_client = (connected - before) / IDLE as isize;
    eprintln!("heap per idle client: {per_client} bytes ({before} -> {connected})");
    assert!(
        per_client <= MAX_HEAP_PER_CLIENT,
        "an idle client holds {per_client} bytes of heap (at most {MAX_HEAP_PER_CLIENT})"
    );

    drop(idle);
    wait_until(|| {
        let s = b.broker.stats();
        s.clients_connected == WARM as u64 && s.sessions == WARM as u64
    })
    .await;
    let after = settled_heap().await;
    let left = (after - before) / IDLE as isize;
    eprintln!("heap left per client after they went: {left} bytes ({after})");
    assert!(
        left <= MAX_LEFT_PER_CLIENT,
        "{left} bytes per client stayed after the clients left (at most {MAX_LEFT_PER_CLIENT})"
    );
}
