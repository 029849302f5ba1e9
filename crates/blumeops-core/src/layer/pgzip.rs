//! Parallel gzip: the input is cut into fixed-size blocks, each block is deflated on its own
//! by a pool of threads, and the pieces are joined into one gzip member (the idea of pigz).
//!
//! The output depends only on the input bytes, the block size and the level, never on the
//! number of threads or their timing, so layer digests stay reproducible. Each block but the
//! last ends with a sync flush (an empty stored block, byte-aligned), so the raw deflate
//! pieces concatenate into one valid stream; the last block is finished normally. The CRC32
//! and length for the trailer are computed on the writer's thread as data arrives.
//!
//! A block that does not compress (random bytes, already compressed files) is written as
//! stored deflate blocks instead: deflating it at the full level costs most of a layer's
//! compression time for nothing. Whether a block is stored is decided from the block's own
//! bytes (a fast deflate of four slices of it), so the output stays a function of the input.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Uncompressed bytes per block. Changing it changes every digest.
pub const BLOCK_SIZE: usize = 1 << 20;

/// gzip header: magic, deflate, no flags, mtime 0, no extra flags, OS "unknown" (255).
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

struct Job {
    seq: u64,
    data: Vec<u8>,
    last: bool,
}

type Done = (u64, io::Result<Vec<u8>>);

/// A gzip encoder that compresses blocks on several threads.
pub struct ParallelGzip<W: Write> {
    out: Option<W>,
    level: u32,
    threads: usize,
    buf: Vec<u8>,
    crc: flate2::Crc,
    next_seq: u64,
    next_write: u64,
    pending: BTreeMap<u64, Vec<u8>>,
    jobs: Option<mpsc::SyncSender<Job>>,
    done_rx: Option<mpsc::Receiver<Done>>,
    workers: Vec<JoinHandle<()>>,
    in_flight: usize,
}

/// Bytes of each of the four slices of a block that are test-compressed.
const SAMPLE_SLICE: usize = 16 * 1024;

/// A block whose slices do not shrink below this share of their size (per mille) at level 1
/// is stored rather than deflated. Changing it changes digests.
const STORE_ABOVE_PER_MILLE: usize = 985;

/// The level to deflate `data` at: `level`, or 0 (stored) when it does not compress.
fn block_level(level: u32, data: &[u8]) -> io::Result<u32> {
    if data.len() < 4 * SAMPLE_SLICE {
        return Ok(level);
    }
    let mut compressed = 0;
    for i in 0..4 {
        let start = i * (data.len() / 4);
        compressed += deflate_raw(1, &data[start..start + SAMPLE_SLICE], true)?.len();
    }
    Ok(
        if compressed * 1000 >= 4 * SAMPLE_SLICE * STORE_ABOVE_PER_MILLE {
            0
        } else {
            level
        },
    )
}

fn deflate_block(level: u32, data: &[u8], last: bool) -> io::Result<Vec<u8>> {
    deflate_raw(block_level(level, data)?, data, last)
}

fn deflate_raw(level: u32, data: &[u8], last: bool) -> io::Result<Vec<u8>> {
    let mut c = flate2::Compress::new(flate2::Compression::new(level), false);
    let mut out = Vec::with_capacity(data.len() / 2 + 1024);
    let flush = if last {
        flate2::FlushCompress::Finish
    } else {
        flate2::FlushCompress::Sync
    };
    loop {
        let consumed = c.total_in() as usize;
        if out.capacity() - out.len() < 64 * 1024 {
            out.reserve(64 * 1024);
        }
        let status = c
            .compress_vec(&data[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let done_input = c.total_in() as usize == data.len();
        match status {
            flate2::Status::StreamEnd => return Ok(out),
            _ if done_input && !last && out.capacity() > out.len() => return Ok(out),
            _ => {}
        }
    }
}

impl<W: Write> ParallelGzip<W> {
    /// An encoder writing to `out` at `level`, using `threads` compression threads.
    pub fn new(mut out: W, level: u32, threads: usize) -> io::Result<Self> {
        out.write_all(&HEADER)?;
        Ok(Self {
            out: Some(out),
            level,
            threads: threads.max(1),
            buf: Vec::with_capacity(BLOCK_SIZE),
            crc: flate2::Crc::new(),
            next_seq: 0,
            next_write: 0,
            pending: BTreeMap::new(),
            jobs: None,
            done_rx: None,
            workers: Vec::new(),
            in_flight: 0,
        })
    }

    fn start_pool(&mut self) {
        // Bounded queue: at most ~2 blocks per thread waiting, so memory stays bounded.
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(self.threads);
        let job_rx = std::sync::Arc::new(std::sync::Mutex::new(job_rx));
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        for _ in 0..self.threads {
            let (job_rx, done_tx, level) = (job_rx.clone(), done_tx.clone(), self.level);
            self.workers.push(std::thread::spawn(move || {
                loop {
                    let job = match job_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    let result = deflate_block(level, &job.data, job.last);
                    if done_tx.send((job.seq, result)).is_err() {
                        return;
                    }
                }
            }));
        }
        self.jobs = Some(job_tx);
        self.done_rx = Some(done_rx);
    }

    /// Write every finished block that is next in order.
    fn drain(&mut self, wait_for: usize) -> io::Result<()> {
        while self.in_flight > wait_for {
            let rx = self.done_rx.as_ref().expect("pool started");
            let (seq, result) = rx
                .recv()
                .map_err(|_| io::Error::other("compression thread exited"))?;
            self.in_flight -= 1;
            self.pending.insert(seq, result?);
            while let Some(block) = self.pending.remove(&self.next_write) {
                self.out.as_mut().expect("not finished").write_all(&block)?;
                self.next_write += 1;
            }
        }
        Ok(())
    }

    fn submit(&mut self, last: bool) -> io::Result<()> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(BLOCK_SIZE));
        let seq = self.next_seq;
        self.next_seq += 1;
        if last && seq == 0 {
            // One block in all: no threads needed.
            let block = deflate_block(self.level, &data, true)?;
            self.next_write = 1;
            return self.out.as_mut().expect("not finished").write_all(&block);
        }
        if self.jobs.is_none() {
            self.start_pool();
        }
        self.jobs
            .as_ref()
            .expect("pool started")
            .send(Job { seq, data, last })
            .map_err(|_| io::Error::other("compression threads exited"))?;
        self.in_flight += 1;
        // Keep at most one block per thread (plus one) in flight: memory stays near
        // 2 MiB per thread whatever the layer size.
        self.drain(self.threads + 1)
    }

    /// Compress what is left, write the trailer and return the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.submit(true)?;
        self.drain(0)?;
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        let mut out = self.out.take().expect("not finished");
        out.write_all(&self.crc.sum().to_le_bytes())?;
        out.write_all(&self.crc.amount().to_le_bytes())?;
        Ok(out)
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(BLOCK_SIZE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.crc.update(&data[..n]);
        if self.buf.len() == BLOCK_SIZE {
            self.submit(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Drop for ParallelGzip<W> {
    fn drop(&mut self) {
        // Close the queue so idle workers exit.
        self.jobs = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    fn sample(len: usize) -> Vec<u8> {
        // Half compressible text, half pseudo-random bytes.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..len)
            .map(|i| {
                if (i / 4096) % 2 == 0 {
                    b"blumeops layer data "[i % 20]
                } else {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                }
            })
            .collect()
    }

    #[test]
    fn round_trips_and_is_independent_of_thread_count() {
        for len in [
            0,
            1,
            1000,
            BLOCK_SIZE - 1,
            BLOCK_SIZE,
            BLOCK_SIZE + 1,
            5 * BLOCK_SIZE + 12345,
        ] {
            let data = sample(len);
            let mut outputs = Vec::new();
            for threads in [1, 2, 3, 8] {
                let mut enc = ParallelGzip::new(Vec::new(), 6, threads).unwrap();
                // Odd write sizes, to cross block boundaries mid-write.
                for chunk in data.chunks(77_777) {
                    enc.write_all(chunk).unwrap();
                }
                let out = enc.finish().unwrap();
                assert_eq!(gunzip(&out), data, "len {len}, threads {threads}");
                outputs.push(out);
            }
            assert!(
                outputs.windows(2).all(|w| w[0] == w[1]),
                "len {len}: output depends on threads"
            );
        }
    }

    #[test]
    fn output_is_a_single_gzip_member_the_system_gzip_reads() {
        let data = sample(3 * BLOCK_SIZE + 7);
        let mut enc = ParallelGzip::new(Vec::new(), 6, 2).unwrap();
        enc.write_all(&data).unwrap();
        let out = enc.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gz");
        std::fs::write(&path, &out).unwrap();
        let status = std::process::Command::new("gzip")
            .arg("-t")
            .arg(&path)
            .status();
        if let Ok(status) = status {
            assert!(status.success(), "gzip -t rejected the output");
        }
    }

    #[test]
    fn incompressible_blocks_are_stored_and_the_stream_stays_valid() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut data: Vec<u8> = (0..2 * BLOCK_SIZE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        data.extend(
            std::iter::repeat_n(b"text compresses well ".iter().copied(), 50_000).flatten(),
        );
        assert_eq!(block_level(6, &data[..BLOCK_SIZE]).unwrap(), 0);
        assert_eq!(
            block_level(6, &data[2 * BLOCK_SIZE..3 * BLOCK_SIZE]).unwrap(),
            6
        );
        let mut enc = ParallelGzip::new(Vec::new(), 6, 2).unwrap();
        enc.write_all(&data).unwrap();
        let out = enc.finish().unwrap();
        assert_eq!(gunzip(&out), data);
        // The random part costs its size plus stored-block headers; the text shrinks a lot.
        let text = data.len() - 2 * BLOCK_SIZE;
        assert!(out.len() > 2 * BLOCK_SIZE, "{}", out.len());
        assert!(
            out.len() < 2 * BLOCK_SIZE + 1024 + text / 20,
            "{}",
            out.len()
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gz");
        std::fs::write(&path, &out).unwrap();
        if let Ok(status) = std::process::Command::new("gzip")
            .arg("-t")
            .arg(&path)
            .status()
        {
            assert!(status.success(), "gzip -t rejected the output");
        }
    }
}
