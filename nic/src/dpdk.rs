//! The `dpdk:EAL ARGS` backend: a DPDK ethdev port (a NIC bound to a DPDK
//! driver, or a virtual device such as `net_ring`, `net_tap` or
//! `net_af_packet`) with one receive and one transmit queue, through our
//! bindings crate `switchyard-dpdk-sys`.
//!
//! EAL, DPDK's runtime, starts once per process, from the first port's
//! argument string; it cannot be restarted. Each port gets its own mempool of
//! DPDK mbufs, which [`DpdkMbuf`] owns one at a time.
//!
//! Zero copy: a received frame stays in its DPDK mbuf, which the
//! dataplane's [`Mbuf`] wraps (the same view of headroom and data over
//! DPDK's buffer); a frame forwarded as received (L4) goes back to the
//! device in that mbuf, and one dropped or consumed (by the TCP stack) is
//! freed to the port's mempool. Frames the dataplane builds itself live in
//! its own [`Pool`]'s buffers and are copied into an mbuf on transmit.
//!
//! Offloads: when the device reports TCP and UDP receive checksum offload it
//! is enabled, and frames whose mbuf says the L4 checksum is good are marked
//! [`RxCsum::Verified`]; otherwise (and for frames it says are bad or did not
//! check) the stack verifies in software. Transmit checksums are always
//! computed by the stack. With one queue there is no RSS to ask for.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_dpdk_sys as ffi;

use crate::{BURST, Mbuf, NicError, Pool, Port, PortStats, RxCsum};

/// Mbufs in a port's mempool: enough for the receive and transmit rings
/// (the drivers' default sizes are at most a few thousand) and a burst in
/// flight. 2^n - 1 is the size a ring-backed mempool uses best.
const POOL_MBUFS: u32 = 8191;
/// Per-lcore cache of the mempool (EAL threads only; our workers are not
/// EAL threads and go to the shared ring).
const POOL_CACHE: u32 = 256;
/// How long an idle port sleeps in [`Port::wait`]: DPDK polls, it has no
/// descriptor to wait on, and a worker that spins on a shared core starves
/// its neighbours. Up to this much latency is added to the first frame after
/// an idle spell.
const IDLE_NAP: Duration = Duration::from_micros(100);

/// What became of EAL in this process: the arguments it started with, or
/// why it failed (it is never retried: a failed start may leave DPDK half
/// initialised).
static EAL: Mutex<Option<Result<String, String>>> = Mutex::new(None);

/// Distinguishes the mempools of ports opened one after another.
static POOLS: AtomicU32 = AtomicU32::new(0);

/// The text DPDK gives for error number `errno`.
fn strerror(errno: c_int) -> String {
    // SAFETY: rte_strerror accepts any number and returns a NUL-terminated
    // string (static, or in a per-thread buffer), copied at once.
    let s = unsafe { CStr::from_ptr(ffi::rte_strerror(errno)) };
    s.to_string_lossy().into_owned()
}

/// The calling thread's rte_errno.
fn errno() -> c_int {
    // SAFETY: reads a thread-local integer.
    unsafe { ffi::sy_errno() }
}

/// Starts EAL with `args` (split on whitespace, after a program name), once
/// per process. A second call with the same arguments is fine; with
/// others, or after a failure, it is an error saying so.
pub fn eal_init(args: &str) -> Result<(), String> {
    let mut eal = EAL.lock().unwrap_or_else(|e| e.into_inner());
    match &*eal {
        Some(Ok(started)) if started == args => return Ok(()),
        Some(Ok(started)) => {
            return Err(format!(
                "EAL already runs in this process with `{started}`; it starts only once, so every DPDK port must use the same EAL arguments"
            ));
        }
        Some(Err(e)) => return Err(format!("EAL failed to start earlier: {e}")),
        None => {}
    }
    let r = start_eal(args);
    *eal = Some(r.clone().map(|()| args.to_string()));
    r
}

fn start_eal(args: &str) -> Result<(), String> {
    let mut words = vec!["switchyard"];
    words.extend(args.split_whitespace());
    let mut argv: Vec<*mut c_char> = Vec::with_capacity(words.len() + 1);
    for w in &words {
        let c = CString::new(*w).map_err(|_| format!("EAL argument `{w}` contains a NUL byte"))?;
        // EAL may keep pointers into argv for the life of the process, so the
        // strings are never freed (once per process, a few bytes).
        argv.push(c.into_raw());
    }
    argv.push(std::ptr::null_mut());
    let argv = argv.leak();
    // EAL pins the calling thread to its main lcore; the threads we start
    // later inherit the caller's affinity, so it is restored afterwards
    // (workers pin themselves where the configuration says).
    let affinity = get_affinity();
    // SAFETY: argc counts the non-NULL entries of argv, which is
    // NULL-terminated, and every entry is a valid C string that lives for
    // the rest of the process (leaked above). EAL is started at most once
    // per process: callers hold the EAL mutex and record the outcome.
    let r = unsafe { ffi::rte_eal_init((argv.len() - 1) as c_int, argv.as_mut_ptr()) };
    if let Some(set) = affinity {
        set_affinity(&set);
    }
    if r < 0 {
        let e = errno();
        return Err(format!(
            "EAL did not start: {} (rte_errno {e}; EAL's log above names the argument or resource)",
            strerror(e)
        ));
    }
    Ok(())
}

fn get_affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data; all-zero is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a writable cpu_set_t of the size passed.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    (r == 0).then_some(set)
}

fn set_affinity(set: &libc::cpu_set_t) {
    // SAFETY: `set` is a valid cpu_set_t of the size passed; only the
    // calling thread's affinity changes. A failure leaves EAL's pinning.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
}

/// One DPDK packet buffer, owned: dropping it frees it back to its mempool;
/// [`DpdkMbuf::into_raw`] hands it over (to the device, for transmit).
pub struct DpdkMbuf(NonNull<ffi::rte_mbuf>, Option<Arc<Mempool>>);

/// A port's mempool, freed when the port and the last of its mbufs are
/// gone (a received mbuf may outlive its port: a dispatcher's rings, a
/// worker's queues).
struct Mempool(NonNull<ffi::rte_mempool>);

// SAFETY: DPDK's default mempool ops (a multi-producer, multi-consumer
// ring) take gets and puts from any thread; the pointer is only freed in
// Drop, when no one else holds it.
unsafe impl Send for Mempool {}
// SAFETY: as above: every operation through `&Mempool` is thread-safe.
unsafe impl Sync for Mempool {}

impl Drop for Mempool {
    fn drop(&mut self) {
        // SAFETY: the last reference: no mbuf of the pool is alive, and the
        // port (whose rings held some) is closed.
        unsafe { ffi::rte_mempool_free(self.0.as_ptr()) }
    }
}

impl DpdkMbuf {
    /// An empty mbuf from `pool`, or `None` when the pool is exhausted.
    fn alloc(pool: &Arc<Mempool>) -> Option<DpdkMbuf> {
        // SAFETY: `pool` is a live mempool of pktmbufs (the Arc keeps it).
        let m = NonNull::new(unsafe { ffi::sy_pktmbuf_alloc(pool.0.as_ptr()) })?;
        Some(DpdkMbuf(m, Some(pool.clone())))
    }

    /// Takes ownership of `raw`, an mbuf of `pool`.
    ///
    /// # Safety
    /// `raw` must be a valid mbuf that nothing else will use or free (as
    /// those rte_eth_rx_burst returns are).
    unsafe fn from_raw(raw: *mut ffi::rte_mbuf, pool: &Arc<Mempool>) -> Option<DpdkMbuf> {
        NonNull::new(raw).map(|m| DpdkMbuf(m, Some(pool.clone())))
    }

    /// Gives up ownership: the pointer is now the receiver's to free.
    pub fn into_raw(mut self) -> *mut ffi::rte_mbuf {
        let p = self.0.as_ptr();
        // The device holds the mbuf now; its pool is kept by the port.
        drop(self.1.take());
        std::mem::forget(self);
        p
    }

    /// The bytes of the first segment (all of a frame unless it is chained).
    pub fn data(&self) -> &[u8] {
        // SAFETY: we own the mbuf; its first segment holds data_len
        // initialised bytes from mtod, which live as long as it does and
        // nothing else writes while we hold `&self`.
        unsafe {
            let m = self.0.as_ptr();
            std::slice::from_raw_parts(ffi::sy_mbuf_data(m), usize::from(ffi::sy_mbuf_data_len(m)))
        }
    }

    /// The number of chained segments.
    pub fn segments(&self) -> u16 {
        // SAFETY: reads a field of an mbuf we own.
        unsafe { ffi::sy_mbuf_nb_segs(self.0.as_ptr()) }
    }

    /// The offload flags the receiving device set (`RTE_MBUF_F_RX_*`).
    pub fn ol_flags(&self) -> u64 {
        // SAFETY: reads a field of an mbuf we own.
        unsafe { ffi::sy_mbuf_ol_flags(self.0.as_ptr()) }
    }

    /// Appends `bytes` to the (empty) mbuf's data; false when they do not
    /// fit its tailroom.
    fn append(&mut self, bytes: &[u8]) -> bool {
        let Ok(len) = u16::try_from(bytes.len()) else { return false };
        // SAFETY: we own the mbuf; append returns NULL or a pointer to `len`
        // writable bytes inside its buffer, which `bytes` (our own memory)
        // cannot overlap.
        unsafe {
            let p = ffi::sy_pktmbuf_append(self.0.as_ptr(), len);
            if p.is_null() {
                return false;
            }
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), p.cast::<u8>(), bytes.len());
        }
        true
    }
}

impl DpdkMbuf {
    /// The whole buffer, headroom and tailroom included.
    pub fn buffer(&self) -> &[u8] {
        // SAFETY: we own the mbuf; buf_addr points at buf_len bytes of its
        // buffer (initialised: DPDK zeroes nothing, but every byte of a
        // mempool object is mapped memory it wrote at creation), which live
        // as long as the mbuf and nothing else touches while we hold it.
        unsafe {
            let m = self.0.as_ptr();
            std::slice::from_raw_parts(ffi::sy_mbuf_buf(m), usize::from(ffi::sy_mbuf_buf_len(m)))
        }
    }

    /// The whole buffer, writable.
    pub fn buffer_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `buffer`, and `&mut self` makes the access unique.
        unsafe {
            let m = self.0.as_ptr();
            std::slice::from_raw_parts_mut(
                ffi::sy_mbuf_buf(m),
                usize::from(ffi::sy_mbuf_buf_len(m)),
            )
        }
    }

    /// Where the data lies in the buffer: its offset and length.
    pub fn data_span(&self) -> (usize, usize) {
        // SAFETY: reads fields of an mbuf we own.
        unsafe {
            let m = self.0.as_ptr();
            (usize::from(ffi::sy_mbuf_data_off(m)), usize::from(ffi::sy_mbuf_data_len(m)))
        }
    }

    /// Makes `len` bytes at `off` the data (for transmit; clears the
    /// receive offload flags).
    pub fn set_data_span(&mut self, off: usize, len: usize) {
        let (Ok(off), Ok(len)) = (u16::try_from(off), u16::try_from(len)) else { return };
        // SAFETY: writes fields of an mbuf we own; `off + len` lies inside
        // its buffer, as the caller's frame view of it does.
        unsafe { ffi::sy_mbuf_set_data(self.0.as_ptr(), off, len) }
    }

    fn as_ptr(&self) -> *mut ffi::rte_mbuf {
        self.0.as_ptr()
    }
}

impl std::fmt::Debug for DpdkMbuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpdkMbuf").field("span", &self.data_span()).finish()
    }
}

// SAFETY: a DpdkMbuf is the only owner of its mbuf; DPDK's default mempool
// (a multi-producer ring) takes frees from any thread, so the owner may move
// between threads (a dispatcher hands received frames to workers).
unsafe impl Send for DpdkMbuf {}

impl Drop for DpdkMbuf {
    fn drop(&mut self) {
        // SAFETY: we own the mbuf and nobody uses it after this.
        unsafe { ffi::sy_pktmbuf_free(self.0.as_ptr()) }
    }
}

/// The counters DPDK's driver keeps for a port (`rte_eth_stats_get`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeviceStats {
    /// Frames received.
    pub ipackets: u64,
    /// Frames transmitted.
    pub opackets: u64,
    /// Bytes received.
    pub ibytes: u64,
    /// Bytes transmitted.
    pub obytes: u64,
    /// Frames the device dropped because its receive ring was full.
    pub imissed: u64,
    /// Receive errors.
    pub ierrors: u64,
    /// Transmit errors.
    pub oerrors: u64,
    /// Receive buffer allocation failures.
    pub rx_nombuf: u64,
}

/// A DPDK ethdev port with one receive and one transmit queue.
pub struct DpdkPort {
    label: String,
    port: u16,
    pool: Arc<Mempool>,
    mac: [u8; 6],
    device_mac: [u8; 6],
    driver: String,
    rx_csum_offload: bool,
    stats: PortStats,
    /// Mbufs being filled for one transmit burst (capacity BURST, reused).
    staged: Vec<DpdkMbuf>,
    /// The last receive burst was empty.
    idle: bool,
}

// SAFETY: a DpdkPort is the only user of its port's queue 0 and of its
// mempool pointer, and whoever owns it (one thread at a time) makes every
// call; DPDK's queue functions need exactly that (one thread per queue),
// not a particular thread, and the default mempool (a multi-producer,
// multi-consumer ring) may be used from any thread.
unsafe impl Send for DpdkPort {}

impl DpdkPort {
    /// Starts EAL with `eal_args` (if this process has not yet) and opens
    /// DPDK port `port` for the dataplane, which uses `mac` on it (the port
    /// is put in promiscuous mode so frames to `mac` arrive).
    pub fn open(eal_args: &str, port: u16, mac: [u8; 6]) -> Result<DpdkPort, NicError> {
        let label = format!("dpdk:{eal_args}");
        let fail = |reason: String| NicError::Device { device: label.clone(), reason };
        let ethdev = |what: &str, rc: c_int| {
            fail(format!("{what} of port {port} failed: {} ({rc})", strerror(-rc)))
        };
        eal_init(eal_args).map_err(fail)?;
        // SAFETY: EAL runs; these calls take a port id and check it.
        if unsafe { ffi::rte_eth_dev_is_valid_port(port) } == 0 {
            // SAFETY: as above.
            let n = unsafe { ffi::rte_eth_dev_count_avail() };
            return Err(fail(format!(
                "no DPDK port {port}: {n} port(s) found (a `--vdev=net_...` or a NIC bound to a DPDK driver makes one)"
            )));
        }
        // SAFETY: rte_eth_dev_info is plain data; all-zero is valid.
        let mut info: ffi::rte_eth_dev_info = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is writable for the call; the port id is valid.
        let rc = unsafe { ffi::rte_eth_dev_info_get(port, &mut info) };
        if rc != 0 {
            return Err(ethdev("rte_eth_dev_info_get", rc));
        }
        let driver = if info.driver_name.is_null() {
            String::from("?")
        } else {
            // SAFETY: the driver's name, a static NUL-terminated string.
            unsafe { CStr::from_ptr(info.driver_name) }.to_string_lossy().into_owned()
        };
        let l4 = u64::from(ffi::SY_RX_OFFLOAD_TCP_CKSUM | ffi::SY_RX_OFFLOAD_UDP_CKSUM);
        let rx_csum_offload = info.rx_offload_capa & l4 == l4;
        // SAFETY: rte_eth_conf is plain data; all-zero is the default
        // configuration (no multi-queue mode, no offloads, default MTU).
        let mut conf: ffi::rte_eth_conf = unsafe { std::mem::zeroed() };
        if rx_csum_offload {
            conf.rxmode.offloads = l4;
        }
        // SAFETY: `conf` is a valid configuration read during the call.
        let rc = unsafe { ffi::rte_eth_dev_configure(port, 1, 1, &conf) };
        if rc != 0 {
            return Err(ethdev("rte_eth_dev_configure", rc));
        }
        // SAFETY: plain query of a valid port (-1: any NUMA node).
        let socket = unsafe { ffi::rte_eth_dev_socket_id(port) };
        let name = format!("sy_pool_{port}_{}", POOLS.fetch_add(1, Ordering::Relaxed));
        let cname = CString::new(name).map_err(|_| fail("pool name".into()))?;
        // SAFETY: `cname` is a valid C string for the call; the pool's
        // parameters are within DPDK's limits (cache <= 512, data room
        // the default mbuf size).
        let pool = unsafe {
            ffi::rte_pktmbuf_pool_create(
                cname.as_ptr(),
                POOL_MBUFS,
                POOL_CACHE,
                0,
                ffi::SY_MBUF_DEFAULT_BUF_SIZE as u16,
                socket,
            )
        };
        let Some(pool) = NonNull::new(pool) else {
            let e = errno();
            return Err(fail(format!(
                "mempool of {POOL_MBUFS} mbufs: {} (rte_errno {e}; EAL's `-m` may be too small)",
                strerror(e)
            )));
        };
        // From here the port owns the pool: an error below drops it, which
        // stops and closes the device and frees the pool.
        let mut p = DpdkPort {
            label: label.clone(),
            port,
            pool: Arc::new(Mempool(pool)),
            mac,
            device_mac: [0; 6],
            driver,
            rx_csum_offload,
            stats: PortStats::default(),
            staged: Vec::with_capacity(BURST),
            idle: false,
        };
        // SAFETY: valid port and pool; NULL configurations select the
        // driver's defaults, 0 descriptors its default ring size.
        let rc = unsafe {
            ffi::rte_eth_rx_queue_setup(port, 0, 0, socket as u32, std::ptr::null(), pool.as_ptr())
        };
        if rc != 0 {
            return Err(ethdev("rte_eth_rx_queue_setup", rc));
        }
        // SAFETY: as above.
        let rc =
            unsafe { ffi::rte_eth_tx_queue_setup(port, 0, 0, socket as u32, std::ptr::null()) };
        if rc != 0 {
            return Err(ethdev("rte_eth_tx_queue_setup", rc));
        }
        // SAFETY: plain call on a configured port. Drivers that cannot
        // (net_ring) receive everything anyway.
        let _ = unsafe { ffi::rte_eth_promiscuous_enable(port) };
        // SAFETY: the port is configured with its queues set up.
        let rc = unsafe { ffi::rte_eth_dev_start(port) };
        if rc != 0 {
            return Err(ethdev("rte_eth_dev_start", rc));
        }
        let mut addr = ffi::rte_ether_addr::default();
        // SAFETY: `addr` is writable for the call.
        if unsafe { ffi::rte_eth_macaddr_get(port, &mut addr) } == 0 {
            p.device_mac = addr.addr_bytes;
        }
        Ok(p)
    }

    /// The port as the configuration names it (`dpdk:EAL ARGS`).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The DPDK driver behind the port (`net_ring`, `net_tap`, ...).
    pub fn driver(&self) -> &str {
        &self.driver
    }

    /// The device's own Ethernet address (the dataplane uses its configured one).
    pub fn device_mac(&self) -> [u8; 6] {
        self.device_mac
    }

    /// True when the device verifies TCP and UDP checksums on receive.
    pub fn rx_csum_offload(&self) -> bool {
        self.rx_csum_offload
    }

    /// The driver's counters.
    pub fn device_stats(&self) -> DeviceStats {
        let mut s = ffi::rte_eth_stats::default();
        // SAFETY: `s` is writable for the call; the port is valid while we own it.
        if unsafe { ffi::rte_eth_stats_get(self.port, &mut s) } != 0 {
            return DeviceStats::default();
        }
        DeviceStats {
            ipackets: s.ipackets,
            opackets: s.opackets,
            ibytes: s.ibytes,
            obytes: s.obytes,
            imissed: s.imissed,
            ierrors: s.ierrors,
            oerrors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
        }
    }

    /// Mbufs free in the port's mempool (a leak shows as a number that
    /// does not come back once the rings are empty).
    pub fn pool_free(&self) -> u32 {
        // SAFETY: plain read of a live mempool we own.
        unsafe { ffi::rte_mempool_avail_count(self.pool.0.as_ptr()) }
    }

    /// Mbufs the port's mempool holds in all.
    pub fn pool_size(&self) -> u32 {
        POOL_MBUFS
    }

    fn rx_csum(&self, m: &DpdkMbuf) -> RxCsum {
        let mask = u64::from(ffi::SY_MBUF_F_RX_L4_CKSUM_MASK);
        let good = u64::from(ffi::SY_MBUF_F_RX_L4_CKSUM_GOOD);
        if self.rx_csum_offload && m.ol_flags() & mask == good {
            RxCsum::Verified
        } else {
            RxCsum::Unchecked
        }
    }
}

impl Drop for DpdkPort {
    fn drop(&mut self) {
        self.staged.clear();
        // SAFETY: we own the port: stopping and closing it releases the
        // mbufs its rings hold. The pool is freed with the last of its
        // mbufs (`Mempool`). Failures (a port never started) are harmless.
        unsafe {
            ffi::rte_eth_dev_stop(self.port);
            ffi::rte_eth_dev_close(self.port);
        }
    }
}

impl Port for DpdkPort {
    fn rx_burst(&mut self, _pool: &mut Pool, out: &mut Vec<Mbuf>, max: usize) -> usize {
        let mut got = 0;
        while got < max {
            let want = (max - got).min(BURST);
            let mut raw = [std::ptr::null_mut::<ffi::rte_mbuf>(); BURST];
            // SAFETY: `raw` has room for `want` pointers; queue 0 of our
            // port is used by no one else.
            let n = unsafe { ffi::sy_rx_burst(self.port, 0, raw.as_mut_ptr(), want as u16) };
            for &r in &raw[..usize::from(n)] {
                // SAFETY: the driver handed us these mbufs; we are their only owner.
                let Some(m) = (unsafe { DpdkMbuf::from_raw(r, &self.pool) }) else { continue };
                if m.segments() != 1 {
                    // Scatter is not enabled, so a chain is unexpected.
                    self.stats.rx_oversize += 1;
                    continue;
                }
                // Zero copy: the dataplane's buffer is DPDK's.
                let csum = self.rx_csum(&m);
                let b = Mbuf::from_dpdk(m, csum);
                self.stats.rx_frames += 1;
                self.stats.rx_bytes += b.len() as u64;
                out.push(b);
                got += 1;
            }
            if usize::from(n) < want {
                break;
            }
        }
        self.idle = got == 0;
        got
    }

    fn tx_burst(&mut self, pkts: &mut Vec<Mbuf>, pool: &mut Pool) -> usize {
        let mut sent = 0;
        while !pkts.is_empty() {
            // A frame in a DPDK mbuf goes as it is (zero copy); one in our
            // own memory is copied into an mbuf of the port's pool.
            self.staged.clear();
            let mut raw = [std::ptr::null_mut::<ffi::rte_mbuf>(); BURST];
            let mut k = 0;
            for m in pkts.iter_mut().take(BURST) {
                raw[k] = match m.dpdk_mut() {
                    Some(d) => d.as_ptr(),
                    None => {
                        let Some(mut d) = DpdkMbuf::alloc(&self.pool) else { break };
                        if !d.append(m.data()) {
                            break; // larger than an mbuf: stays for the caller to drop
                        }
                        let p = d.as_ptr();
                        self.staged.push(d);
                        p
                    }
                };
                k += 1;
            }
            if k == 0 {
                break;
            }
            // SAFETY: `raw` holds `k` valid mbufs we own (in `pkts` or
            // `staged`); queue 0 of our port is used by no one else. The
            // driver takes ownership of the first `s` it returns; the rest
            // stay ours.
            let s =
                usize::from(unsafe { ffi::sy_tx_burst(self.port, 0, raw.as_mut_ptr(), k as u16) });
            let taken = &raw[..s];
            for d in self.staged.drain(..) {
                if taken.contains(&d.as_ptr()) {
                    let _ = d.into_raw(); // the driver frees it once sent
                }
                // Copies the driver did not take are freed here.
            }
            for m in pkts.drain(..s) {
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += m.len() as u64;
                match m.into_dpdk() {
                    Ok(d) => {
                        let _ = d.into_raw(); // the driver's now
                    }
                    Err(ours) => pool.free(ours),
                }
            }
            sent += s;
            if s < k {
                break;
            }
        }
        self.stats.tx_full += pkts.len() as u64;
        sent
    }

    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn stats(&self) -> PortStats {
        self.stats
    }

    fn wait(&mut self, timeout: Duration) {
        if self.idle {
            std::thread::sleep(timeout.min(IDLE_NAP));
        }
    }
}
