//! Client side of the control <-> data plane socket (see `tandem_config::ipc`).

use std::path::Path;
use std::time::Duration;

use tandem_config::ipc::{Body, Envelope, ErrorCode, IpcError, Request, Response, LINE_BYTES_MAX};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// How long one request may take before the data plane is considered hung.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Unrelated lines (other ids, peer requests) tolerated while waiting for one answer.
const STRAY_LINES_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("data plane socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("data plane did not answer within {0:?}")]
    Timeout(Duration),
    #[error("data plane closed the control socket")]
    Closed,
    #[error("data plane sent a bad message: {0}")]
    Protocol(String),
    #[error("data plane refused ({code}): {message}")]
    Refused { code: ErrorCode, message: String },
}

impl From<IpcError> for CallError {
    fn from(e: IpcError) -> Self {
        CallError::Protocol(e.to_string())
    }
}

/// One connection; requests are sent one at a time (the owner serializes access).
pub struct IpcClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
    line: Vec<u8>,
}

impl IpcClient {
    /// Connects and says `Hello`.
    pub async fn connect(path: &Path) -> Result<IpcClient, CallError> {
        let stream = UnixStream::connect(path).await?;
        let (r, w) = stream.into_split();
        let mut client = IpcClient {
            reader: BufReader::new(r),
            writer: w,
            next_id: 1,
            line: Vec::new(),
        };
        client.call_ok(Request::Hello).await?;
        Ok(client)
    }

    /// Sends `request`, waits for its answer; an `Error` answer becomes [`CallError::Refused`].
    pub async fn call_ok(&mut self, request: Request) -> Result<Response, CallError> {
        match self.call(request, CALL_TIMEOUT).await? {
            Response::Error { code, message } => Err(CallError::Refused { code, message }),
            other => Ok(other),
        }
    }

    pub async fn call(
        &mut self,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        let id = self.next_id;
        self.next_id += 1;
        let line = Envelope::request(id, request).to_line();
        match tokio::time::timeout(timeout, self.exchange(id, line)).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout(timeout)),
        }
    }

    async fn exchange(&mut self, id: u64, line: String) -> Result<Response, CallError> {
        self.writer.write_all(line.as_bytes()).await?;
        self.writer.flush().await?;
        for _ in 0..STRAY_LINES_MAX {
            let env = match Envelope::from_line(&self.read_line().await?) {
                Ok(env) => env,
                Err(IpcError::Version { got, id: got_id }) if got_id == id => {
                    return Err(CallError::Protocol(format!(
                        "data plane speaks IPC version {got}"
                    )))
                }
                Err(e) => return Err(e.into()),
            };
            match env.body {
                Body::Response(resp) if env.id == id => return Ok(resp),
                Body::Response(_) => {
                    tracing::warn!(id = env.id, "ignoring IPC response for an unknown id")
                }
                Body::Request(req) => {
                    tracing::warn!(?req, "data plane sent a request; not supported yet");
                    let answer = Envelope::response(
                        env.id,
                        Response::error(
                            ErrorCode::Unsupported,
                            "control does not serve requests yet",
                        ),
                    );
                    self.writer.write_all(answer.to_line().as_bytes()).await?;
                }
            }
        }
        Err(CallError::Protocol(format!(
            "no answer to request {id} after {STRAY_LINES_MAX} other messages"
        )))
    }

    /// Reads one line, refusing lines over `LINE_BYTES_MAX`.
    async fn read_line(&mut self) -> Result<String, CallError> {
        self.line.clear();
        loop {
            let buf = self.reader.fill_buf().await?;
            if buf.is_empty() {
                return Err(CallError::Closed);
            }
            let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..=i], true),
                None => (buf, false),
            };
            let n = chunk.len();
            self.line.extend_from_slice(chunk);
            self.reader.consume(n);
            if self.line.len() > LINE_BYTES_MAX {
                return Err(CallError::Protocol(format!(
                    "line longer than {LINE_BYTES_MAX} bytes"
                )));
            }
            if done {
                return String::from_utf8(std::mem::take(&mut self.line))
                    .map_err(|_| CallError::Protocol("line is not UTF-8".into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_config::ipc::StatsReport;
    use tokio::net::UnixListener;

    /// A fake data plane: answers each request with `answer(request)`, as raw lines.
    async fn fake_peer(dir: &Path, answer: fn(u64, Request) -> Vec<String>) -> std::path::PathBuf {
        let path = dir.join("dp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let env = Envelope::from_line(&line).unwrap();
                let Body::Request(req) = env.body else {
                    panic!("peer got a response")
                };
                for out in answer(env.id, req) {
                    w.write_all(out.as_bytes()).await.unwrap();
                }
            }
        });
        path
    }

    #[tokio::test]
    async fn hello_then_calls() {
        let dir = tempfile::tempdir().unwrap();
        let path = fake_peer(dir.path(), |id, req| {
            let resp = match req {
                Request::Hello => Response::Ok,
                Request::Stats => Response::Stats(StatsReport::default()),
                _ => Response::error(ErrorCode::NotFound, "no such device"),
            };
            // A stray response for another id first: the client must skip it.
            vec![
                Envelope::response(id + 1000, Response::Ok).to_line(),
                Envelope::response(id, resp).to_line(),
            ]
        })
        .await;
        let mut c = IpcClient::connect(&path).await.unwrap();
        assert_eq!(
            c.call_ok(Request::Stats).await.unwrap(),
            Response::Stats(StatsReport::default())
        );
        match c.call_ok(Request::RemoveDevice { name: "x".into() }).await {
            Err(CallError::Refused {
                code: ErrorCode::NotFound,
                message,
            }) => assert_eq!(message, "no such device"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn version_mismatch_garbage_and_silence() {
        let dir = tempfile::tempdir().unwrap();
        let path = fake_peer(dir.path(), |id, _| {
            vec![format!(
                "{{\"version\":9,\"id\":{id},\"body\":{{\"response\":{{\"result\":\"ok\"}}}}}}\n"
            )]
        })
        .await;
        assert!(
            matches!(IpcClient::connect(&path).await, Err(CallError::Protocol(m)) if m.contains("version 9"))
        );

        let dir = tempfile::tempdir().unwrap();
        let path = fake_peer(dir.path(), |_, _| vec!["not json\n".into()]).await;
        assert!(matches!(
            IpcClient::connect(&path).await,
            Err(CallError::Protocol(_))
        ));

        let dir = tempfile::tempdir().unwrap();
        let path = fake_peer(dir.path(), |id, req| match req {
            Request::Hello => vec![Envelope::response(id, Response::Ok).to_line()],
            _ => vec![],
        })
        .await;
        let mut c = IpcClient::connect(&path).await.unwrap();
        let r = c.call(Request::Status, Duration::from_millis(100)).await;
        assert!(matches!(r, Err(CallError::Timeout(_))), "{r:?}");
    }

    #[tokio::test]
    async fn closed_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            drop(stream);
        });
        assert!(matches!(
            IpcClient::connect(&path).await,
            Err(CallError::Closed | CallError::Io(_))
        ));
        assert!(matches!(
            IpcClient::connect(&dir.path().join("none")).await,
            Err(CallError::Io(_))
        ));
    }
}
