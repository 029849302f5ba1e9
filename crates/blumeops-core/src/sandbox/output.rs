//! The step's output: stdout and stderr chunks turned into lines for the callback, the
//! combined log, the stdout file and a bounded tail.
//!
//! Memory stays bounded whatever the command prints: a line longer than [`MAX_LINE`] bytes
//! is cut into pieces of that size, the tail holds at most `tail_lines` lines of at most
//! [`MAX_TAIL_LINE`] bytes.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{Error, Stream};

/// Longest line passed on whole; longer ones are cut.
pub(super) const MAX_LINE: usize = 64 * 1024;
/// Longest line kept in the tail; longer ones are cut and end with `…`.
pub(super) const MAX_TAIL_LINE: usize = 4096;

/// Where output goes.
pub(super) struct Sink<'a> {
    log: BufWriter<File>,
    log_path: PathBuf,
    stdout: BufWriter<File>,
    stdout_path: PathBuf,
    partial: [Vec<u8>; 2],
    tail: VecDeque<String>,
    tail_lines: usize,
    on_line: &'a mut dyn FnMut(Stream, &str),
}

fn create(path: &Path) -> Result<BufWriter<File>, Error> {
    File::create(path)
        .map(|f| BufWriter::with_capacity(64 * 1024, f))
        .map_err(|source| Error::Io {
            action: "create output file",
            path: path.to_owned(),
            source,
        })
}

impl<'a> Sink<'a> {
    pub(super) fn new(
        log_path: &Path,
        stdout_path: &Path,
        tail_lines: usize,
        on_line: &'a mut dyn FnMut(Stream, &str),
    ) -> Result<Self, Error> {
        Ok(Self {
            log: create(log_path)?,
            log_path: log_path.to_owned(),
            stdout: create(stdout_path)?,
            stdout_path: stdout_path.to_owned(),
            partial: [Vec::new(), Vec::new()],
            tail: VecDeque::with_capacity(tail_lines.min(1024)),
            tail_lines,
            on_line,
        })
    }

    /// Take a chunk of `stream`'s output.
    pub(super) fn push(&mut self, stream: Stream, mut data: &[u8]) -> Result<(), Error> {
        if stream == Stream::Stdout {
            self.stdout
                .write_all(data)
                .map_err(|source| self.write_error(&self.stdout_path, source))?;
        }
        let i = stream as usize;
        while !data.is_empty() {
            let room = MAX_LINE - self.partial[i].len();
            match data[..data.len().min(room)]
                .iter()
                .position(|&b| b == b'\n')
            {
                Some(n) => {
                    let mut line = std::mem::take(&mut self.partial[i]);
                    line.extend_from_slice(&data[..n]);
                    self.line(stream, &line)?;
                    line.clear();
                    self.partial[i] = line;
                    data = &data[n + 1..];
                }
                None if data.len() >= room => {
                    let mut line = std::mem::take(&mut self.partial[i]);
                    line.extend_from_slice(&data[..room]);
                    self.line(stream, &line)?;
                    line.clear();
                    self.partial[i] = line;
                    data = &data[room..];
                }
                None => {
                    self.partial[i].extend_from_slice(data);
                    data = &[];
                }
            }
        }
        Ok(())
    }

    /// `stream` reached its end: pass on its unterminated last line.
    pub(super) fn finish_stream(&mut self, stream: Stream) -> Result<(), Error> {
        let line = std::mem::take(&mut self.partial[stream as usize]);
        if !line.is_empty() {
            self.line(stream, &line)?;
        }
        Ok(())
    }

    /// Add a line from blumeops itself (e.g. why the command could not start) to the log and
    /// the tail.
    pub(super) fn note(&mut self, text: &str) -> Result<(), Error> {
        self.line(Stream::Stderr, format!("blumeops: {text}").as_bytes())
    }

    fn line(&mut self, stream: Stream, line: &[u8]) -> Result<(), Error> {
        self.log
            .write_all(line)
            .and_then(|()| self.log.write_all(b"\n"))
            .map_err(|source| self.write_error(&self.log_path, source))?;
        let text = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line));
        (self.on_line)(stream, &text);
        if self.tail_lines > 0 {
            if self.tail.len() == self.tail_lines {
                self.tail.pop_front();
            }
            self.tail.push_back(truncate(&text));
        }
        Ok(())
    }

    fn write_error(&self, path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            action: "write output file",
            path: path.to_owned(),
            source,
        }
    }

    /// Flush the files and return the tail.
    pub(super) fn finish(mut self) -> Result<Vec<String>, Error> {
        for stream in [Stream::Stdout, Stream::Stderr] {
            self.finish_stream(stream)?;
        }
        self.log
            .flush()
            .map_err(|source| self.write_error(&self.log_path, source))?;
        self.stdout
            .flush()
            .map_err(|source| self.write_error(&self.stdout_path, source))?;
        Ok(self.tail.into())
    }
}

fn truncate(text: &str) -> String {
    if text.len() <= MAX_TAIL_LINE {
        return text.to_owned();
    }
    let mut end = MAX_TAIL_LINE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(
        chunks: &[(Stream, &[u8])],
        tail: usize,
    ) -> (Vec<(Stream, String)>, Vec<String>, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let (log, out) = (dir.path().join("log"), dir.path().join("out"));
        let mut lines = Vec::new();
        let mut on_line = |s: Stream, l: &str| lines.push((s, l.to_owned()));
        let mut sink = Sink::new(&log, &out, tail, &mut on_line).unwrap();
        for (s, c) in chunks {
            sink.push(*s, c).unwrap();
        }
        let tail = sink.finish().unwrap();
        let log = std::fs::read_to_string(&log).unwrap();
        let out = std::fs::read_to_string(&out).unwrap();
        (lines, tail, log, out)
    }

    #[test]
    fn splits_lines_across_chunks_and_streams() {
        let (lines, tail, log, out) = collect(
            &[
                (Stream::Stdout, b"hel"),
                (Stream::Stderr, b"warn\r\n"),
                (Stream::Stdout, b"lo\nwor"),
                (Stream::Stdout, b"ld"),
            ],
            10,
        );
        assert_eq!(
            lines,
            [
                (Stream::Stderr, "warn".to_owned()),
                (Stream::Stdout, "hello".to_owned()),
                (Stream::Stdout, "world".to_owned()),
            ]
        );
        assert_eq!(tail, ["warn", "hello", "world"]);
        assert_eq!(log, "warn\r\nhello\nworld\n");
        assert_eq!(out, "hello\nworld");
    }

    #[test]
    fn cuts_long_lines_and_bounds_the_tail() {
        let long = vec![b'x'; MAX_LINE * 2 + 5];
        let (lines, tail, _, _) =
            collect(&[(Stream::Stdout, &long), (Stream::Stdout, b"\na\nb\n")], 2);
        let lens: Vec<usize> = lines.iter().map(|(_, l)| l.len()).collect();
        assert_eq!(lens, [MAX_LINE, MAX_LINE, 5, 1, 1]);
        assert_eq!(tail, ["a", "b"]);
        assert_eq!(
            truncate(&"é".repeat(MAX_TAIL_LINE)).len(),
            MAX_TAIL_LINE + "…".len()
        );
    }
}
