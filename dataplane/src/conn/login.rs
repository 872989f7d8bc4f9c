//! Login phase: feeds Login PDUs to the pure negotiation engine and turns its result into a
//! session (TSIH, reinstatement, nexus, limits).

use super::env::ConnEnv;
use super::{ConnCore, FrameLimits, Phase, Session, CMD_WINDOW};
use crate::reactor_ctx::ReactorMsg;
use crate::session::{Admission, SessionKey};
use crate::target::{LOCAL_RELATIVE_PORT_ID, LOCAL_TPG_ID, PORTAL_GROUP_TAG};
use tandem_iscsi::login::{LoginOutcome, SessionType};
use tandem_iscsi::wire::{login_status, Bhs, LoginRequestRepr, BHS_LEN};
use tandem_scsi::{Nexus, TargetPort};

impl ConnCore {
    pub(super) fn on_login(&mut self, ctx: &mut impl ConnEnv, bhs: &[u8; BHS_LEN], data: &[u8]) {
        let req = match LoginRequestRepr::parse(&Bhs::new_unchecked(&bhs[..])) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(conn = self.id, peer = %self.peer, error = %e, "malformed login request; closing");
                self.phase = Phase::Closing;
                return;
            }
        };
        let Some(login) = self.login.as_mut() else {
            self.phase = Phase::Closing;
            return;
        };
        let registry = ctx.shared().registry.clone();
        let mut step = login.handle(&req, data, &*registry);
        let initiator = login.initiator_name().map(str::to_owned);
        step.response.statsn = self.next_statsn();
        step.response.expcmdsn = req.cmdsn;
        step.response.maxcmdsn = req.cmdsn.wrapping_add(CMD_WINDOW - 1);
        if let (Some(name), Some(ip)) = (initiator.as_deref(), self.peer_ip) {
            let throttle = &ctx.shared().auth_failures;
            let now = ctx.now();
            let auth_failed = matches!(step.outcome, LoginOutcome::Failed)
                && (step.response.status_class, step.response.status_detail)
                    == tandem_iscsi::wire::login_status::AUTHENTICATION_FAILURE;
            if auth_failed {
                let (count, until) = throttle.failed(name, ip, now);
                tracing::warn!(conn = self.id, peer = %self.peer, initiator = name, failures = count,
                    blocked_for_ms = until.map(|t| t.saturating_duration_since(now).as_millis() as u64),
                    "authentication failed");
            } else if throttle.blocked(name, ip, now) {
                // Too many recent failures from this initiator and address: refuse this
                // attempt whatever it carries, so secrets cannot be guessed at speed.
                tracing::warn!(conn = self.id, peer = %self.peer, initiator = name,
                    "login refused: too many failed authentications, retry later");
                let (class, detail) = tandem_iscsi::wire::login_status::AUTHENTICATION_FAILURE;
                step.response.status_class = class;
                step.response.status_detail = detail;
                step.response.transit = false;
                self.queue_login_response(&step.response, Vec::new());
                self.phase = Phase::Closing;
                return;
            } else if matches!(step.outcome, LoginOutcome::Complete(_)) {
                throttle.succeeded(name, ip);
            }
        }
        match step.outcome {
            LoginOutcome::Continue => {
                self.queue_login_response(&step.response, step.data);
            }
            LoginOutcome::Failed => {
                tracing::warn!(conn = self.id, peer = %self.peer, class = step.response.status_class,
                    detail = step.response.status_detail, "login failed");
                self.queue_login_response(&step.response, step.data);
                self.phase = Phase::Closing;
            }
            LoginOutcome::Complete(result) => {
                if result.tsih != 0 {
                    // Adding a connection to an existing session (MC/S): not supported,
                    // MaxConnections is 1.
                    (step.response.status_class, step.response.status_detail) =
                        login_status::SESSION_DOES_NOT_EXIST;
                    step.response.transit = false;
                    self.queue_login_response(&step.response, Vec::new());
                    self.phase = Phase::Closing;
                    return;
                }
                let discovery = matches!(result.session_type, SessionType::Discovery);
                let target = if discovery {
                    None
                } else {
                    result
                        .target_name
                        .as_deref()
                        .and_then(|n| registry.target(n))
                };
                if !discovery && target.is_none() {
                    // The target vanished between negotiation and now.
                    (step.response.status_class, step.response.status_detail) =
                        login_status::NOT_FOUND;
                    step.response.transit = false;
                    self.queue_login_response(&step.response, Vec::new());
                    self.phase = Phase::Closing;
                    return;
                }
                let key = SessionKey {
                    initiator: result.initiator_name.clone(),
                    isid: result.isid,
                    target: target.as_ref().map(|t| t.iqn.clone()).unwrap_or_default(),
                };
                let tsih = match ctx.shared().sessions.admit(key.clone(), self.conn_ref()) {
                    Admission::New { tsih, replaced } => {
                        if let Some(old) = replaced {
                            tracing::info!(
                                conn = self.id,
                                old_conn = old.conn_id,
                                "session reinstatement: closing the old session"
                            );
                            let delivered = ctx.shared().reactor(old.reactor).map(|r| {
                                r.send(ReactorMsg::CloseConnection {
                                    conn_id: old.conn_id,
                                })
                                .is_ok()
                            });
                            if delivered == Some(false) {
                                // The old session would live on beside the new one: refuse
                                // the login instead (the initiator retries).
                                tracing::error!(
                                    conn = self.id,
                                    old_conn = old.conn_id,
                                    "cannot reach the old session's reactor; login refused"
                                );
                                ctx.shared().sessions.remove(&key, self.conn_ref());
                                (step.response.status_class, step.response.status_detail) =
                                    login_status::OUT_OF_RESOURCES;
                                step.response.transit = false;
                                self.queue_login_response(&step.response, Vec::new());
                                self.phase = Phase::Closing;
                                return;
                            }
                        }
                        tsih
                    }
                    Admission::Full => {
                        (step.response.status_class, step.response.status_detail) =
                            login_status::OUT_OF_RESOURCES;
                        step.response.transit = false;
                        self.queue_login_response(&step.response, Vec::new());
                        self.phase = Phase::Closing;
                        return;
                    }
                };
                step.response.tsih = tsih;
                let nexus = Nexus {
                    id: ctx.shared().new_nexus_id(),
                    initiator_name: result.initiator_name.clone(),
                    isid: result.isid,
                    port: TargetPort {
                        relative_port_id: target
                            .as_ref()
                            .map_or(LOCAL_RELATIVE_PORT_ID, |t| t.relative_port_id),
                        tpg_id: target.as_ref().map_or(LOCAL_TPG_ID, |t| t.tpg_id),
                        target_name: key.target.clone(),
                        tpgt: PORTAL_GROUP_TAG,
                    },
                };
                if let Some(t) = &target {
                    for dev in &t.luns {
                        dev.lu.nexus_added(&nexus);
                    }
                }
                // The final login response goes out under the login-phase rules (no
                // digests); the new limits apply from the next PDU on.
                self.queue_login_response(&step.response, step.data);
                let params = result.params.clone();
                self.limits = FrameLimits {
                    header_digest: params.header_digest,
                    data_digest: params.data_digest,
                    max_data_len: params.max_recv_data_segment_length_target as usize,
                };
                self.tx.digests.header = params.header_digest;
                self.tx.digests.data = params.data_digest;
                tracing::info!(conn = self.id, peer = %self.peer, initiator = %result.initiator_name,
                    target = %key.target, tsih, discovery, "login complete");
                self.session = Some(Session {
                    key,
                    discovery,
                    tsih,
                    params,
                    target,
                    nexus: std::sync::Arc::new(nexus),
                    exp_cmdsn: result.first_cmdsn,
                    max_cmdsn: step.response.maxcmdsn,
                });
                self.login = None;
                self.prelogin = None;
                self.phase = Phase::FullFeature;
            }
        }
    }

    fn queue_login_response(
        &mut self,
        resp: &tandem_iscsi::wire::LoginResponseRepr,
        data: Vec<u8>,
    ) {
        let mut bhs = [0u8; BHS_LEN];
        resp.emit(&mut bhs);
        self.tx.push_owned(bhs, data, None);
    }
}
