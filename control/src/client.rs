//! The `tandem` CLI's HTTP client and its error model (which maps to exit codes).

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::ErrorBody;

/// Exit codes of the `tandem` CLI.
pub mod exit {
    pub const OK: i32 = 0;
    /// Any other failure (server error, data plane refused, I/O).
    pub const FAILURE: i32 = 1;
    /// Bad command line (clap uses 2 as well).
    pub const USAGE: i32 = 2;
    /// The API could not be reached.
    pub const UNREACHABLE: i32 = 3;
    /// Missing or wrong token.
    pub const AUTH: i32 = 4;
    /// The named device/target/server/job does not exist.
    pub const NOT_FOUND: i32 = 5;
    /// Conflicts with the current state (exists already, in use, being created).
    pub const CONFLICT: i32 = 6;
    /// The request was refused as invalid (bad size, name, rule broken).
    pub const INVALID: i32 = 7;
    /// The data plane is not running.
    pub const UNAVAILABLE: i32 = 8;
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the Tandem API at {url}: {reason}\nis tandem-control running? (systemctl status tandem-control; --api URL or TANDEM_API to point elsewhere)")]
    Unreachable { url: String, reason: String },
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer from the API: {0}")]
    Decode(String),
}

impl ClientError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Unreachable { .. } => exit::UNREACHABLE,
            ClientError::Decode(_) => exit::FAILURE,
            ClientError::Api { status, .. } => match status {
                401 | 403 => exit::AUTH,
                404 => exit::NOT_FOUND,
                409 => exit::CONFLICT,
                400 | 422 => exit::INVALID,
                503 => exit::UNAVAILABLE,
                _ => exit::FAILURE,
            },
        }
    }
}

pub struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Client {
    /// `base` like `http://127.0.0.1:3261`.
    pub fn new(base: &str, token: &str) -> Client {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout(Duration::from_secs(120))
            .build();
        Client {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            agent,
        }
    }

    /// The same client for a call that may run long (e.g. `replica add` waits while the
    /// partner builds a thick image): no overall timeout short of `limit`.
    pub fn long(&self, limit: Duration) -> Client {
        Client {
            base: self.base.clone(),
            token: self.token.clone(),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(5))
                .timeout(limit)
                .build(),
        }
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, String), ClientError> {
        let url = format!("{}{}", self.base, path);
        let req = self
            .agent
            .request(method, &url)
            .set("Authorization", &format!("Bearer {}", self.token));
        let result = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        let resp = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => {
                return Err(ClientError::Unreachable {
                    url: self.base.clone(),
                    reason: t.to_string(),
                })
            }
        };
        let status = resp.status();
        let text = resp
            .into_string()
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        if status >= 400 {
            return Err(match serde_json::from_str::<ErrorBody>(&text) {
                Ok(e) => ClientError::Api {
                    status,
                    code: e.code,
                    message: e.error,
                },
                Err(_) => ClientError::Api {
                    status,
                    code: "http".into(),
                    message: format!("HTTP {status}: {text}"),
                },
            });
        }
        Ok((status, text))
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        decode(&self.call("GET", path, None)?.1)
    }

    pub fn get_text(&self, path: &str) -> Result<String, ClientError> {
        Ok(self.call("GET", path, None)?.1)
    }

    /// Sends JSON; returns the status (201/202 matter to callers) and the decoded body.
    pub fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &B,
    ) -> Result<(u16, T), ClientError> {
        let value = serde_json::to_value(body).map_err(|e| ClientError::Decode(e.to_string()))?;
        let (status, text) = self.call(method, path, Some(value))?;
        Ok((status, decode(&text)?))
    }

    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        decode(&self.call("DELETE", path, None)?.1)
    }
}

fn decode<T: DeserializeOwned>(text: &str) -> Result<T, ClientError> {
    serde_json::from_str(text).map_err(|e| ClientError::Decode(format!("{e}: {text}")))
}

/// Percent-encodes a path segment (IQNs contain ':').
pub fn segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
