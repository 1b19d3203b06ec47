//! The control socket: redb locks the state file, so while the daemon runs,
//! `afas-sync sync`, `status`, `plan approve` and friends send their request
//! here and the daemon runs it on its open store. Without a daemon the CLI
//! opens the file itself. One JSON line in; out, one JSON line per exported
//! row (an export streams) and one with the answer. The answer is typed:
//! the CLI renders it, the daemon never prints for a person.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::app::{AppError, Reply, Request};
use crate::config::Config;
use crate::model::Provisioned;

/// Requests are small; anything bigger is not ours.
pub const MAX_REQUEST: u64 = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Call {
    pub request: Request,
}

/// One line of the daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    /// One row of an export, as it is read.
    Row(Box<Provisioned>),
    /// The answer; the last line.
    Done(Box<Result<Reply, AppError>>),
}

/// `<state directory>/afas-sync.sock`, beside the state file.
pub fn socket_path(config: &Config) -> PathBuf {
    let dir = config
        .store
        .path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    dir.join("afas-sync.sock")
}

/// Sends a request to a running daemon; an export's rows go to `row` as
/// they arrive. `Ok(None)`: no daemon listens.
pub async fn call(
    config: &Config,
    request: &Request,
    row: &mut (dyn FnMut(&Provisioned) + Send),
) -> Result<Option<Result<Reply, AppError>>, String> {
    let path = socket_path(config);
    let stream = match UnixStream::connect(&path).await {
        Ok(s) => s,
        // No socket, or a stale one from a daemon that died: no daemon.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(format!("cannot reach the daemon at {}: {e}", path.display())),
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(&Call {
        request: request.clone(),
    })
    .map_err(|e| e.to_string())?;
    line.push('\n');
    write
        .write_all(line.as_bytes())
        .await
        .map_err(|e| format!("control socket: {e}"))?;
    let mut reader = BufReader::new(read);
    loop {
        let mut text = String::new();
        let n = reader
            .read_line(&mut text)
            .await
            .map_err(|e| format!("control socket: {e}"))?;
        if n == 0 {
            return Err("the daemon closed the control socket before it answered".into());
        }
        match serde_json::from_str::<Line>(&text) {
            Ok(Line::Row(p)) => row(&p),
            Ok(Line::Done(result)) => return Ok(Some(*result)),
            Err(e) => return Err(format!("the daemon sent an unreadable answer: {e}")),
        }
    }
}

/// Binds the socket with mode 0600, replacing a stale file. Only called
/// after the state file is open, so no other daemon owns it.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(listener)
}

/// Reads one call from a connection, bounded in size.
pub async fn read_call(stream: &mut UnixStream) -> Result<Call, String> {
    let mut buf = Vec::new();
    let mut limited = (&mut *stream).take(MAX_REQUEST);
    let mut reader = BufReader::new(&mut limited);
    reader.read_until(b'\n', &mut buf).await.map_err(|e| e.to_string())?;
    if !buf.ends_with(b"\n") {
        return Err(format!("request larger than {MAX_REQUEST} bytes or cut off"));
    }
    serde_json::from_slice(&buf).map_err(|e| format!("unreadable request: {e}"))
}

pub async fn write_line(stream: &mut UnixStream, line: &Line) -> std::io::Result<()> {
    let mut text = serde_json::to_string(line).map_err(std::io::Error::other)?;
    text.push('\n');
    stream.write_all(text.as_bytes()).await
}
