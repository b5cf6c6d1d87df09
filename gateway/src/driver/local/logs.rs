//! Per-sandbox log files: the stdout/stderr of the sidecar and the shim,
//! one prefixed line at a time, bounded (one file rotated once) and readable
//! from a logical byte offset so `palisade sandbox logs --follow` can poll.
//! Must never: grow without bound, or block a child on a full pipe (the
//! pumps always drain).

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::driver::contract::LogChunk;

/// A line longer than this is cut (the rest is still drained).
const MAX_LINE: usize = 16 * 1024;
/// The most one read hands out.
const MAX_CHUNK: u64 = 256 * 1024;

#[derive(Debug)]
struct Inner {
    file: Option<File>,
    /// Bytes in the current file.
    len: u64,
    /// Bytes in the rotated file.
    rotated_len: u64,
    /// Bytes ever written (logical end offset).
    total: u64,
    agent_exit: Option<String>,
}

/// One sandbox's log: `sandbox.log` plus `sandbox.log.1`.
#[derive(Debug)]
pub struct LogSink {
    path: PathBuf,
    rotated: PathBuf,
    max_file_bytes: u64,
    /// `Some(prefix)`: also copy lines to our stderr (`palisade up` streams logs).
    echo: Option<String>,
    inner: Mutex<Inner>,
}

impl LogSink {
    pub fn create(dir: &Path, max_file_bytes: u64, echo: Option<String>) -> std::io::Result<Self> {
        let path = dir.join("sandbox.log");
        let rotated = dir.join("sandbox.log.1");
        let file = open_private(&path)?;
        Ok(LogSink {
            path,
            rotated,
            max_file_bytes: max_file_bytes.max(4096),
            echo,
            inner: Mutex::new(Inner {
                file: Some(file),
                len: 0,
                rotated_len: 0,
                total: 0,
                agent_exit: None,
            }),
        })
    }

    /// Append one line (a newline is added).
    pub fn line(&self, source: &str, text: &[u8]) {
        let text = String::from_utf8_lossy(text);
        let text = text.trim_end_matches(['\n', '\r']);
        let line = format!("{source} | {text}\n");
        if let Some(prefix) = &self.echo {
            eprint!("{prefix}{line}");
        }
        let mut inner = self.inner.lock();
        if inner.len + line.len() as u64 > self.max_file_bytes {
            inner.file = None;
            if fs::rename(&self.path, &self.rotated).is_ok() {
                inner.rotated_len = inner.len;
            }
            inner.len = 0;
            inner.file = open_private(&self.path).ok();
        }
        if let Some(f) = inner.file.as_mut()
            && f.write_all(line.as_bytes()).is_ok()
        {
            inner.len += line.len() as u64;
            inner.total += line.len() as u64;
        }
    }

    /// Record how the agent ended (also as a log line).
    pub fn agent_exited(&self, how: String) {
        self.line("palisade", format!("agent {how}").as_bytes());
        self.inner.lock().agent_exit = Some(how);
    }

    /// Bytes from logical offset `after` on (what is still kept of them).
    pub fn read(&self, after: u64) -> LogChunk {
        let inner = self.inner.lock();
        let current_start = inner.total - inner.len;
        let rotated_start = current_start - inner.rotated_len;
        let mut from = after.clamp(rotated_start, inner.total);
        let mut text = Vec::new();
        if from < current_start {
            let n = (current_start - from).min(MAX_CHUNK);
            read_range(&self.rotated, from - rotated_start, n, &mut text);
            from += n;
        }
        if from >= current_start && (text.len() as u64) < MAX_CHUNK {
            let n = (inner.total - from).min(MAX_CHUNK - text.len() as u64);
            read_range(&self.path, from - current_start, n, &mut text);
            from += n;
        }
        let done = from >= inner.total;
        LogChunk {
            text,
            next: from,
            // Report the exit only once everything before it was handed out.
            agent_exit: if done { inner.agent_exit.clone() } else { None },
        }
    }
}

fn open_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

fn read_range(path: &Path, offset: u64, len: u64, out: &mut Vec<u8>) {
    if let Ok(mut f) = File::open(path)
        && f.seek(SeekFrom::Start(offset)).is_ok()
    {
        let _ = f.take(len).read_to_end(out);
    }
}

/// Drain `pipe` line by line into `sink` on a thread of its own.
pub fn pump<R: Read + Send + 'static>(
    pipe: R,
    sink: Arc<LogSink>,
    source: &'static str,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match read_line_capped(&mut reader, &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => sink.line(source, &buf),
            }
        }
    })
}

/// Like `read_until(b'\n')` but keeps at most [`MAX_LINE`] bytes of a line.
fn read_line_capped<R: BufRead>(r: &mut R, out: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut consumed = 0;
    loop {
        let (done, used) = {
            let available = r.fill_buf()?;
            if available.is_empty() {
                return Ok(consumed);
            }
            match available.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let room = MAX_LINE.saturating_sub(out.len());
                    out.extend_from_slice(&available[..i.min(room)]);
                    (true, i + 1)
                }
                None => {
                    let room = MAX_LINE.saturating_sub(out.len());
                    out.extend_from_slice(&available[..available.len().min(room)]);
                    (false, available.len())
                }
            }
        };
        r.consume(used);
        consumed += used;
        if done {
            return Ok(consumed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_and_reads_from_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LogSink::create(dir.path(), 4096, None).unwrap();
        for i in 0..200 {
            sink.line("agent", format!("line {i:04}").as_bytes());
        }
        // 200 lines of 18 bytes = 3600: no rotation yet.
        let all = sink.read(0);
        assert_eq!(all.next, 3600);
        assert!(String::from_utf8_lossy(&all.text).starts_with("agent | line 0000\n"));
        for i in 200..400 {
            sink.line("agent", format!("line {i:04}").as_bytes());
        }
        // Rotated once: the oldest lines are still there, in order.
        let chunk = sink.read(0);
        let text = String::from_utf8_lossy(&chunk.text).into_owned();
        assert!(text.starts_with("agent | line 0000\n"), "{text}");
        assert!(text.ends_with("agent | line 0399\n"), "{text}");
        let tail = sink.read(chunk.next - 18);
        assert_eq!(String::from_utf8_lossy(&tail.text), "agent | line 0399\n");
        assert_eq!(tail.agent_exit, None);
        sink.agent_exited("exited with status 0".into());
        let end = sink.read(tail.next);
        assert_eq!(end.agent_exit.as_deref(), Some("exited with status 0"));
        // Two more rotations drop the oldest lines: reading from 0 starts later.
        for i in 400..1000 {
            sink.line("agent", format!("line {i:04}").as_bytes());
        }
        let late = sink.read(0);
        assert!(!String::from_utf8_lossy(&late.text).contains("line 0000"));
        assert!(
            std::fs::metadata(dir.path().join("sandbox.log"))
                .unwrap()
                .len()
                <= 4096
        );
    }

    #[test]
    fn long_lines_are_cut_not_buffered() {
        let data = [vec![b'x'; MAX_LINE * 3], b"\nshort\n".to_vec()].concat();
        let mut r = BufReader::new(&data[..]);
        let mut buf = Vec::new();
        read_line_capped(&mut r, &mut buf).unwrap();
        assert_eq!(buf.len(), MAX_LINE);
        buf.clear();
        read_line_capped(&mut r, &mut buf).unwrap();
        assert_eq!(buf, b"short");
    }
}
