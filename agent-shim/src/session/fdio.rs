//! Non-blocking reads and writes on a session command's pipes and PTY master.
//!
//! Both are wrapped in tokio's pipe types without their FIFO check (a PTY master is not
//! a FIFO but reads and writes the same way); this module makes them non-blocking first.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe::{Receiver, Sender};

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// The reading end (a pipe or a PTY master), registered with the runtime.
pub fn reader(fd: OwnedFd) -> io::Result<Receiver> {
    set_nonblocking(&fd)?;
    Receiver::from_owned_fd_unchecked(fd)
}

/// The writing end (a pipe or a PTY master), registered with the runtime.
pub fn writer(fd: OwnedFd) -> io::Result<Sender> {
    set_nonblocking(&fd)?;
    Sender::from_owned_fd_unchecked(fd)
}

/// Read what is available; 0 is end of stream, and so is `EIO`, which is how a PTY
/// master reports that every slave was closed. Never completes for `None`.
pub async fn read(rx: Option<&mut Receiver>, buf: &mut [u8]) -> io::Result<usize> {
    let Some(rx) = rx else {
        return std::future::pending().await;
    };
    match rx.read(buf).await {
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EIO as i32) => Ok(0),
        other => other,
    }
}

/// Write all of `buf`.
pub async fn write_all(tx: &mut Sender, buf: &[u8]) -> io::Result<()> {
    tx.write_all(buf).await
}
