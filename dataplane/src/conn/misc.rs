//! NOP-Out/NOP-In (including our liveness pings), Text (SendTargets) and Logout.

use super::env::ConnEnv;
use super::{ConnCore, Phase};
use crate::reactor_ctx::ConnTimers;
use std::time::Instant;
use tandem_iscsi::text::{emit_pairs, parse_pairs, TextLimits};
use tandem_iscsi::wire::logout_response::{
    CLOSED_SUCCESSFULLY as LOGOUT_OK, RECOVERY_NOT_SUPPORTED as LOGOUT_RECOVERY_NOT_SUPPORTED,
};
use tandem_iscsi::wire::{
    reject, Bhs, LogoutReason, LogoutRequestRepr, LogoutResponseRepr, NopInRepr, NopOutRepr,
    TextRequestRepr, TextResponseRepr, BHS_LEN, RESERVED_TAG,
};

/// Most text an initiator may send split over several Text Requests (C bit).
const TEXT_COLLECT_MAX: usize = 64 * 1024;

/// A text request arriving in pieces (C bit): what came so far, under our TTT.
pub(super) struct CollectingText {
    itt: u32,
    ttt: u32,
    data: Vec<u8>,
}

/// A text response too long for one PDU, handed out piece by piece (C bit + TTT).
pub(super) struct PendingText {
    ttt: u32,
    data: Vec<u8>,
    offset: usize,
}

impl ConnCore {
    pub(super) fn on_nop_out(&mut self, bhs: &[u8; BHS_LEN], data: &[u8]) {
        let req = match NopOutRepr::parse(&Bhs::new_unchecked(&bhs[..])) {
            Ok(r) => r,
            Err(_) => {
                self.send_reject(reject::INVALID_PDU_FIELD, bhs);
                return;
            }
        };
        if req.ttt != RESERVED_TAG {
            // Answer to our ping.
            if self.ping.map(|(ttt, _)| ttt == req.ttt).unwrap_or(false) {
                self.ping = None;
            }
            return;
        }
        if req.itt == RESERVED_TAG {
            // A one-way NOP-Out: must be immediate (RFC 7143 §11.18); nothing to answer.
            return;
        }
        if !self.accept_cmdsn(req.cmdsn, req.immediate) {
            return;
        }
        let statsn = self.next_statsn();
        let repr = NopInRepr {
            lun: req.lun,
            itt: req.itt,
            ttt: RESERVED_TAG,
            statsn,
            expcmdsn: self.exp_cmdsn(),
            maxcmdsn: self.max_cmdsn(),
        };
        let mut out = [0u8; BHS_LEN];
        repr.emit(&mut out);
        let max = self
            .session
            .as_ref()
            .map(|s| s.params.max_recv_data_segment_length_initiator as usize)
            .unwrap_or(8192);
        let echo = data[..data.len().min(max)].to_vec();
        self.tx.push_owned(out, echo, None);
    }

    /// Pings an idle initiator; closes the connection if a ping goes unanswered.
    pub(super) fn nop_ping(&mut self, now: Instant, timers: ConnTimers) -> usize {
        let Some(interval) = timers.nop_interval else {
            return 0;
        };
        if let Some((_, sent)) = self.ping {
            if now.duration_since(sent) > timers.nop_timeout
                && now.duration_since(self.last_rx) > timers.nop_timeout
            {
                tracing::warn!(conn = self.id, peer = %self.peer, "initiator does not answer NOP-In; closing");
                self.phase = Phase::Closing;
                return 1;
            }
            return 0;
        }
        if now.duration_since(self.last_rx) < interval || !self.tx.is_empty() {
            return 0;
        }
        let ttt = self.new_ttt();
        let repr = NopInRepr {
            lun: 0,
            itt: RESERVED_TAG,
            ttt,
            statsn: self.statsn,
            expcmdsn: self.exp_cmdsn(),
            maxcmdsn: self.max_cmdsn(),
        };
        let mut out = [0u8; BHS_LEN];
        repr.emit(&mut out);
        self.tx.push_owned(out, Vec::new(), None);
        self.ping = Some((ttt, now));
        1
    }

    pub(super) fn on_text(&mut self, ctx: &mut impl ConnEnv, bhs: &[u8; BHS_LEN], data: &[u8]) {
        let req = match TextRequestRepr::parse(&Bhs::new_unchecked(&bhs[..])) {
            Ok(r) => r,
            Err(_) => {
                self.send_reject(reject::INVALID_PDU_FIELD, bhs);
                return;
            }
        };
        if !self.accept_cmdsn(req.cmdsn, req.immediate) {
            return;
        }
        let max_seg = self
            .session
            .as_ref()
            .map(|s| s.params.max_recv_data_segment_length_initiator as usize)
            .unwrap_or(8192)
            .max(512);
        // A request split over several PDUs (RFC 7143 §11.10.2): collect the pieces, answer
        // each with an empty Text Response carrying our TTT, handle the whole at the end.
        let mut collected: Option<Vec<u8>> = None;
        if req.ttt != RESERVED_TAG
            && self
                .text_in
                .as_ref()
                .is_some_and(|c| c.itt == req.itt && c.ttt == req.ttt)
        {
            collected = self.text_in.take().map(|c| c.data);
        } else if req.ttt == RESERVED_TAG {
            self.text_in = None;
        }
        if req.cont || collected.is_some() {
            let mut buf = collected.unwrap_or_default();
            if buf.len() + data.len() > TEXT_COLLECT_MAX {
                tracing::warn!(conn = self.id, "text request longer than allowed; rejected");
                self.send_reject(reject::PROTOCOL_ERROR, bhs);
                return;
            }
            buf.extend_from_slice(data);
            if req.cont {
                let ttt = self.new_ttt();
                self.text_in = Some(CollectingText {
                    itt: req.itt,
                    ttt,
                    data: buf,
                });
                self.pending_text = None;
                self.send_text_piece(req.itt, ttt, &[], 0, max_seg, false);
                return;
            }
            self.answer_text(ctx, bhs, req.itt, &buf, max_seg);
            return;
        }
        // Continuation of a long answer.
        if req.ttt != RESERVED_TAG {
            if let Some(p) = self.pending_text.as_ref().filter(|p| p.ttt == req.ttt) {
                let (ttt, body, off) = (p.ttt, p.data.clone(), p.offset);
                self.send_text_piece(req.itt, ttt, &body, off, max_seg, true);
            } else {
                self.send_reject(reject::INVALID_PDU_FIELD, bhs);
            }
            return;
        }
        self.answer_text(ctx, bhs, req.itt, data, max_seg);
    }

    fn answer_text(
        &mut self,
        ctx: &mut impl ConnEnv,
        bhs: &[u8; BHS_LEN],
        itt: u32,
        data: &[u8],
        max_seg: usize,
    ) {
        self.pending_text = None;
        let pairs = match parse_pairs(data, &TextLimits::default()) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(conn = self.id, error = %e, "malformed text request; rejected");
                self.send_reject(reject::PROTOCOL_ERROR, bhs);
                return;
            }
        };
        let mut answer: Vec<(String, String)> = Vec::new();
        let mut body = Vec::new();
        for (k, v) in &pairs {
            if k == "SendTargets" {
                let initiator = self
                    .session
                    .as_ref()
                    .map(|s| s.key.initiator.clone())
                    .unwrap_or_default();
                let listings = ctx.shared().registry.listings(self.local_addr);
                // In a normal session an empty value means "this session's target".
                let value = match (
                    v.as_str(),
                    self.session.as_ref().and_then(|s| s.target.as_ref()),
                ) {
                    ("", Some(t)) => t.iqn.clone(),
                    _ => v.clone(),
                };
                body.extend(tandem_iscsi::discovery::send_targets(
                    &value, &initiator, &listings,
                ));
            } else {
                answer.push((k.clone(), "NotUnderstood".to_string()));
            }
        }
        body.extend(emit_pairs(&answer));
        if body.len() > max_seg {
            let ttt = self.new_ttt();
            self.pending_text = Some(PendingText {
                ttt,
                data: body.clone(),
                offset: 0,
            });
            self.send_text_piece(itt, ttt, &body, 0, max_seg, true);
        } else {
            self.send_text_piece(itt, RESERVED_TAG, &body, 0, max_seg, true);
        }
    }

    /// One Text Response with `body[offset..]` (as much as fits). `answer` false: an empty
    /// acknowledgement of a request piece (not final, our TTT, no C bit).
    fn send_text_piece(
        &mut self,
        itt: u32,
        ttt: u32,
        body: &[u8],
        offset: usize,
        max_seg: usize,
        answer: bool,
    ) {
        let end = (offset + max_seg).min(body.len());
        let last = answer && end == body.len();
        if last {
            self.pending_text = None;
        } else if let Some(p) = self.pending_text.as_mut() {
            p.offset = end;
        }
        let statsn = self.next_statsn();
        let repr = TextResponseRepr {
            final_flag: last,
            cont: answer && !last,
            lun: 0,
            itt,
            ttt: if last { RESERVED_TAG } else { ttt },
            statsn,
            expcmdsn: self.exp_cmdsn(),
            maxcmdsn: self.max_cmdsn(),
        };
        let mut out = [0u8; BHS_LEN];
        repr.emit(&mut out);
        self.tx.push_owned(out, body[offset..end].to_vec(), None);
    }

    pub(super) fn on_logout(&mut self, _ctx: &mut impl ConnEnv, bhs: &[u8; BHS_LEN]) {
        let req = match LogoutRequestRepr::parse(&Bhs::new_unchecked(&bhs[..])) {
            Ok(r) => r,
            Err(_) => {
                self.send_reject(reject::INVALID_PDU_FIELD, bhs);
                return;
            }
        };
        let immediate = Bhs::new_unchecked(&bhs[..]).immediate();
        if !self.accept_cmdsn(req.cmdsn, immediate) {
            return;
        }
        let response = match req.reason {
            LogoutReason::CloseSession | LogoutReason::CloseConnection => LOGOUT_OK,
            LogoutReason::RemoveConnectionForRecovery => LOGOUT_RECOVERY_NOT_SUPPORTED,
            LogoutReason::Other(code) => {
                tracing::warn!(conn = self.id, code, "logout with unknown reason; rejected");
                self.send_reject(reject::PROTOCOL_ERROR, bhs);
                return;
            }
        };
        let repr = LogoutResponseRepr {
            response,
            itt: req.itt,
            statsn: self.next_statsn(),
            expcmdsn: self.exp_cmdsn(),
            maxcmdsn: self.max_cmdsn(),
            time2wait: 0,
            time2retain: 0,
        };
        let mut out = [0u8; BHS_LEN];
        repr.emit(&mut out);
        self.tx.push_owned(out, Vec::new(), None);
        if response == LOGOUT_OK {
            tracing::info!(conn = self.id, peer = %self.peer, "logout");
            self.phase = Phase::Closing;
        }
    }
}
