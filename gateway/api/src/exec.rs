//! The exec framed protocol: how a `palisade sandbox exec` session travels
//! CLI → gateway → sidecar → shim session socket and back.
//!
//! Owns: the frame types and the codec. Must never allocate a payload larger
//! than [`MAX_FRAME_LEN`] on behalf of a peer: the length is checked before
//! the payload is read.
//!
//! Wire format of one frame: 1 byte type, 4 bytes big-endian payload length
//! (at most [`MAX_FRAME_LEN`]), then the payload.
//!
//! | type | frame      | payload                                        |
//! |------|------------|------------------------------------------------|
//! | 1    | `Open`     | JSON [`ExecOpen`]                              |
//! | 2    | `Stdin`    | bytes                                          |
//! | 3    | `StdinEof` | empty                                          |
//! | 4    | `Resize`   | JSON [`WindowSize`] (`{rows, cols}`)           |
//! | 5    | `Signal`   | 1 byte signal number                           |
//! | 16   | `Stdout`   | bytes                                          |
//! | 17   | `Stderr`   | bytes                                          |
//! | 18   | `Exit`     | JSON [`ExecExit`]                              |
//! | 19   | `Error`    | JSON [`ExecError`] (`{message}`)               |
//!
//! The client sends `Open` first, then any of `Stdin`, `StdinEof`, `Resize`,
//! `Signal`. The server answers with `Stdout`/`Stderr` and ends with exactly
//! one `Exit` (or `Error`), then closes.

use std::io;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest payload a frame may carry (1 MiB). A larger length is a protocol error.
pub const MAX_FRAME_LEN: usize = 1024 * 1024;

/// Bytes of a frame header (type + length).
pub const FRAME_HEADER_LEN: usize = 5;

/// The `Upgrade:` token of `POST /v1/sandboxes/{id}/exec`.
pub const EXEC_UPGRADE_PROTOCOL: &str = "palisade-exec";

/// Default path of the shim's session socket in the shared dir.
pub const DEFAULT_SHIM_SOCKET: &str = crate::defaults::SHIM_SOCKET;

const TYPE_OPEN: u8 = 1;
const TYPE_STDIN: u8 = 2;
const TYPE_STDIN_EOF: u8 = 3;
const TYPE_RESIZE: u8 = 4;
const TYPE_SIGNAL: u8 = 5;
const TYPE_STDOUT: u8 = 16;
const TYPE_STDERR: u8 = 17;
const TYPE_EXIT: u8 = 18;
const TYPE_ERROR: u8 = 19;

/// The first frame of a session: what to run and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExecOpen {
    /// Program and arguments; `argv[0]` is looked up in the agent's `PATH`.
    pub argv: Vec<String>,
    /// Run under a pseudo-terminal (stdout and stderr then arrive merged as `Stdout`).
    pub tty: bool,
    /// Initial terminal size (ignored without `tty`; 0 = leave the default).
    #[serde(default)]
    pub rows: u16,
    #[serde(default)]
    pub cols: u16,
}

/// A terminal window size (`Resize` payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
}

/// How the session's command ended: exactly one of `code` (normal exit) or
/// `signal` (killed by that signal number) is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExecExit {
    #[serde(default)]
    pub code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
}

impl ExecExit {
    /// The shell-style exit status: the code, or 128 + signal number.
    pub fn status(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(code), _) => code,
            (None, Some(signal)) => 128 + signal,
            (None, None) => 255,
        }
    }
}

/// Why the server could not run or continue a session (`Error` payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExecError {
    pub message: String,
}

/// One frame of the exec protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Open(ExecOpen),
    Stdin(Vec<u8>),
    StdinEof,
    Resize(WindowSize),
    Signal(u8),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(ExecExit),
    Error(ExecError),
}

impl Frame {
    /// An `Error` frame with this message.
    pub fn error(message: impl Into<String>) -> Self {
        Frame::Error(ExecError {
            message: message.into(),
        })
    }

    /// The frame's type byte.
    pub fn type_byte(&self) -> u8 {
        match self {
            Frame::Open(_) => TYPE_OPEN,
            Frame::Stdin(_) => TYPE_STDIN,
            Frame::StdinEof => TYPE_STDIN_EOF,
            Frame::Resize(_) => TYPE_RESIZE,
            Frame::Signal(_) => TYPE_SIGNAL,
            Frame::Stdout(_) => TYPE_STDOUT,
            Frame::Stderr(_) => TYPE_STDERR,
            Frame::Exit(_) => TYPE_EXIT,
            Frame::Error(_) => TYPE_ERROR,
        }
    }

    /// A short name for logs and audit (`open`, `stdout`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Open(_) => "open",
            Frame::Stdin(_) => "stdin",
            Frame::StdinEof => "stdin_eof",
            Frame::Resize(_) => "resize",
            Frame::Signal(_) => "signal",
            Frame::Stdout(_) => "stdout",
            Frame::Stderr(_) => "stderr",
            Frame::Exit(_) => "exit",
            Frame::Error(_) => "error",
        }
    }

    /// Encode the payload (without the header).
    fn payload(&self) -> io::Result<Vec<u8>> {
        fn json<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
            serde_json::to_vec(value).map_err(io::Error::other)
        }
        Ok(match self {
            Frame::Open(open) => json(open)?,
            Frame::Resize(size) => json(size)?,
            Frame::Exit(exit) => json(exit)?,
            Frame::Error(error) => json(error)?,
            Frame::Stdin(bytes) | Frame::Stdout(bytes) | Frame::Stderr(bytes) => bytes.clone(),
            Frame::StdinEof => Vec::new(),
            Frame::Signal(signo) => vec![*signo],
        })
    }

    /// Encode the whole frame (header + payload).
    pub fn encode(&self) -> io::Result<Vec<u8>> {
        let payload = self.payload()?;
        if payload.len() > MAX_FRAME_LEN {
            return Err(invalid(format!(
                "exec frame {} payload is {} bytes, over the {MAX_FRAME_LEN}-byte limit; send it in smaller chunks",
                self.name(),
                payload.len()
            )));
        }
        let len = u32::try_from(payload.len())
            .map_err(|_| invalid("exec frame payload length does not fit in 32 bits"))?;
        let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
        out.push(self.type_byte());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&payload);
        Ok(out)
    }

    /// Decode a frame from its type byte and payload.
    pub fn decode(type_byte: u8, payload: Vec<u8>) -> io::Result<Frame> {
        fn json<T: serde::de::DeserializeOwned>(kind: &str, payload: &[u8]) -> io::Result<T> {
            serde_json::from_slice(payload)
                .map_err(|e| invalid(format!("malformed exec {kind} frame: {e}")))
        }
        Ok(match type_byte {
            TYPE_OPEN => Frame::Open(json("open", &payload)?),
            TYPE_STDIN => Frame::Stdin(payload),
            TYPE_STDIN_EOF => {
                if !payload.is_empty() {
                    return Err(invalid(
                        "malformed exec stdin_eof frame: payload must be empty",
                    ));
                }
                Frame::StdinEof
            }
            TYPE_RESIZE => Frame::Resize(json("resize", &payload)?),
            TYPE_SIGNAL => match payload.as_slice() {
                [signo] => Frame::Signal(*signo),
                _ => {
                    return Err(invalid(format!(
                        "malformed exec signal frame: payload must be 1 byte, got {}",
                        payload.len()
                    )));
                }
            },
            TYPE_STDOUT => Frame::Stdout(payload),
            TYPE_STDERR => Frame::Stderr(payload),
            TYPE_EXIT => Frame::Exit(json("exit", &payload)?),
            TYPE_ERROR => Frame::Error(json("error", &payload)?),
            other => return Err(invalid(format!("unknown exec frame type {other}"))),
        })
    }
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Read one frame. `Ok(None)` is a clean end of stream between frames; an end
/// of stream inside a frame is `UnexpectedEof`; a length over
/// [`MAX_FRAME_LEN`] or an unknown type is `InvalidData` (nothing is allocated
/// for an oversize length).
pub async fn read_frame<R: AsyncRead + Unpin + ?Sized>(
    reader: &mut R,
) -> io::Result<Option<Frame>> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    let mut filled = 0;
    while filled < header.len() {
        let n = reader.read(&mut header[filled..]).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "exec stream ended inside a frame header ({filled} of {FRAME_HEADER_LEN} bytes)"
                ),
            ));
        }
        filled += n;
    }
    let type_byte = header[0];
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(invalid(format!(
            "exec frame of type {type_byte} announces {len} bytes, over the {MAX_FRAME_LEN}-byte limit"
        )));
    }
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).await.map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("exec stream ended inside a frame payload (type {type_byte}, {len} bytes announced)"),
            )
        } else {
            e
        }
    })?;
    Frame::decode(type_byte, payload).map(Some)
}

/// Write one frame (header and payload in one write) and flush.
pub async fn write_frame<W: AsyncWrite + Unpin + ?Sized>(
    writer: &mut W,
    frame: &Frame,
) -> io::Result<()> {
    let bytes = frame.encode()?;
    writer.write_all(&bytes).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_frames() -> Vec<Frame> {
        vec![
            Frame::Open(ExecOpen {
                argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
                tty: true,
                rows: 24,
                cols: 80,
            }),
            Frame::Stdin(b"hello\n".to_vec()),
            Frame::Stdin(Vec::new()),
            Frame::StdinEof,
            Frame::Resize(WindowSize {
                rows: 50,
                cols: 132,
            }),
            Frame::Signal(15),
            Frame::Stdout(vec![0, 1, 2, 255]),
            Frame::Stderr(b"oops".to_vec()),
            Frame::Exit(ExecExit {
                code: Some(3),
                signal: None,
            }),
            Frame::Exit(ExecExit {
                code: None,
                signal: Some(9),
            }),
            Frame::error("no such command"),
        ]
    }

    #[tokio::test]
    async fn every_frame_round_trips_through_one_stream() {
        let frames = all_frames();
        let mut buf = Vec::new();
        for frame in &frames {
            write_frame(&mut buf, frame).await.unwrap();
        }
        let mut reader = buf.as_slice();
        for frame in &frames {
            assert_eq!(read_frame(&mut reader).await.unwrap().as_ref(), Some(frame));
        }
        assert_eq!(read_frame(&mut reader).await.unwrap(), None);
    }

    #[test]
    fn wire_layout_matches_the_contract() {
        let bytes = Frame::Signal(2).encode().unwrap();
        assert_eq!(bytes, vec![5, 0, 0, 0, 1, 2]);
        let bytes = Frame::StdinEof.encode().unwrap();
        assert_eq!(bytes, vec![3, 0, 0, 0, 0]);
        let bytes = Frame::Stdout(b"ab".to_vec()).encode().unwrap();
        assert_eq!(bytes, vec![16, 0, 0, 0, 2, b'a', b'b']);
        let bytes = Frame::Resize(WindowSize { rows: 1, cols: 2 })
            .encode()
            .unwrap();
        assert_eq!(bytes[0], 4);
        assert_eq!(&bytes[5..], br#"{"rows":1,"cols":2}"#);
        let bytes = Frame::Exit(ExecExit {
            code: Some(0),
            signal: None,
        })
        .encode()
        .unwrap();
        assert_eq!(bytes[0], 18);
        assert_eq!(&bytes[5..], br#"{"code":0,"signal":null}"#);
        assert_eq!(Frame::error("x").encode().unwrap()[0], 19);
        assert_eq!(Frame::Stderr(Vec::new()).encode().unwrap()[0], 17);
        assert_eq!(Frame::Stdin(Vec::new()).encode().unwrap()[0], 2);
    }

    #[tokio::test]
    async fn truncated_header_is_unexpected_eof() {
        for cut in 1..FRAME_HEADER_LEN {
            let bytes = Frame::Stdout(b"abc".to_vec()).encode().unwrap();
            let mut reader = &bytes[..cut];
            let err = read_frame(&mut reader).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}");
        }
    }

    #[tokio::test]
    async fn truncated_payload_is_unexpected_eof() {
        let bytes = Frame::Stdout(b"abcdef".to_vec()).encode().unwrap();
        for cut in FRAME_HEADER_LEN..bytes.len() {
            let mut reader = &bytes[..cut];
            let err = read_frame(&mut reader).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}");
            assert!(err.to_string().contains("payload"), "{err}");
        }
    }

    #[tokio::test]
    async fn oversize_length_is_rejected_before_reading_the_payload() {
        let mut bytes = vec![TYPE_STDOUT];
        bytes.extend_from_slice(&((MAX_FRAME_LEN as u32) + 1).to_be_bytes());
        let mut reader = bytes.as_slice();
        let err = read_frame(&mut reader).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("limit"), "{err}");

        let mut bytes = vec![TYPE_STDIN];
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        let mut reader = bytes.as_slice();
        assert_eq!(
            read_frame(&mut reader).await.unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[tokio::test]
    async fn exactly_max_length_is_accepted() {
        let frame = Frame::Stdin(vec![7u8; MAX_FRAME_LEN]);
        let bytes = frame.encode().unwrap();
        let mut reader = bytes.as_slice();
        assert_eq!(read_frame(&mut reader).await.unwrap(), Some(frame));
    }

    #[test]
    fn oversize_frame_is_refused_on_encode() {
        let err = Frame::Stdout(vec![0u8; MAX_FRAME_LEN + 1])
            .encode()
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn unknown_type_and_malformed_payloads_are_invalid_data() {
        let cases: Vec<Vec<u8>> = vec![
            vec![99, 0, 0, 0, 0],
            vec![TYPE_SIGNAL, 0, 0, 0, 0],
            vec![TYPE_SIGNAL, 0, 0, 0, 2, 1, 2],
            vec![TYPE_STDIN_EOF, 0, 0, 0, 1, 0],
            vec![TYPE_OPEN, 0, 0, 0, 2, b'{', b'x'],
            vec![TYPE_RESIZE, 0, 0, 0, 2, b'{', b'}'],
        ];
        for bytes in cases {
            let mut reader = bytes.as_slice();
            let err = read_frame(&mut reader).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bytes:?}");
        }
    }

    #[test]
    fn exit_status_is_code_or_128_plus_signal() {
        let code = ExecExit {
            code: Some(7),
            signal: None,
        };
        let signal = ExecExit {
            code: None,
            signal: Some(15),
        };
        assert_eq!(code.status(), 7);
        assert_eq!(signal.status(), 143);
    }

    #[test]
    fn open_defaults_window_size() {
        let open: ExecOpen = serde_json::from_str(r#"{"argv":["id"],"tty":false}"#).unwrap();
        assert_eq!((open.rows, open.cols), (0, 0));
    }
}
