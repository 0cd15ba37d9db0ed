//! A blocking control-socket client.

use crate::proto::{ErrorBody, Reply, Request};
use serde::de::DeserializeOwned;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a request did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Cannot reach the fabric.
    #[error("cannot connect to the fabric at {path}: {source} (is vwfabric running? is --socket right?)")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The connection broke.
    #[error("control socket I/O failed: {0}")]
    Io(#[from] io::Error),
    /// The fabric sent something that is not a reply.
    #[error("unexpected reply from the fabric: {0}")]
    Protocol(String),
    /// The fabric refused the request.
    #[error("{}", .0.message)]
    Refused(ErrorBody),
}

/// A connection to a fabric's control socket.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client, ClientError> {
        let path = path.as_ref();
        let stream =
            UnixStream::connect(path).map_err(|source| ClientError::Connect { path: path.to_owned(), source })?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        Ok(Client { reader: BufReader::new(stream.try_clone()?), writer: stream })
    }

    /// Sends a request and returns the raw reply.
    pub fn call(&mut self, request: &Request) -> Result<Reply, ClientError> {
        let mut line = serde_json::to_vec(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        // A fabric that refuses the connection (too many clients) answers
        // and closes at once: its reply is still there to read when the
        // write fails.
        let written = self.writer.write_all(&line);
        let mut s = String::new();
        match self.reader.read_line(&mut s) {
            Ok(0) | Err(_) if written.is_err() => return Err(written.unwrap_err().into()),
            Ok(0) => return Err(ClientError::Protocol("the fabric closed the connection".into())),
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        serde_json::from_str(&s).map_err(|e| ClientError::Protocol(format!("{e}: {}", s.trim())))
    }

    /// Sends a request and decodes a successful result as `T`.
    pub fn request<T: DeserializeOwned>(&mut self, request: &Request) -> Result<T, ClientError> {
        let reply = self.call(request)?;
        if !reply.ok {
            return Err(ClientError::Refused(
                reply.error.unwrap_or(ErrorBody { code: crate::ErrorCode::BadRequest, message: "refused".into() }),
            ));
        }
        serde_json::from_value(reply.result.unwrap_or(serde_json::Value::Null))
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }
}
