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

/// Most blocks between being handed to the threads and being written, whatever the number of
/// threads: each holds its input and its output (about 2 MiB), so a layer's compression holds
/// a few MiB on any machine.
pub const MAX_IN_FLIGHT: usize = 3;

/// Most blocks in flight in the whole process, over every layer compressed at once (steps of
/// independent stages run concurrently, one per `--jobs`): a fixed budget, whatever the cores.
pub const MAX_IN_FLIGHT_TOTAL: usize = 6;

/// The process-wide count of blocks in flight, against [`MAX_IN_FLIGHT_TOTAL`].
struct Budget {
    used: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
}

static BUDGET: Budget = Budget {
    used: std::sync::Mutex::new(0),
    freed: std::sync::Condvar::new(),
};

impl Budget {
    fn used(&self) -> std::sync::MutexGuard<'_, usize> {
        self.used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn release(&self, blocks: usize) {
        if blocks > 0 {
            *self.used() -= blocks;
            self.freed.notify_all();
        }
    }
}

struct Job {
    seq: u64,
    data: Vec<u8>,
    /// Where the block's deflate output goes (an emptied buffer, reused).
    out: Vec<u8>,
    last: bool,
}

/// A finished block: its sequence number, and its input (to reuse) and output buffers.
type Done = (u64, io::Result<(Vec<u8>, Vec<u8>)>);

/// A gzip encoder that compresses blocks on several threads.
pub struct ParallelGzip<W: Write> {
    out: Option<W>,
    level: u32,
    threads: usize,
    buf: Vec<u8>,
    crc: flate2::Crc,
    next_seq: u64,
    next_write: u64,
    pending: BTreeMap<u64, (Vec<u8>, Vec<u8>)>,
    jobs: Option<mpsc::SyncSender<Job>>,
    done_rx: Option<mpsc::Receiver<Done>>,
    workers: Vec<JoinHandle<()>>,
    in_flight: usize,
    /// Buffers of written blocks, for the next ones: inputs and outputs.
    spare_inputs: Vec<Vec<u8>>,
    spare_outputs: Vec<Vec<u8>>,
}

/// Bytes of each of the four slices of a block that are test-compressed.
const SAMPLE_SLICE: usize = 16 * 1024;

/// A block whose slices do not shrink below this share of their size (per mille) at level 1
/// is stored rather than deflated. Changing it changes digests.
const STORE_ABOVE_PER_MILLE: usize = 985;

/// One thread's deflate streams, reset for each block instead of made anew (a stream holds a
/// few hundred KiB of tables). A reset stream writes what a new one would.
struct Deflaters {
    level: u32,
    full: flate2::Compress,
    stored: flate2::Compress,
    sample: flate2::Compress,
}

impl Deflaters {
    fn new(level: u32) -> Self {
        Self {
            level,
            full: flate2::Compress::new(flate2::Compression::new(level), false),
            stored: flate2::Compress::new(flate2::Compression::new(0), false),
            sample: flate2::Compress::new(flate2::Compression::new(1), false),
        }
    }

    /// The level to deflate `data` at: the level, or 0 (stored) when it does not compress.
    fn block_level(&mut self, data: &[u8], scratch: &mut Vec<u8>) -> io::Result<u32> {
        if data.len() < 4 * SAMPLE_SLICE {
            return Ok(self.level);
        }
        let mut compressed = 0;
        for i in 0..4 {
            let start = i * (data.len() / 4);
            scratch.clear();
            deflate_raw(
                &mut self.sample,
                &data[start..start + SAMPLE_SLICE],
                true,
                scratch,
            )?;
            compressed += scratch.len();
        }
        Ok(
            if compressed * 1000 >= 4 * SAMPLE_SLICE * STORE_ABOVE_PER_MILLE {
                0
            } else {
                self.level
            },
        )
    }

    /// Deflate one block into `out` (emptied first), stored when it does not compress.
    fn block(&mut self, data: &[u8], last: bool, out: &mut Vec<u8>) -> io::Result<()> {
        if self.block_level(data, out)? == 0 {
            deflate_raw(&mut self.stored, data, last, out)
        } else {
            deflate_raw(&mut self.full, data, last, out)
        }
    }
}

/// Deflate `data` with `c` (reset first) into `out` (emptied first): a sync flush after it,
/// or the end of the stream when `last`.
///
/// Each call to the compressor is offered exactly the output space a new `Vec` of capacity
/// `data.len() / 2 + 1024`, grown by `reserve(64 KiB)` whenever less than that is left, would
/// offer. How a stored block is cut, and so the bytes, depends on that space; this keeps the
/// bytes what they have always been while `out` is a reused buffer of any capacity.
fn deflate_raw(
    c: &mut flate2::Compress,
    data: &[u8],
    last: bool,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    const STEP: usize = 64 * 1024;
    c.reset();
    out.clear();
    let flush = if last {
        flate2::FlushCompress::Finish
    } else {
        flate2::FlushCompress::Sync
    };
    let mut room = data.len() / 2 + 1024;
    loop {
        let len = out.len();
        if room - len < STEP {
            // What `Vec::reserve` does: at least double.
            room = (room * 2).max(len + STEP);
        }
        let (before_in, before_out) = (c.total_in(), c.total_out());
        out.resize(room, 0);
        let result = c.compress(&data[before_in as usize..], &mut out[len..], flush);
        out.truncate(len + (c.total_out() - before_out) as usize);
        let status = result.map_err(io::Error::other)?;
        let done_input = c.total_in() as usize == data.len();
        match status {
            flate2::Status::StreamEnd => return Ok(()),
            _ if done_input && !last && room > out.len() => return Ok(()),
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
            threads: threads.clamp(1, MAX_IN_FLIGHT),
            buf: Vec::with_capacity(BLOCK_SIZE),
            crc: flate2::Crc::new(),
            next_seq: 0,
            next_write: 0,
            pending: BTreeMap::new(),
            jobs: None,
            done_rx: None,
            workers: Vec::new(),
            in_flight: 0,
            spare_inputs: Vec::new(),
            spare_outputs: Vec::new(),
        })
    }

    fn start_pool(&mut self) {
        // The queue never holds more than the blocks in flight.
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(MAX_IN_FLIGHT);
        let job_rx = std::sync::Arc::new(std::sync::Mutex::new(job_rx));
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        for _ in 0..self.threads {
            let (job_rx, done_tx, level) = (job_rx.clone(), done_tx.clone(), self.level);
            self.workers.push(std::thread::spawn(move || {
                let mut deflaters = Deflaters::new(level);
                loop {
                    let job = match job_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(mut job) = job else { return };
                    let result = deflaters
                        .block(&job.data, job.last, &mut job.out)
                        .map(|()| (job.data, job.out));
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
            BUDGET.release(1);
            self.pending.insert(seq, result?);
            while let Some((input, block)) = self.pending.remove(&self.next_write) {
                self.out.as_mut().expect("not finished").write_all(&block)?;
                self.next_write += 1;
                self.spare_inputs.push(input);
                self.spare_outputs.push(block);
            }
        }
        Ok(())
    }

    fn submit(&mut self, last: bool) -> io::Result<()> {
        let next = match self.spare_inputs.pop() {
            Some(mut spare) => {
                spare.clear();
                spare
            }
            None if last => Vec::new(),
            None => Vec::with_capacity(BLOCK_SIZE),
        };
        let data = std::mem::replace(&mut self.buf, next);
        let out = self.spare_outputs.pop().unwrap_or_default();
        let seq = self.next_seq;
        self.next_seq += 1;
        if last && seq == 0 {
            // One block in all: no threads needed.
            let mut block = out;
            Deflaters::new(self.level).block(&data, true, &mut block)?;
            self.next_write = 1;
            return self.out.as_mut().expect("not finished").write_all(&block);
        }
        if self.jobs.is_none() {
            self.start_pool();
        }
        self.reserve_block()?;
        self.jobs
            .as_ref()
            .expect("pool started")
            .send(Job {
                seq,
                data,
                out,
                last,
            })
            .map_err(|_| {
                BUDGET.release(1);
                io::Error::other("compression threads exited")
            })?;
        self.in_flight += 1;
        // A fixed number of blocks in flight, so memory does not grow with the cores.
        self.drain(MAX_IN_FLIGHT - 1)
    }

    /// Take one block of the process-wide budget. While none is free, write this encoder's
    /// own finished blocks, which frees its share; with none of its own in flight, wait for
    /// another encoder to free one (each of those has blocks in flight, so it goes on).
    fn reserve_block(&mut self) -> io::Result<()> {
        loop {
            {
                let mut used = BUDGET.used();
                if *used < MAX_IN_FLIGHT_TOTAL {
                    *used += 1;
                    return Ok(());
                }
                if self.in_flight == 0 {
                    drop(
                        BUDGET
                            .freed
                            .wait(used)
                            .unwrap_or_else(std::sync::PoisonError::into_inner),
                    );
                    continue;
                }
            }
            self.drain(self.in_flight - 1)?;
        }
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
        // Blocks still in flight (after a failure) give their share of the budget back.
        BUDGET.release(self.in_flight);
        self.in_flight = 0;
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
        let mut d = Deflaters::new(6);
        assert_eq!(
            d.block_level(&data[..BLOCK_SIZE], &mut Vec::new()).unwrap(),
            0
        );
        assert_eq!(
            d.block_level(&data[2 * BLOCK_SIZE..3 * BLOCK_SIZE], &mut Vec::new())
                .unwrap(),
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

    /// The encoder as first written: a new deflate stream and a new output `Vec` per block.
    /// Layer digests depend on these bytes, so the reused streams and buffers must give the
    /// same ones.
    fn fresh_deflate(level: u32, data: &[u8], last: bool) -> Vec<u8> {
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
            let status = c.compress_vec(&data[consumed..], &mut out, flush).unwrap();
            let done_input = c.total_in() as usize == data.len();
            match status {
                flate2::Status::StreamEnd => return out,
                _ if done_input && !last && out.capacity() > out.len() => return out,
                _ => {}
            }
        }
    }

    fn fresh_block(level: u32, data: &[u8], last: bool) -> Vec<u8> {
        let level = if data.len() < 4 * SAMPLE_SLICE {
            level
        } else {
            let sampled: usize = (0..4)
                .map(|i| {
                    let start = i * (data.len() / 4);
                    fresh_deflate(1, &data[start..start + SAMPLE_SLICE], true).len()
                })
                .sum();
            if sampled * 1000 >= 4 * SAMPLE_SLICE * STORE_ABOVE_PER_MILLE {
                0
            } else {
                level
            }
        };
        fresh_deflate(level, data, last)
    }

    #[test]
    fn reused_streams_and_buffers_write_the_bytes_of_fresh_ones() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut random = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        };
        // Incompressible, compressible, mixed and short blocks, in an order that hands each
        // kind buffers the other kinds grew.
        let mut data = random(2 * BLOCK_SIZE);
        data.extend(sample(3 * BLOCK_SIZE));
        data.extend(random(BLOCK_SIZE));
        data.extend(
            std::iter::repeat_n(b"text compresses well ".iter().copied(), 60_000).flatten(),
        );
        data.extend(random(70_000));
        let mut want = HEADER.to_vec();
        let blocks: Vec<&[u8]> = data.chunks(BLOCK_SIZE).collect();
        for (i, block) in blocks.iter().enumerate() {
            want.extend(fresh_block(6, block, i + 1 == blocks.len()));
        }
        let mut crc = flate2::Crc::new();
        crc.update(&data);
        want.extend(crc.sum().to_le_bytes());
        want.extend(crc.amount().to_le_bytes());
        for threads in [1, 2, 3] {
            let mut enc = ParallelGzip::new(Vec::new(), 6, threads).unwrap();
            for chunk in data.chunks(300_000) {
                enc.write_all(chunk).unwrap();
            }
            let got = enc.finish().unwrap();
            assert!(got == want, "{threads} threads: the bytes changed");
        }
        // The same through one stream, block after block.
        let mut d = Deflaters::new(6);
        let mut out = Vec::new();
        let mut got = Vec::new();
        for (i, block) in blocks.iter().enumerate() {
            d.block(block, i + 1 == blocks.len(), &mut out).unwrap();
            got.extend_from_slice(&out);
        }
        assert!(
            got == want[HEADER.len()..want.len() - 8],
            "one stream: the bytes changed"
        );
    }

    #[test]
    fn encoders_at_once_share_the_budget_and_all_finish() {
        let data = sample(7 * BLOCK_SIZE + 99);
        let want = {
            let mut enc = ParallelGzip::new(Vec::new(), 6, 2).unwrap();
            enc.write_all(&data).unwrap();
            enc.finish().unwrap()
        };
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let data = &data;
                    scope.spawn(move || {
                        let mut enc = ParallelGzip::new(Vec::new(), 6, 1 + i % 3).unwrap();
                        for chunk in data.chunks(100_000 + i * 7) {
                            enc.write_all(chunk).unwrap();
                            assert!(*BUDGET.used() <= MAX_IN_FLIGHT_TOTAL);
                        }
                        enc.finish().unwrap()
                    })
                })
                .collect();
            for h in handles {
                assert!(h.join().unwrap() == want);
            }
        });
        // An encoder dropped halfway gives its blocks back.
        let mut enc = ParallelGzip::new(Vec::new(), 6, 3).unwrap();
        enc.write_all(&data[..3 * BLOCK_SIZE]).unwrap();
        drop(enc);
        let mut enc = ParallelGzip::new(Vec::new(), 6, 3).unwrap();
        enc.write_all(&data).unwrap();
        assert!(enc.finish().unwrap() == want);
    }
}
