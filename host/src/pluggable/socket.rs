//! The Unix socket daprd finds the component by: claiming its path (a stale file left by a
//! crashed run is removed; a live one served by another process is refused), removing it on
//! exit, and numbering each accepted connection so that instances can tell when every
//! connection daprd opened for them is gone.

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt as _};

/// Names one accepted connection for as long as the process runs; in every request's
/// extensions (tonic's connect info).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ConnectionId(u64);

/// The socket file we bound; removed when dropped (if it is still ours).
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    /// Device and inode of the file we bound, so that we never remove a successor's.
    identity: (u64, u64),
}

impl SocketFile {
    /// Binds `path`, creating its folder if needed. A socket file nobody accepts on is
    /// removed first; one that a live process serves, or a file that is not a socket, is
    /// an error that says so.
    pub(crate) async fn claim(path: &Path) -> anyhow::Result<(Self, UnixListener)> {
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder)
                .with_context(|| format!("creating the socket folder {}", folder.display()))?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(found) if !found.file_type().is_socket() => anyhow::bail!(
                "{} exists and is not a socket; remove it or choose another --name",
                path.display()
            ),
            Ok(_) => match UnixStream::connect(path).await {
                Ok(_) => anyhow::bail!(
                    "another process is serving {}; stop it or choose another --name",
                    path.display()
                ),
                Err(_) => {
                    tracing::info!(socket = %path.display(), "removing the stale socket of an earlier run");
                    std::fs::remove_file(path)
                        .with_context(|| format!("removing the stale socket {}", path.display()))?;
                }
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(error).with_context(|| format!("checking {}", path.display()));
            }
        }
        let listener =
            UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
        let bound = std::fs::metadata(path)?;
        let file = Self {
            path: path.to_path_buf(),
            identity: (bound.dev(), bound.ino()),
        };
        Ok((file, listener))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// The connections `listener` accepts, each numbered; when one closes, its number is sent
/// on `closed`.
pub(crate) fn incoming(
    listener: UnixListener,
    closed: mpsc::UnboundedSender<ConnectionId>,
) -> impl Stream<Item = std::io::Result<Connection>> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    tokio_stream::wrappers::UnixListenerStream::new(listener).map(move |accepted| {
        accepted.map(|io| Connection {
            io,
            id: ConnectionId(NEXT.fetch_add(1, Ordering::Relaxed)),
            closed: closed.clone(),
        })
    })
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|found| (found.dev(), found.ino()) == self.identity);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// One accepted connection: the stream, its number, and word of its end.
#[derive(Debug)]
pub(crate) struct Connection {
    io: UnixStream,
    id: ConnectionId,
    closed: mpsc::UnboundedSender<ConnectionId>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let _ = self.closed.send(self.id);
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = ConnectionId;

    fn connect_info(&self) -> ConnectionId {
        self.id
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
