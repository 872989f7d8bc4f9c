//! Target-side login negotiation (RFC 7143 §6, §12, §13): security stage with CHAP, operational
//! parameter negotiation, stage transitions, and the text continuation (C) bit.
//!
//! One [`LoginState`] per connection. Feed it every Login Request header and its data segment
//! (digests and padding already stripped); send back the [`LoginStep`]'s response header and
//! data. **The caller must set** in `LoginStep::response` before sending:
//!
//! * `statsn` – prefilled with the request's ExpStatSN; the runtime owns StatSN.
//! * `expcmdsn` / `maxcmdsn` – prefilled with the request's CmdSN (a window of one); the
//!   runtime owns the session's command window.
//! * `tsih` – left as the initiator sent it. On [`LoginOutcome::Complete`] of a new session
//!   (request TSIH 0) the runtime must assign a non-zero TSIH and put it in the response.
//!
//! Everything else (flags, stages, ISID, ITT, versions, status) is final.
//!
//! ```text
//!                       first PDU CSG=0                 first PDU CSG=1 (auth None only)
//!   (new) ───────────────────────► Security ───T,NSG=1──► Operational ───T,NSG=3──► Complete
//!                                     │  └──────────────T,NSG=3─────────────────────────▲
//!                                     └─ any error ─► Failed (response carries the status;
//!                                                     the runtime closes the connection)
//! ```

use std::collections::HashSet;
use std::fmt;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::chap::{self, ChapAlgorithm};
use crate::params::{SessionParams, MAX_LENGTH, MIN_LENGTH};
use crate::text::{emit_pairs, parse_pairs, TextLimits, MAX_SIMPLE_VALUE_LEN};
use crate::wire::{login_status, LoginRequestRepr, LoginResponseRepr, Stage};

/// iSCSI protocol version we speak (RFC 7143: 0x00).
pub const ISCSI_VERSION: u8 = 0x00;
/// Most Login Request PDUs accepted on one connection before giving up.
pub const MAX_LOGIN_PDUS: u32 = 64;
/// Most text bytes accumulated across PDUs with the C bit.
pub const MAX_LOGIN_TEXT: usize = 64 * 1024;
/// Largest login response data segment we produce (the initiator's MaxRecvDataSegmentLength
/// is 8192 during login).
pub const MAX_LOGIN_RESPONSE: usize = 8192;
/// Longest iSCSI name (RFC 7143 §4.2.7.1: 223 bytes).
pub const MAX_ISCSI_NAME_LEN: usize = 223;

/// Our side of the boolean keys.
const OUR_INITIAL_R2T: bool = true;
const OUR_IMMEDIATE_DATA: bool = true;
const OUR_DEFAULT_TIME2WAIT: u16 = 2;
const OUR_DEFAULT_TIME2RETAIN: u16 = 20;
const OUR_ERROR_RECOVERY_LEVEL: u8 = 0;

/// How a target (or discovery) authenticates initiators.
#[derive(Clone, PartialEq, Eq)]
pub enum AuthPolicy {
    /// No authentication.
    None,
    /// CHAP: the initiator must answer our challenge as `username` with `secret`. With
    /// `mutual`, the initiator must also challenge us and we answer as the given target user
    /// with the target secret.
    Chap {
        username: String,
        secret: String,
        mutual: Option<(
            String, /* target user */
            String, /* target secret */
        )>,
    },
}

impl fmt::Debug for AuthPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthPolicy::None => f.write_str("None"),
            AuthPolicy::Chap {
                username, mutual, ..
            } => f
                .debug_struct("Chap")
                .field("username", username)
                .field("secret", &"<redacted>")
                .field("mutual_user", &mutual.as_ref().map(|m| &m.0))
                .finish(),
        }
    }
}

/// Our limits for one target (or for discovery sessions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetLimits {
    /// What we declare as our MaxRecvDataSegmentLength (default 262144).
    pub max_recv_data_segment_length: u32,
    /// Upper bound for MaxBurstLength (default 1 MiB).
    pub max_burst_length: u32,
    /// Upper bound for FirstBurstLength (default 262144).
    pub first_burst_length: u32,
    /// Upper bound for MaxOutstandingR2T (default 1).
    pub max_outstanding_r2t: u32,
    /// Upper bound for MaxConnections (default 1).
    pub max_connections: u16,
}

impl Default for TargetLimits {
    fn default() -> Self {
        TargetLimits {
            max_recv_data_segment_length: 262_144,
            max_burst_length: 1 << 20,
            first_burst_length: 262_144,
            max_outstanding_r2t: 1,
            max_connections: 1,
        }
    }
}

impl TargetLimits {
    /// Clamps every limit into its legal range, so a bad configuration cannot make us declare
    /// an illegal value.
    fn sanitized(&self) -> TargetLimits {
        let max_burst = self.max_burst_length.clamp(MIN_LENGTH, MAX_LENGTH);
        TargetLimits {
            max_recv_data_segment_length: self
                .max_recv_data_segment_length
                .clamp(MIN_LENGTH, MAX_LENGTH),
            max_burst_length: max_burst,
            first_burst_length: self.first_burst_length.clamp(MIN_LENGTH, max_burst),
            max_outstanding_r2t: self.max_outstanding_r2t.clamp(1, 65535),
            max_connections: self.max_connections.max(1),
        }
    }
}

/// A configured target, as the login needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetPolicy {
    pub name: String,
    pub alias: Option<String>,
    pub tpgt: u16,
    pub auth: AuthPolicy,
    /// Initiator names allowed to log in (compared case-insensitively); empty = all.
    pub allowed_initiators: Vec<String>,
    pub limits: TargetLimits,
}

/// Where the login looks up targets.
pub trait TargetDirectory {
    /// The target called `target_name`, if it exists on this portal.
    fn lookup(&self, target_name: &str) -> Option<TargetPolicy>;
    /// Authentication required for discovery sessions.
    fn discovery_auth(&self) -> AuthPolicy;
    /// Limits for discovery sessions.
    fn discovery_limits(&self) -> TargetLimits;
}

/// Session type from the SessionType key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionType {
    Normal,
    Discovery,
}

/// What the runtime needs once login succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginResult {
    pub session_type: SessionType,
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    /// `None` for a discovery session without TargetName.
    pub target_name: Option<String>,
    pub isid: [u8; 6],
    /// TSIH from the request; 0 = new session (the runtime assigns one).
    pub tsih: u16,
    pub cid: u16,
    pub params: SessionParams,
    /// CmdSN of the last Login Request: the first command in full feature phase carries it.
    pub first_cmdsn: u32,
}

/// What to do after sending the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginOutcome {
    /// Wait for the next Login Request.
    Continue,
    /// Login is complete: enter full feature phase with these parameters.
    Complete(LoginResult),
    /// Login failed: send the response (it carries the status) then close the connection.
    Failed,
}

/// One login response to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginStep {
    pub response: LoginResponseRepr,
    pub data: Vec<u8>,
    pub outcome: LoginOutcome,
}

#[derive(Clone)]
enum Auth {
    /// Nothing agreed yet.
    Start,
    /// AuthMethod=CHAP agreed; waiting for CHAP_A.
    ChapAgreed,
    /// We sent CHAP_A/CHAP_I/CHAP_C; waiting for CHAP_N/CHAP_R.
    ChapChallenged {
        alg: ChapAlgorithm,
        id: u8,
        challenge: Vec<u8>,
    },
    /// Authentication finished (or not required).
    Done,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    InProgress,
    Complete,
    Failed,
}

/// The target this login resolved to (or the discovery pseudo-target).
#[derive(Clone)]
struct Resolved {
    session_type: SessionType,
    auth: AuthPolicy,
    limits: TargetLimits,
    target_name: Option<String>,
    alias: Option<String>,
    tpgt: u16,
}

type Status = (u8, u8);
type Pairs = Vec<(String, String)>;

/// Login negotiation state of one connection.
pub struct LoginState {
    rng: StdRng,
    phase: Phase,
    stage: Stage,
    pdus: u32,
    /// ISID, TSIH, CID of the first request; they must not change.
    identity: Option<([u8; 6], u16, u16)>,
    pending_text: Vec<u8>,
    seen_keys: HashSet<String>,
    initiator_name: Option<String>,
    initiator_alias: Option<String>,
    resolved: Option<Resolved>,
    auth: Auth,
    params: SessionParams,
    sent_target_info: bool,
    declared_mrdsl: bool,
    /// The rest of a response being sent in pieces (C bit).
    outgoing: Option<Outgoing>,
}

/// A login response too long for one PDU, sent in pieces.
struct Outgoing {
    data: Vec<u8>,
    offset: usize,
    /// Transition to apply with the last piece.
    transit_to: Option<Stage>,
}

impl fmt::Debug for LoginState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginState")
            .field("stage", &self.stage)
            .field("pdus", &self.pdus)
            .field("initiator_name", &self.initiator_name)
            .finish_non_exhaustive()
    }
}

fn is_security_key(key: &str) -> bool {
    key == "AuthMethod"
        || key.starts_with("CHAP_")
        || key.starts_with("SRP_")
        || key.starts_with("KRB_")
        || key.starts_with("SPKM_")
}

fn is_identity_key(key: &str) -> bool {
    matches!(
        key,
        "InitiatorName" | "InitiatorAlias" | "TargetName" | "SessionType"
    )
}

fn valid_iscsi_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ISCSI_NAME_LEN
        && name.bytes().all(|c| c.is_ascii_graphic())
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn parse_range(v: &str, min: u64, max: u64) -> Option<u64> {
    chap::parse_number(v).filter(|n| (min..=max).contains(n))
}

fn yes_no(b: bool) -> String {
    if b { "Yes" } else { "No" }.to_string()
}

impl LoginState {
    /// A new login. `rng_seed` seeds the CHAP challenge generator and MUST come from a
    /// cryptographically secure source (e.g. `rand::random()`); see [`LoginState::from_entropy`].
    pub fn new(rng_seed: [u8; 32]) -> Self {
        LoginState {
            rng: StdRng::from_seed(rng_seed),
            phase: Phase::InProgress,
            stage: Stage::Security,
            pdus: 0,
            identity: None,
            pending_text: Vec::new(),
            seen_keys: HashSet::new(),
            initiator_name: None,
            initiator_alias: None,
            resolved: None,
            auth: Auth::Start,
            params: SessionParams::default(),
            sent_target_info: false,
            declared_mrdsl: false,
            outgoing: None,
        }
    }

    /// A new login seeded from the operating system's random source.
    pub fn from_entropy() -> Self {
        LoginState::new(rand::random())
    }

    /// The current stage (for logging).
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// The InitiatorName given so far (set by the first request that carries it).
    pub fn initiator_name(&self) -> Option<&str> {
        self.initiator_name.as_deref()
    }

    /// Handles one Login Request and its data segment.
    pub fn handle(
        &mut self,
        req: &LoginRequestRepr,
        data: &[u8],
        dir: &dyn TargetDirectory,
    ) -> LoginStep {
        match self.step(req, data, dir) {
            Ok(step) => {
                if let LoginOutcome::Complete(_) = step.outcome {
                    self.phase = Phase::Complete;
                }
                step
            }
            Err(status) => {
                tracing::debug!(
                    class = status.0,
                    detail = status.1,
                    initiator = ?self.initiator_name,
                    "login failed"
                );
                self.phase = Phase::Failed;
                let mut response = Self::response_template(req);
                response.status_class = status.0;
                response.status_detail = status.1;
                LoginStep {
                    response,
                    data: Vec::new(),
                    outcome: LoginOutcome::Failed,
                }
            }
        }
    }

    fn response_template(req: &LoginRequestRepr) -> LoginResponseRepr {
        LoginResponseRepr {
            transit: false,
            cont: false,
            csg: if matches!(req.csg, Stage::Security | Stage::Operational) {
                req.csg
            } else {
                Stage::Security
            },
            nsg: Stage::Security,
            version_max: ISCSI_VERSION,
            version_active: ISCSI_VERSION,
            isid: req.isid,
            tsih: req.tsih,
            itt: req.itt,
            statsn: req.expstatsn,
            expcmdsn: req.cmdsn,
            maxcmdsn: req.cmdsn,
            status_class: 0,
            status_detail: 0,
        }
    }

    fn step(
        &mut self,
        req: &LoginRequestRepr,
        data: &[u8],
        dir: &dyn TargetDirectory,
    ) -> Result<LoginStep, Status> {
        if self.phase != Phase::InProgress {
            return Err(login_status::INITIATOR_ERROR);
        }
        self.pdus += 1;
        if self.pdus > MAX_LOGIN_PDUS {
            return Err(login_status::INITIATOR_ERROR);
        }
        if req.version_min > ISCSI_VERSION || req.version_max < req.version_min {
            return Err(login_status::UNSUPPORTED_VERSION);
        }
        self.check_flags(req)?;

        match self.identity {
            None => {
                self.identity = Some((req.isid, req.tsih, req.cid));
                self.stage = req.csg;
            }
            Some(id) => {
                if id != (req.isid, req.tsih, req.cid) || req.csg != self.stage {
                    return Err(login_status::INITIATOR_ERROR);
                }
            }
        }

        if self.outgoing.is_some() {
            // We sent a response with C=1: the initiator must answer with an empty request.
            if !data.is_empty() || req.cont {
                return Err(login_status::INITIATOR_ERROR);
            }
            let resolved = self.resolved.clone().ok_or(login_status::TARGET_ERROR)?;
            return self.next_piece(req, &resolved);
        }
        if self.pending_text.len().saturating_add(data.len()) > MAX_LOGIN_TEXT {
            return Err(login_status::INITIATOR_ERROR);
        }
        self.pending_text.extend_from_slice(data);
        let response = Self::response_template(req);
        if req.cont {
            // More text follows: acknowledge with an empty response (RFC 7143 §6.4).
            return Ok(LoginStep {
                response,
                data: Vec::new(),
                outcome: LoginOutcome::Continue,
            });
        }
        let text = std::mem::take(&mut self.pending_text);
        let pairs =
            parse_pairs(&text, &TextLimits::DEFAULT).map_err(|_| login_status::INITIATOR_ERROR)?;
        let mut in_this_pdu = HashSet::new();
        for (k, _) in &pairs {
            // A key may be negotiated or declared only once per login (RFC 7143 §6.2).
            // Exception: libiscsi repeats the identity keys (InitiatorName, TargetName, ...) in
            // its operational-stage request; we accept that when the values are unchanged.
            if !in_this_pdu.insert(k.as_str())
                || (!is_identity_key(k) && !self.seen_keys.insert(k.clone()))
            {
                return Err(login_status::INITIATOR_ERROR);
            }
        }

        let mut out: Pairs = Vec::new();
        if self.resolved.is_none() {
            self.resolve(&pairs, dir)?;
        } else {
            self.check_repeated_identity(&pairs)?;
        }
        let resolved = self.resolved.clone().ok_or(login_status::TARGET_ERROR)?;

        if !self.sent_target_info && resolved.session_type == SessionType::Normal {
            self.sent_target_info = true;
            out.push(("TargetPortalGroupTag".into(), resolved.tpgt.to_string()));
            if let Some(alias) = &resolved.alias {
                if !alias.is_empty() && alias.len() <= MAX_SIMPLE_VALUE_LEN {
                    out.push(("TargetAlias".into(), alias.clone()));
                }
            }
        }

        let mut auth_progress = false;
        match self.stage {
            Stage::Security => {
                auth_progress = self.security(&pairs, &resolved, &mut out)?;
                for (k, v) in &pairs {
                    if !is_security_key(k) && !is_identity_key(k) {
                        self.negotiate(k, v, &resolved, &mut out)?;
                    }
                }
            }
            Stage::Operational => {
                for (k, v) in &pairs {
                    if is_security_key(k) {
                        return Err(login_status::INITIATOR_ERROR);
                    }
                    if !is_identity_key(k) {
                        self.negotiate(k, v, &resolved, &mut out)?;
                    }
                }
                if !self.declared_mrdsl {
                    self.declared_mrdsl = true;
                    let mrdsl = resolved.limits.max_recv_data_segment_length;
                    self.params.max_recv_data_segment_length_target = mrdsl;
                    out.push(("MaxRecvDataSegmentLength".into(), mrdsl.to_string()));
                }
            }
            Stage::Reserved | Stage::FullFeature => return Err(login_status::INITIATOR_ERROR),
        }
        // RFC 7143 §13.14: FirstBurstLength must not exceed MaxBurstLength. The two keys
        // come in either order, so the answer is fixed after the whole request: otherwise
        // the initiator believes in a first burst we then refuse.
        if self.params.first_burst_length > self.params.max_burst_length {
            self.params.first_burst_length = self.params.max_burst_length;
            let v = self.params.first_burst_length.to_string();
            if let Some(e) = out.iter_mut().find(|(k, _)| k == "FirstBurstLength") {
                e.1 = v;
            }
        }

        // Stage transition.
        let mut transit_to = None;
        if req.transit {
            let ready = match self.stage {
                Stage::Security => matches!(self.auth, Auth::Done),
                _ => true,
            };
            if ready {
                transit_to = Some(req.nsg);
            } else if !auth_progress {
                // Asked to leave the security stage without finishing authentication.
                return Err(login_status::AUTHENTICATION_FAILURE);
            }
        }

        let data = emit_pairs(&out);
        if data.len() > MAX_LOGIN_RESPONSE {
            // Too much text for one response: send it in pieces with C=1 (RFC 7143 §11.13.2),
            // deferring the stage transition to the last piece.
            self.outgoing = Some(Outgoing {
                data,
                offset: 0,
                transit_to,
            });
            return self.next_piece(req, &resolved);
        }
        Ok(self.finish(req, &resolved, response, data, transit_to))
    }

    /// Builds the final response of an exchange, applying the stage transition.
    fn finish(
        &mut self,
        req: &LoginRequestRepr,
        resolved: &Resolved,
        mut response: LoginResponseRepr,
        data: Vec<u8>,
        transit_to: Option<Stage>,
    ) -> LoginStep {
        let mut outcome = LoginOutcome::Continue;
        if let Some(nsg) = transit_to {
            response.transit = true;
            response.nsg = nsg;
            self.stage = nsg;
            if nsg == Stage::FullFeature {
                outcome = LoginOutcome::Complete(self.result(req, resolved));
            }
        }
        LoginStep {
            response,
            data,
            outcome,
        }
    }

    /// Sends the next piece of a response that did not fit in one PDU.
    fn next_piece(
        &mut self,
        req: &LoginRequestRepr,
        resolved: &Resolved,
    ) -> Result<LoginStep, Status> {
        let mut response = Self::response_template(req);
        let out = self.outgoing.as_mut().ok_or(login_status::TARGET_ERROR)?;
        let end = out.data.len().min(out.offset + MAX_LOGIN_RESPONSE);
        let piece = out.data.get(out.offset..end).unwrap_or_default().to_vec();
        out.offset = end;
        if end < out.data.len() {
            response.cont = true;
            return Ok(LoginStep {
                response,
                data: piece,
                outcome: LoginOutcome::Continue,
            });
        }
        let transit_to = out.transit_to;
        self.outgoing = None;
        Ok(self.finish(req, resolved, response, piece, transit_to))
    }

    fn check_flags(&self, req: &LoginRequestRepr) -> Result<(), Status> {
        if req.transit && req.cont {
            return Err(login_status::INITIATOR_ERROR);
        }
        if !matches!(req.csg, Stage::Security | Stage::Operational) {
            return Err(login_status::INITIATOR_ERROR);
        }
        if req.transit && (req.nsg == Stage::Reserved || req.nsg <= req.csg) {
            return Err(login_status::INITIATOR_ERROR);
        }
        Ok(())
    }

    /// Reads the identity keys of the first request and finds the target and its policy.
    fn resolve(
        &mut self,
        pairs: &[(String, String)],
        dir: &dyn TargetDirectory,
    ) -> Result<(), Status> {
        let get = |key: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let initiator = get("InitiatorName").ok_or(login_status::MISSING_PARAMETER)?;
        if !valid_iscsi_name(initiator) {
            return Err(login_status::INITIATOR_ERROR);
        }
        let session_type = match get("SessionType") {
            None | Some("Normal") => SessionType::Normal,
            Some("Discovery") => SessionType::Discovery,
            Some(_) => return Err(login_status::SESSION_TYPE_NOT_SUPPORTED),
        };
        let target_name = get("TargetName");
        if let Some(t) = target_name {
            if !valid_iscsi_name(t) {
                return Err(login_status::INITIATOR_ERROR);
            }
        }
        let resolved = match session_type {
            SessionType::Discovery => Resolved {
                session_type,
                auth: dir.discovery_auth(),
                limits: dir.discovery_limits().sanitized(),
                target_name: target_name.map(str::to_owned),
                alias: None,
                tpgt: 0,
            },
            SessionType::Normal => {
                let name = target_name.ok_or(login_status::MISSING_PARAMETER)?;
                let policy = dir.lookup(name).ok_or(login_status::NOT_FOUND)?;
                let allowed = policy.allowed_initiators.is_empty()
                    || policy
                        .allowed_initiators
                        .iter()
                        .any(|a| a.eq_ignore_ascii_case(initiator));
                if !allowed {
                    return Err(login_status::AUTHORIZATION_FAILURE);
                }
                Resolved {
                    session_type,
                    auth: policy.auth,
                    limits: policy.limits.sanitized(),
                    target_name: Some(policy.name),
                    alias: policy.alias,
                    tpgt: policy.tpgt,
                }
            }
        };
        if self.stage == Stage::Operational {
            // The initiator skipped the security stage: only fine if no authentication is
            // required.
            if resolved.auth != AuthPolicy::None {
                return Err(login_status::AUTHENTICATION_FAILURE);
            }
            self.auth = Auth::Done;
        }
        self.initiator_name = Some(initiator.to_owned());
        self.initiator_alias = get("InitiatorAlias")
            .filter(|a| a.len() <= MAX_SIMPLE_VALUE_LEN)
            .map(str::to_owned);
        self.resolved = Some(resolved);
        Ok(())
    }

    /// Identity keys repeated after the first request must not change anything.
    fn check_repeated_identity(&self, pairs: &[(String, String)]) -> Result<(), Status> {
        let resolved = self.resolved.as_ref().ok_or(login_status::TARGET_ERROR)?;
        for (k, v) in pairs {
            let same = match k.as_str() {
                "InitiatorName" => self
                    .initiator_name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(v)),
                "SessionType" => match v.as_str() {
                    "Normal" => resolved.session_type == SessionType::Normal,
                    "Discovery" => resolved.session_type == SessionType::Discovery,
                    _ => false,
                },
                "TargetName" => match &resolved.target_name {
                    Some(t) => t.eq_ignore_ascii_case(v),
                    // Discovery without TargetName: a late TargetName changes nothing.
                    None => valid_iscsi_name(v),
                },
                // Informational only.
                "InitiatorAlias" => true,
                _ => continue,
            };
            if !same {
                return Err(login_status::INITIATOR_ERROR);
            }
        }
        Ok(())
    }

    /// Security stage: AuthMethod and CHAP. Returns whether authentication made progress.
    fn security(
        &mut self,
        pairs: &[(String, String)],
        resolved: &Resolved,
        out: &mut Pairs,
    ) -> Result<bool, Status> {
        const FAIL: Status = login_status::AUTHENTICATION_FAILURE;
        let get = |key: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let mut progress = false;

        for (k, _) in pairs {
            let known = matches!(
                k.as_str(),
                "AuthMethod" | "CHAP_A" | "CHAP_I" | "CHAP_C" | "CHAP_N" | "CHAP_R"
            );
            if is_security_key(k) && !known {
                // SRP/KRB/SPKM keys: we never agree to those methods.
                out.push((k.clone(), "NotUnderstood".into()));
            }
        }

        if let Some(offer) = get("AuthMethod") {
            if !matches!(self.auth, Auth::Start) {
                return Err(login_status::INITIATOR_ERROR);
            }
            let offered: Vec<&str> = offer.split(',').take(32).collect();
            match &resolved.auth {
                AuthPolicy::None if offered.contains(&"None") => {
                    out.push(("AuthMethod".into(), "None".into()));
                    self.auth = Auth::Done;
                }
                AuthPolicy::Chap { secret, .. } if offered.contains(&"CHAP") => {
                    if secret.is_empty() {
                        tracing::warn!("CHAP configured with an empty secret; refusing login");
                        return Err(login_status::TARGET_ERROR);
                    }
                    out.push(("AuthMethod".into(), "CHAP".into()));
                    self.auth = Auth::ChapAgreed;
                }
                _ => return Err(FAIL),
            }
            progress = true;
        } else if matches!(self.auth, Auth::Start) {
            match resolved.auth {
                // No AuthMethod offered and none required: nothing to negotiate.
                AuthPolicy::None => self.auth = Auth::Done,
                AuthPolicy::Chap { .. } => return Err(FAIL),
            }
        }

        if let Some(offer) = get("CHAP_A") {
            if !matches!(self.auth, Auth::ChapAgreed) {
                return Err(FAIL);
            }
            let alg = ChapAlgorithm::choose(offer).ok_or(FAIL)?;
            let id: u8 = self.rng.gen();
            let mut challenge = vec![0u8; alg.challenge_len()];
            self.rng.fill(&mut challenge[..]);
            out.push(("CHAP_A".into(), alg.code().to_string()));
            out.push(("CHAP_I".into(), id.to_string()));
            out.push(("CHAP_C".into(), chap::encode_hex(&challenge)));
            self.auth = Auth::ChapChallenged { alg, id, challenge };
            progress = true;
        }

        let chap_n = get("CHAP_N");
        let chap_r = get("CHAP_R");
        let chap_i = get("CHAP_I");
        let chap_c = get("CHAP_C");
        if chap_n.is_some() || chap_r.is_some() || chap_i.is_some() || chap_c.is_some() {
            let Auth::ChapChallenged { alg, id, challenge } = self.auth.clone() else {
                return Err(FAIL);
            };
            let AuthPolicy::Chap {
                username,
                secret,
                mutual,
            } = &resolved.auth
            else {
                return Err(FAIL);
            };
            let (name, resp) = (chap_n.ok_or(FAIL)?, chap_r.ok_or(FAIL)?);
            let resp = chap::decode_binary(resp).ok_or(FAIL)?;
            // Check the name and response both, without short-circuiting on the name.
            let name_ok = name == username;
            let resp_ok = chap::verify(alg, id, secret.as_bytes(), &challenge, &resp);
            if !(name_ok && resp_ok) {
                return Err(FAIL);
            }
            match (chap_i, chap_c, mutual) {
                (None, None, None) => {}
                (Some(i), Some(c), Some((target_user, target_secret))) => {
                    let their_id = chap::parse_identifier(i).ok_or(FAIL)?;
                    let their_challenge = chap::decode_binary(c).ok_or(FAIL)?;
                    // A reflected challenge would make us compute the initiator's answer.
                    if their_challenge == challenge {
                        return Err(FAIL);
                    }
                    // RFC 7143 §12.1.3: a secret used to authenticate initiators MUST NOT also
                    // authenticate the target, or our answer could be replayed as theirs.
                    if target_secret == secret || target_secret.is_empty() {
                        tracing::warn!(
                            "mutual CHAP misconfigured: target secret empty or equal to the \
                             initiator secret; refusing to answer"
                        );
                        return Err(login_status::TARGET_ERROR);
                    }
                    let r =
                        chap::response(alg, their_id, target_secret.as_bytes(), &their_challenge);
                    out.push(("CHAP_N".into(), target_user.clone()));
                    out.push(("CHAP_R".into(), chap::encode_hex(&r)));
                }
                _ => return Err(FAIL),
            }
            self.auth = Auth::Done;
            progress = true;
        }
        Ok(progress)
    }

    /// Negotiates one operational key, appending our answer (if any) to `out`.
    fn negotiate(
        &mut self,
        key: &str,
        value: &str,
        resolved: &Resolved,
        out: &mut Pairs,
    ) -> Result<(), Status> {
        let discovery = resolved.session_type == SessionType::Discovery;
        let limits = &resolved.limits;
        let mut answer = |v: String| out.push((key.to_owned(), v));

        if matches!(value, "NotUnderstood" | "Irrelevant" | "Reject") {
            // An answer to an offer we never made: nothing to do.
            return Ok(());
        }
        if key.starts_with("X-") || key.starts_with("X#") {
            answer("NotUnderstood".into());
            return Ok(());
        }
        if value.len() > MAX_SIMPLE_VALUE_LEN {
            answer("Reject".into());
            return Ok(());
        }
        let session_key = matches!(
            key,
            "MaxConnections"
                | "InitialR2T"
                | "ImmediateData"
                | "FirstBurstLength"
                | "MaxBurstLength"
                | "MaxOutstandingR2T"
                | "DataPDUInOrder"
                | "DataSequenceInOrder"
        );
        if discovery && session_key {
            answer("Irrelevant".into());
            return Ok(());
        }
        let p = &mut self.params;
        match key {
            "HeaderDigest" | "DataDigest" => {
                let choice = value
                    .split(',')
                    .take(16)
                    .find(|v| matches!(*v, "None" | "CRC32C"));
                match choice {
                    Some(c) => {
                        let on = c == "CRC32C";
                        if key == "HeaderDigest" {
                            p.header_digest = on;
                        } else {
                            p.data_digest = on;
                        }
                        answer(c.to_owned());
                    }
                    None => answer("Reject".into()),
                }
            }
            "MaxConnections" => match parse_range(value, 1, 65535) {
                Some(n) => {
                    p.max_connections = (n as u16).min(limits.max_connections);
                    answer(p.max_connections.to_string());
                }
                None => answer("Reject".into()),
            },
            "InitialR2T" => match parse_bool(value) {
                Some(b) => {
                    p.initial_r2t = b || OUR_INITIAL_R2T;
                    answer(yes_no(p.initial_r2t));
                }
                None => answer("Reject".into()),
            },
            "ImmediateData" => match parse_bool(value) {
                Some(b) => {
                    p.immediate_data = b && OUR_IMMEDIATE_DATA;
                    answer(yes_no(p.immediate_data));
                }
                None => answer("Reject".into()),
            },
            "FirstBurstLength" => match parse_range(value, MIN_LENGTH.into(), MAX_LENGTH.into()) {
                Some(n) => {
                    p.first_burst_length = (n as u32).min(limits.first_burst_length);
                    answer(p.first_burst_length.to_string());
                }
                None => answer("Reject".into()),
            },
            "MaxBurstLength" => match parse_range(value, MIN_LENGTH.into(), MAX_LENGTH.into()) {
                Some(n) => {
                    p.max_burst_length = (n as u32).min(limits.max_burst_length);
                    answer(p.max_burst_length.to_string());
                }
                None => answer("Reject".into()),
            },
            // Declarative: no answer (we declare ours separately, and answering "Reject" would
            // put the key twice in one response). Values above the maximum are clamped; a value
            // below 512 or not a number leaves no safe PDU size, so the login fails.
            "MaxRecvDataSegmentLength" => match chap::parse_number(value) {
                Some(n) if n >= u64::from(MIN_LENGTH) => {
                    p.max_recv_data_segment_length_initiator = n.min(MAX_LENGTH.into()) as u32;
                }
                _ => return Err(login_status::INITIATOR_ERROR),
            },
            "MaxOutstandingR2T" => match parse_range(value, 1, 65535) {
                Some(n) => {
                    p.max_outstanding_r2t = (n as u32).min(limits.max_outstanding_r2t);
                    answer(p.max_outstanding_r2t.to_string());
                }
                None => answer("Reject".into()),
            },
            "DataPDUInOrder" | "DataSequenceInOrder" => match parse_bool(value) {
                // Result function OR: we only support in-order data, so the answer is Yes.
                Some(_) => answer(yes_no(true)),
                None => answer("Reject".into()),
            },
            "DefaultTime2Wait" => match parse_range(value, 0, 3600) {
                Some(n) => {
                    p.default_time2wait = (n as u16).max(OUR_DEFAULT_TIME2WAIT);
                    answer(p.default_time2wait.to_string());
                }
                None => answer("Reject".into()),
            },
            "DefaultTime2Retain" => match parse_range(value, 0, 3600) {
                Some(n) => {
                    p.default_time2retain = (n as u16).min(OUR_DEFAULT_TIME2RETAIN);
                    answer(p.default_time2retain.to_string());
                }
                None => answer("Reject".into()),
            },
            "ErrorRecoveryLevel" => match parse_range(value, 0, 2) {
                // Result function minimum; we support only level 0, so the answer is 0.
                Some(_) => {
                    p.error_recovery_level = OUR_ERROR_RECOVERY_LEVEL;
                    answer(p.error_recovery_level.to_string());
                }
                None => answer("Reject".into()),
            },
            // Markers (result function AND): we never use them.
            "IFMarker" | "OFMarker" | "RDMAExtensions" => match parse_bool(value) {
                Some(_) => answer(yes_no(false)),
                None => answer("Reject".into()),
            },
            // Irrelevant because markers are off.
            "IFMarkInt" | "OFMarkInt" => answer("Irrelevant".into()),
            // RFC 7144 task reporting: we offer only RFC 3720 semantics.
            // (A list key: the answer must be one of the offered values.)
            "TaskReporting" => {
                if value.split(',').take(16).any(|v| v == "RFC3720") {
                    answer("RFC3720".into());
                } else {
                    answer("Reject".into());
                }
            }
            // Keys only the target may send.
            "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" => {
                return Err(login_status::INITIATOR_ERROR)
            }
            // Full-feature-phase only.
            "SendTargets" => answer("Reject".into()),
            _ => answer("NotUnderstood".into()),
        }
        Ok(())
    }

    fn result(&self, req: &LoginRequestRepr, resolved: &Resolved) -> LoginResult {
        let mut params = self.params.clone();
        params.first_burst_length = params.first_burst_length.min(params.max_burst_length);
        if !self.declared_mrdsl {
            // We never declared ours, so the initiator assumes the default.
            params.max_recv_data_segment_length_target =
                crate::params::DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH;
        }
        LoginResult {
            session_type: resolved.session_type,
            initiator_name: self.initiator_name.clone().unwrap_or_default(),
            initiator_alias: self.initiator_alias.clone(),
            target_name: resolved.target_name.clone(),
            isid: req.isid,
            tsih: req.tsih,
            cid: req.cid,
            params,
            first_cmdsn: req.cmdsn,
        }
    }
}

#[cfg(test)]
mod tests;
