//! The `pcap` backend: frames from a pcap or pcapng capture are the receive side;
//! transmitted frames are written to a pcap file (Ethernet link type) that
//! Wireshark and `tshark -r` read.
//!
//! The capture is read and indexed once when the port opens, so `rx_burst` is a
//! copy from memory into pool buffers: no parsing or allocation per frame, which is
//! what a replay benchmark needs.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::time::Duration;

use pcap_file::pcap::{PcapPacket, PcapParser, PcapWriter};
use pcap_file::pcapng::{Block, PcapNgParser};

use crate::{Mbuf, NicError, Pool, Port, PortStats};

/// A port replaying a capture file and optionally recording what it sends.
pub struct PcapPort {
    mac: [u8; 6],
    data: Vec<u8>,
    /// (offset, length) of each frame in `data`.
    frames: Vec<(usize, usize)>,
    next: usize,
    writer: Option<(String, PcapWriter<BufWriter<File>>)>,
    /// Timestamp written on transmitted frames; advanced by the caller.
    tx_time: Duration,
    stats: PortStats,
}

impl std::fmt::Debug for PcapPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcapPort")
            .field("frames", &self.frames.len())
            .field("next", &self.next)
            .field("recording", &self.writer.as_ref().map(|w| &w.0))
            .finish()
    }
}

fn pcap_err(path: &Path, reason: impl std::fmt::Display) -> NicError {
    NicError::Pcap { path: path.display().to_string(), reason: reason.to_string() }
}

/// A capture read into memory: its bytes, and the (offset, length) of each
/// packet's data within them.
pub type IndexedCapture = (Vec<u8>, Vec<(usize, usize)>);

/// Reads a pcap or pcapng file into memory and indexes its packets.
pub fn index_capture(path: &Path) -> Result<IndexedCapture, NicError> {
    let data = std::fs::read(path).map_err(|e| pcap_err(path, e))?;
    let frames = index_bytes(&data).map_err(|e| pcap_err(path, e))?;
    Ok((data, frames))
}

fn index_bytes(data: &[u8]) -> Result<Vec<(usize, usize)>, String> {
    let base = data.as_ptr() as usize;
    let offset_of = |s: &[u8]| s.as_ptr() as usize - base;
    let mut frames = Vec::new();
    let magic = data.get(..4).ok_or("file is shorter than a capture header")?;
    if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
        let (mut rest, mut parser) = PcapNgParser::new(data).map_err(|e| e.to_string())?;
        while !rest.is_empty() {
            let (r, block) = parser.next_block(rest).map_err(|e| e.to_string())?;
            let frame: Option<&[u8]> = match &block {
                Block::EnhancedPacket(b) => match &b.data {
                    std::borrow::Cow::Borrowed(s) => Some(s),
                    std::borrow::Cow::Owned(_) => None,
                },
                Block::SimplePacket(b) => match &b.data {
                    std::borrow::Cow::Borrowed(s) => Some(s),
                    std::borrow::Cow::Owned(_) => None,
                },
                _ => None,
            };
            if let Some(s) = frame {
                frames.push((offset_of(s), s.len()));
            }
            rest = r;
        }
    } else {
        let (mut rest, parser) = PcapParser::new(data).map_err(|e| e.to_string())?;
        if parser.header().datalink != pcap_file::DataLink::ETHERNET {
            return Err(format!("link type {:?} is not Ethernet", parser.header().datalink));
        }
        while !rest.is_empty() {
            let (r, pkt) = parser.next_packet(rest).map_err(|e| e.to_string())?;
            if let std::borrow::Cow::Borrowed(s) = pkt.data {
                frames.push((offset_of(s), s.len()));
            }
            rest = r;
        }
    }
    Ok(frames)
}

/// Opens a pcap writer (Ethernet link type, microsecond timestamps).
pub fn create_writer(path: &Path) -> Result<PcapWriter<BufWriter<File>>, NicError> {
    let f = File::create(path).map_err(|e| pcap_err(path, e))?;
    PcapWriter::new(BufWriter::new(f)).map_err(|e| pcap_err(path, e))
}

impl PcapPort {
    /// Opens `input` as the receive side and, if given, creates `output` for
    /// transmitted frames.
    pub fn open(mac: [u8; 6], input: &Path, output: Option<&Path>) -> Result<PcapPort, NicError> {
        let (data, frames) = index_capture(input)?;
        let writer = match output {
            Some(p) => Some((p.display().to_string(), create_writer(p)?)),
            None => None,
        };
        Ok(PcapPort {
            mac,
            data,
            frames,
            next: 0,
            writer,
            tx_time: Duration::ZERO,
            stats: PortStats::default(),
        })
    }

    /// Parses `nic = "pcap:IN[,OUT]"`'s argument.
    pub fn open_spec(mac: [u8; 6], spec: &str) -> Result<PcapPort, NicError> {
        let (input, output) = match spec.split_once(',') {
            Some((i, o)) => (i, Some(Path::new(o))),
            None => (spec, None),
        };
        PcapPort::open(mac, Path::new(input), output)
    }

    /// Number of frames in the capture.
    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }

    /// Sets the timestamp written on the next transmitted frames.
    pub fn set_time(&mut self, t: Duration) {
        self.tx_time = t;
    }

    /// Starts the capture over from its first frame (for repeated replays).
    pub fn rewind(&mut self) {
        self.next = 0;
    }

    /// Finishes the output file: flushes it and stops recording.
    pub fn close_output(&mut self) -> Result<(), NicError> {
        if let Some((path, w)) = self.writer.take() {
            use std::io::Write;
            w.into_writer().flush().map_err(|e| pcap_err(Path::new(&path), e))?;
        }
        Ok(())
    }
}

impl Port for PcapPort {
    fn rx_burst(&mut self, pool: &mut Pool, out: &mut Vec<Mbuf>, max: usize) -> usize {
        let mut n = 0;
        while n < max && self.next < self.frames.len() {
            let (off, len) = self.frames[self.next];
            self.next += 1;
            let mut m = pool.alloc();
            if !m.fill(&self.data[off..off + len]) {
                self.stats.rx_oversize += 1;
                pool.free(m);
                continue;
            }
            self.stats.rx_frames += 1;
            self.stats.rx_bytes += len as u64;
            out.push(m);
            n += 1;
        }
        n
    }

    fn tx_burst(&mut self, pkts: &mut Vec<Mbuf>, pool: &mut Pool) -> usize {
        let n = pkts.len();
        for m in pkts.drain(..) {
            if let Some((_, w)) = &mut self.writer {
                let pkt = PcapPacket::new(self.tx_time, m.len() as u32, m.data());
                if w.write_packet(&pkt).is_err() {
                    self.stats.tx_full += 1;
                }
            }
            self.stats.tx_frames += 1;
            self.stats.tx_bytes += m.len() as u64;
            pool.free(m);
        }
        n
    }

    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn stats(&self) -> PortStats {
        self.stats
    }

    fn rx_exhausted(&self) -> bool {
        self.next >= self.frames.len()
    }
}

impl Drop for PcapPort {
    fn drop(&mut self) {
        let _ = self.close_output();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_capture_replays() {
        let dir = std::env::temp_dir().join(format!("sy-nic-pcap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = dir.join("a.pcap");
        {
            let mut w = create_writer(&first).unwrap();
            for i in 0..5u8 {
                let frame = vec![i; 60 + i as usize];
                w.write_packet(&PcapPacket::new(
                    Duration::from_millis(i as u64),
                    60 + i as u32,
                    &frame,
                ))
                .unwrap();
            }
        }
        let second = dir.join("b.pcap");
        let mut pool = Pool::new(16, 2048);
        {
            let mut port = PcapPort::open([2; 6], &first, Some(&second)).unwrap();
            assert_eq!(port.frame_count(), 5);
            let mut burst = Vec::new();
            assert_eq!(port.rx_burst(&mut pool, &mut burst, 3), 3);
            assert_eq!(port.rx_burst(&mut pool, &mut burst, 32), 2);
            assert!(port.rx_exhausted());
            assert_eq!(burst[4].data(), &[4u8; 64][..]);
            port.tx_burst(&mut burst, &mut pool);
        }
        let (_, frames) = index_capture(&second).unwrap();
        assert_eq!(frames.iter().map(|f| f.1).collect::<Vec<_>>(), vec![60, 61, 62, 63, 64]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn garbage_file_is_an_error_not_a_panic() {
        assert!(index_bytes(b"").is_err());
        assert!(index_bytes(b"not a capture at all").is_err());
        assert!(index_bytes(&[0x0a, 0x0d, 0x0d, 0x0a, 1, 2]).is_err());
    }
}
