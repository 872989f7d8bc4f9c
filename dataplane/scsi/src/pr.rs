//! Persistent reservations (SPC-4 5.12): registrations, the six reservation
//! types, PERSISTENT RESERVE IN/OUT and the APTPL blob.
//!
//! Pure state machine: the LU maps [`PortId`]s to nexus ids for unit
//! attentions and persists [`PrState::encode`] when APTPL is set.

use crate::sense::Sense;
use crate::Nexus;

/// Upper bound on registrations (beyond: INSUFFICIENT REGISTRATION RESOURCES).
pub const MAX_REGISTRATIONS: usize = 256;

/// The I_T nexus identity a registration belongs to: initiator port
/// (iSCSI name + ISID) and the relative target port it came through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortId {
    /// Lower-cased: iSCSI names compare case-insensitively.
    pub initiator: String,
    pub isid: [u8; 6],
    pub rel_port: u16,
}

impl PortId {
    pub fn of(n: &Nexus) -> PortId {
        PortId {
            initiator: n.initiator_name.to_ascii_lowercase(),
            isid: n.isid,
            rel_port: n.port.relative_port_id,
        }
    }

    /// iSCSI TransportID, format 01b: "name,i,0x<isid>" (SPC-4 7.6.4.6).
    fn transport_id(&self) -> Vec<u8> {
        let mut name = format!("{},i,0x{}", self.initiator, hex(&self.isid)).into_bytes();
        name.push(0);
        // SPC-4 7.6.4.6: ADDITIONAL LENGTH is a multiple of 4, at least 20.
        name.resize(name.len().next_multiple_of(4).max(20), 0);
        let mut t = vec![0x40 | 0x05, 0];
        t.extend_from_slice(&(name.len() as u16).to_be_bytes());
        t.extend(name);
        t
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Reservation types (SPC-4 table 168).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PrType {
    WriteExclusive = 1,
    ExclusiveAccess = 3,
    WriteExclusiveRegistrantsOnly = 5,
    ExclusiveAccessRegistrantsOnly = 6,
    WriteExclusiveAllRegistrants = 7,
    ExclusiveAccessAllRegistrants = 8,
}

impl PrType {
    pub fn from_u8(v: u8) -> Option<PrType> {
        Some(match v {
            1 => PrType::WriteExclusive,
            3 => PrType::ExclusiveAccess,
            5 => PrType::WriteExclusiveRegistrantsOnly,
            6 => PrType::ExclusiveAccessRegistrantsOnly,
            7 => PrType::WriteExclusiveAllRegistrants,
            8 => PrType::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }
    fn all_registrants(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        )
    }
    /// Registrants-only and all-registrants types give every registrant access.
    fn registrants_have_access(self) -> bool {
        (self as u8) >= 5
    }
    /// Exclusive-access types also block reads of non-holders.
    fn blocks_reads(self) -> bool {
        matches!(
            self,
            PrType::ExclusiveAccess
                | PrType::ExclusiveAccessRegistrantsOnly
                | PrType::ExclusiveAccessAllRegistrants
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub id: PortId,
    pub key: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The reserving nexus (for all-registrants types every registrant holds it).
    pub holder: PortId,
    pub pr_type: PrType,
}

/// How a command is affected by a persistent reservation (SPC-4 table 67, SBC-3 table 13).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Never conflicts (INQUIRY, PR IN/OUT, READ CAPACITY, ...).
    Always,
    /// Conflicts only under exclusive-access types.
    Read,
    /// Conflicts under every type.
    Write,
}

/// Why a PR OUT failed.
#[derive(Debug, PartialEq, Eq)]
pub enum PrError {
    Conflict,
    Check(Sense),
}

impl From<Sense> for PrError {
    fn from(s: Sense) -> Self {
        PrError::Check(s)
    }
}

/// Side effects of a successful PR OUT.
#[derive(Debug, Default)]
pub struct PrEffects {
    /// Unit attentions to queue for the nexuses of these identities.
    pub uas: Vec<(PortId, Sense)>,
    /// State changed: persist if a store is configured.
    pub changed: bool,
}

/// All persistent reservation state of one LU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrState {
    pub generation: u32,
    pub regs: Vec<Registration>,
    pub res: Option<Reservation>,
    /// Activate persist through power loss, from the last REGISTER.
    pub aptpl: bool,
}

/// PR OUT service actions.
mod sa {
    pub const REGISTER: u8 = 0;
    pub const RESERVE: u8 = 1;
    pub const RELEASE: u8 = 2;
    pub const CLEAR: u8 = 3;
    pub const PREEMPT: u8 = 4;
    pub const PREEMPT_AND_ABORT: u8 = 5;
    pub const REGISTER_AND_IGNORE: u8 = 6;
    pub const REGISTER_AND_MOVE: u8 = 7;
}

fn be64(p: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    for (k, x) in b.iter_mut().enumerate() {
        *x = p.get(i + k).copied().unwrap_or(0);
    }
    u64::from_be_bytes(b)
}

fn be32(p: &[u8], i: usize) -> u32 {
    let mut b = [0u8; 4];
    for (k, x) in b.iter_mut().enumerate() {
        *x = p.get(i + k).copied().unwrap_or(0);
    }
    u32::from_be_bytes(b)
}

impl PrState {
    fn reg_index(&self, id: &PortId) -> Option<usize> {
        self.regs.iter().position(|r| &r.id == id)
    }

    pub fn key_of(&self, id: &PortId) -> Option<u64> {
        self.reg_index(id).map(|i| self.regs[i].key)
    }

    pub fn is_holder(&self, id: &PortId) -> bool {
        match &self.res {
            None => false,
            Some(r) if r.pr_type.all_registrants() => self.reg_index(id).is_some(),
            Some(r) => &r.holder == id,
        }
    }

    /// True if a command of class `access` from `id` gets RESERVATION CONFLICT.
    /// Whether a persistent reservation is held at all.
    pub fn is_reserved(&self) -> bool {
        self.res.is_some()
    }

    pub fn conflicts(&self, id: &PortId, access: Access) -> bool {
        let Some(r) = &self.res else { return false };
        if access == Access::Always || self.is_holder(id) {
            return false;
        }
        if r.pr_type.registrants_have_access() && self.reg_index(id).is_some() {
            return false;
        }
        match access {
            Access::Read => r.pr_type.blocks_reads(),
            _ => true,
        }
    }

    fn others(&self, me: &PortId) -> Vec<PortId> {
        self.regs
            .iter()
            .filter(|r| &r.id != me)
            .map(|r| r.id.clone())
            .collect()
    }

    /// Removes a registration; returns UAs caused by losing the reservation.
    fn unregister(&mut self, idx: usize, fx: &mut PrEffects) {
        let reg = self.regs.remove(idx);
        let Some(res) = self.res.clone() else { return };
        let lost = if res.pr_type.all_registrants() {
            self.regs.is_empty()
        } else {
            res.holder == reg.id
        };
        if lost {
            self.res = None;
            // SPC-4 5.12.11.2.2: releasing a registrants-only reservation by
            // unregistering tells the other registrants.
            if matches!(
                res.pr_type,
                PrType::WriteExclusiveRegistrantsOnly | PrType::ExclusiveAccessRegistrantsOnly
            ) {
                for id in self.others(&reg.id) {
                    fx.uas.push((id, Sense::reservations_released()));
                }
            }
        }
    }

    fn check_scope_type(scope: u8, pr_type: u8) -> Result<PrType, Sense> {
        if scope != 0 {
            return Err(Sense::invalid_field_cdb(2, Some(7)));
        }
        PrType::from_u8(pr_type).ok_or_else(|| Sense::invalid_field_cdb(2, Some(3)))
    }

    /// Executes PERSISTENT RESERVE OUT for nexus `me`.
    pub fn out(
        &mut self,
        me: &PortId,
        service_action: u8,
        scope: u8,
        pr_type: u8,
        param: &[u8],
        can_persist: bool,
    ) -> Result<PrEffects, PrError> {
        if service_action > sa::REGISTER_AND_MOVE {
            return Err(Sense::invalid_field_cdb(1, Some(4)).into());
        }
        if service_action == sa::REGISTER_AND_MOVE {
            return self.register_and_move(me, scope, pr_type, param, can_persist);
        }
        // Basic parameter list: exactly 24 bytes without SPEC_I_PT.
        if param.len() != 24 {
            return Err(Sense::param_list_length_error().into());
        }
        let key = be64(param, 0);
        let sa_key = be64(param, 8);
        let flags = param[20];
        let spec_i_pt = flags & 0x08 != 0;
        let all_tg_pt = flags & 0x04 != 0;
        let aptpl = flags & 0x01 != 0;
        let is_register = matches!(service_action, sa::REGISTER | sa::REGISTER_AND_IGNORE);
        // SPEC_I_PT / ALL_TG_PT are not supported (SIP_C = ATP_C = 0).
        if spec_i_pt {
            return Err(Sense::invalid_field_param(20, Some(3)).into());
        }
        if all_tg_pt && is_register {
            return Err(Sense::invalid_field_param(20, Some(2)).into());
        }
        if aptpl && is_register && !can_persist {
            return Err(Sense::invalid_field_param(20, Some(0)).into());
        }
        let mine = self.reg_index(me);
        let mut fx = PrEffects::default();

        if is_register {
            match mine {
                None => {
                    if service_action == sa::REGISTER && key != 0 {
                        return Err(PrError::Conflict);
                    }
                    if sa_key == 0 {
                        return Ok(fx); // unregistering an unregistered nexus: no-op
                    }
                    if self.regs.len() >= MAX_REGISTRATIONS {
                        return Err(Sense::insufficient_registration_resources().into());
                    }
                    self.regs.push(Registration {
                        id: me.clone(),
                        key: sa_key,
                    });
                }
                Some(i) => {
                    if service_action == sa::REGISTER && key != self.regs[i].key {
                        return Err(PrError::Conflict);
                    }
                    if sa_key == 0 {
                        self.unregister(i, &mut fx);
                    } else {
                        self.regs[i].key = sa_key;
                    }
                }
            }
            self.aptpl = aptpl;
            self.generation = self.generation.wrapping_add(1);
            fx.changed = true;
            return Ok(fx);
        }

        // Every other service action needs a registered nexus with the right key.
        let Some(i) = mine else {
            return Err(PrError::Conflict);
        };
        if self.regs[i].key != key {
            return Err(PrError::Conflict);
        }
        match service_action {
            sa::RESERVE => {
                let t = Self::check_scope_type(scope, pr_type)?;
                match &self.res {
                    None => {
                        self.res = Some(Reservation {
                            holder: me.clone(),
                            pr_type: t,
                        });
                        fx.changed = true;
                    }
                    Some(r) if self.is_holder(me) && r.pr_type == t => {}
                    Some(_) => return Err(PrError::Conflict),
                }
            }
            sa::RELEASE => {
                let t = Self::check_scope_type(scope, pr_type)?;
                if let Some(r) = self.res.clone() {
                    if self.is_holder(me) {
                        if r.pr_type != t {
                            return Err(Sense::invalid_release_of_pr().into());
                        }
                        self.res = None;
                        fx.changed = true;
                        if r.pr_type.registrants_have_access() {
                            for id in self.others(me) {
                                fx.uas.push((id, Sense::reservations_released()));
                            }
                        }
                    }
                }
            }
            sa::CLEAR => {
                for id in self.others(me) {
                    fx.uas.push((id, Sense::reservations_preempted()));
                }
                self.regs.clear();
                self.res = None;
                self.generation = self.generation.wrapping_add(1);
                fx.changed = true;
            }
            sa::PREEMPT | sa::PREEMPT_AND_ABORT => {
                // PREEMPT AND ABORT: aborting the preempted tasks is the transport's job.
                let t = Self::check_scope_type(scope, pr_type)?;
                self.preempt(me, sa_key, t, &mut fx)?;
                self.generation = self.generation.wrapping_add(1);
                fx.changed = true;
            }
            _ => return Err(Sense::invalid_field_cdb(1, Some(4)).into()),
        }
        Ok(fx)
    }

    /// Removes every registration with `sa_key` except `me`'s; returns how many.
    fn remove_key(&mut self, me: &PortId, sa_key: u64, fx: &mut PrEffects) -> usize {
        let before = self.regs.len();
        let mut kept = Vec::with_capacity(before);
        for r in self.regs.drain(..) {
            if r.key == sa_key && &r.id != me {
                fx.uas.push((r.id, Sense::registrations_preempted()));
            } else {
                kept.push(r);
            }
        }
        self.regs = kept;
        before - self.regs.len()
    }

    fn preempt(
        &mut self,
        me: &PortId,
        sa_key: u64,
        t: PrType,
        fx: &mut PrEffects,
    ) -> Result<(), PrError> {
        match self.res.clone() {
            // No reservation, or an all-registrants one with a non-zero key:
            // just remove the matching registrations (SPC-4 5.12.11.2.3).
            None => self.preempt_registrations(me, sa_key, fx),
            Some(r) if r.pr_type.all_registrants() && sa_key != 0 => {
                self.preempt_registrations(me, sa_key, fx)
            }
            Some(r) if r.pr_type.all_registrants() => {
                // Key 0 under all-registrants: everyone else goes, we reserve.
                for id in self.others(me) {
                    fx.uas.push((id, Sense::registrations_preempted()));
                }
                self.regs.retain(|x| &x.id == me);
                self.res = Some(Reservation {
                    holder: me.clone(),
                    pr_type: t,
                });
                Ok(())
            }
            Some(r) => {
                let holder_key = self.key_of(&r.holder);
                if holder_key == Some(sa_key) {
                    self.remove_key(me, sa_key, fx);
                    let changed = r.pr_type != t;
                    self.res = Some(Reservation {
                        holder: me.clone(),
                        pr_type: t,
                    });
                    if changed {
                        let preempted: Vec<PortId> =
                            fx.uas.iter().map(|(id, _)| id.clone()).collect();
                        for id in self.others(me) {
                            if !preempted.contains(&id) {
                                fx.uas.push((id, Sense::reservations_released()));
                            }
                        }
                    }
                    Ok(())
                } else {
                    self.preempt_registrations(me, sa_key, fx)
                }
            }
        }
    }

    fn preempt_registrations(
        &mut self,
        me: &PortId,
        sa_key: u64,
        fx: &mut PrEffects,
    ) -> Result<(), PrError> {
        if sa_key == 0 {
            return Err(Sense::invalid_field_param(8, None).into());
        }
        if self.remove_key(me, sa_key, fx) == 0 {
            return Err(PrError::Conflict);
        }
        Ok(())
    }

    fn register_and_move(
        &mut self,
        me: &PortId,
        scope: u8,
        pr_type: u8,
        param: &[u8],
        can_persist: bool,
    ) -> Result<PrEffects, PrError> {
        if param.len() < 24 {
            return Err(Sense::param_list_length_error().into());
        }
        let key = be64(param, 0);
        let sa_key = be64(param, 8);
        let unreg = param[17] & 0x02 != 0;
        let aptpl = param[17] & 0x01 != 0;
        let rel_port = u16::from_be_bytes([param[18], param[19]]);
        let tid_len = be32(param, 20) as usize;
        let Some(tid) = param.get(24..24usize.saturating_add(tid_len)) else {
            return Err(Sense::param_list_length_error().into());
        };
        let Some(i) = self.reg_index(me) else {
            return Err(PrError::Conflict);
        };
        if self.regs[i].key != key {
            return Err(PrError::Conflict);
        }
        let Some(res) = self.res.clone() else {
            return Err(PrError::Conflict);
        };
        if !self.is_holder(me) || res.pr_type.all_registrants() {
            return Err(PrError::Conflict);
        }
        let t = Self::check_scope_type(scope, pr_type)?;
        if sa_key == 0 {
            return Err(Sense::invalid_field_param(8, None).into());
        }
        if aptpl && !can_persist {
            return Err(Sense::invalid_field_param(17, Some(0)).into());
        }
        let (initiator, isid) = parse_iscsi_transport_id(tid)?;
        let dest = PortId {
            initiator,
            isid,
            rel_port,
        };
        if &dest == me {
            return Err(Sense::invalid_field_param(24, None).into());
        }
        if self.reg_index(&dest).is_none() {
            if self.regs.len() >= MAX_REGISTRATIONS {
                return Err(Sense::insufficient_registration_resources().into());
            }
            self.regs.push(Registration {
                id: dest.clone(),
                key: sa_key,
            });
        }
        self.res = Some(Reservation {
            holder: dest,
            pr_type: t,
        });
        if unreg {
            if let Some(i) = self.reg_index(me) {
                self.regs.remove(i);
            }
        }
        self.aptpl = aptpl;
        self.generation = self.generation.wrapping_add(1);
        Ok(PrEffects {
            uas: Vec::new(),
            changed: true,
        })
    }

    /// Builds PERSISTENT RESERVE IN data (not yet truncated).
    pub fn read(&self, service_action: u8, can_persist: bool) -> Result<Vec<u8>, Sense> {
        let mut d = self.generation.to_be_bytes().to_vec();
        match service_action {
            0 => {
                // READ KEYS
                d.extend_from_slice(&((self.regs.len() * 8) as u32).to_be_bytes());
                for r in &self.regs {
                    d.extend_from_slice(&r.key.to_be_bytes());
                }
            }
            1 => {
                // READ RESERVATION
                match &self.res {
                    None => d.extend_from_slice(&0u32.to_be_bytes()),
                    Some(r) => {
                        d.extend_from_slice(&16u32.to_be_bytes());
                        let key = if r.pr_type.all_registrants() {
                            0
                        } else {
                            self.key_of(&r.holder).unwrap_or(0)
                        };
                        d.extend_from_slice(&key.to_be_bytes());
                        d.extend_from_slice(&[0, 0, 0, 0, 0, r.pr_type as u8, 0, 0]);
                    }
                }
            }
            2 => {
                // REPORT CAPABILITIES
                let mut c = vec![0u8; 8];
                c[1] = 8;
                // CRH: RESERVE/RELEASE follow SPC-4 5.12.3; PTPL_C with a store.
                c[2] = 0x10 | u8::from(can_persist);
                // TMV, ALLOW COMMANDS 001b, PTPL_A.
                c[3] = 0x80 | 0x10 | u8::from(self.aptpl);
                c[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02;
                c[5] = 0x01;
                return Ok(c);
            }
            3 => {
                // READ FULL STATUS
                let mut body = Vec::new();
                for r in &self.regs {
                    let holder = self.is_holder(&r.id);
                    body.extend_from_slice(&r.key.to_be_bytes());
                    body.extend_from_slice(&[0; 4]);
                    body.push(u8::from(holder));
                    let ty = match (&self.res, holder) {
                        (Some(res), true) => res.pr_type as u8,
                        _ => 0,
                    };
                    body.push(ty);
                    body.extend_from_slice(&[0; 4]);
                    body.extend_from_slice(&r.id.rel_port.to_be_bytes());
                    let tid = r.id.transport_id();
                    body.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                    body.extend(tid);
                }
                d.extend_from_slice(&(body.len() as u32).to_be_bytes());
                d.extend(body);
            }
            _ => return Err(Sense::invalid_field_cdb(1, Some(4))),
        }
        Ok(d)
    }

    // ---- APTPL persistence -------------------------------------------------

    const MAGIC: &'static [u8; 4] = b"TPR1";

    fn put_id(out: &mut Vec<u8>, id: &PortId) {
        out.extend_from_slice(&id.rel_port.to_be_bytes());
        out.extend_from_slice(&id.isid);
        let name = id.initiator.as_bytes();
        out.extend_from_slice(&(name.len().min(0xFFFF) as u16).to_be_bytes());
        out.extend_from_slice(&name[..name.len().min(0xFFFF)]);
    }

    /// Serialises the state; without APTPL nothing but the header survives.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Self::MAGIC.to_vec();
        out.push(u8::from(self.aptpl));
        if !self.aptpl {
            return out;
        }
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&(self.regs.len() as u32).to_be_bytes());
        for r in &self.regs {
            out.extend_from_slice(&r.key.to_be_bytes());
            Self::put_id(&mut out, &r.id);
        }
        match &self.res {
            None => out.push(0),
            Some(res) => {
                out.push(res.pr_type as u8);
                Self::put_id(&mut out, &res.holder);
            }
        }
        out
    }

    /// The whole state whatever APTPL says: what travels between the nodes of a replicated
    /// device (the store keeps [`PrState::encode`]). The flag byte after the magic is
    /// 0x80 | APTPL.
    pub fn encode_full(&self) -> Vec<u8> {
        let mut whole = self.clone();
        whole.aptpl = true;
        let mut out = whole.encode();
        out[Self::MAGIC.len()] = 0x80 | u8::from(self.aptpl);
        out
    }

    /// Parses [`PrState::encode_full`] output; `None` for anything malformed.
    pub fn decode_full(blob: &[u8]) -> Option<PrState> {
        let at = Self::MAGIC.len();
        let flag = *blob.get(at)?;
        if flag & 0xfe != 0x80 {
            return None;
        }
        let mut b = blob.to_vec();
        b[at] = 1;
        let mut s = Self::decode(&b)?;
        s.aptpl = flag & 1 == 1;
        Some(s)
    }

    /// Parses [`PrState::encode`] output; `None` for anything malformed.
    pub fn decode(blob: &[u8]) -> Option<PrState> {
        let mut r = Reader(blob);
        if r.take(4)? != Self::MAGIC {
            return None;
        }
        if r.take(1)?[0] == 0 {
            return Some(PrState::default());
        }
        let generation = r.u32()?;
        let n = r.u32()? as usize;
        if n > MAX_REGISTRATIONS {
            return None;
        }
        let mut regs = Vec::with_capacity(n);
        for _ in 0..n {
            let key = r.u64()?;
            regs.push(Registration { key, id: r.id()? });
        }
        let ty = r.take(1)?[0];
        let res = if ty == 0 {
            None
        } else {
            Some(Reservation {
                pr_type: PrType::from_u8(ty)?,
                holder: r.id()?,
            })
        };
        Some(PrState {
            generation,
            regs,
            res,
            aptpl: true,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn id(&mut self) -> Option<PortId> {
        let rel_port = u16::from_be_bytes(self.take(2)?.try_into().ok()?);
        let isid: [u8; 6] = self.take(6)?.try_into().ok()?;
        let len = u16::from_be_bytes(self.take(2)?.try_into().ok()?);
        let name = String::from_utf8(self.take(usize::from(len))?.to_vec()).ok()?;
        Some(PortId {
            initiator: name,
            isid,
            rel_port,
        })
    }
}

/// Parses an iSCSI TransportID with format 01b ("name,i,0x<isid>").
fn parse_iscsi_transport_id(tid: &[u8]) -> Result<(String, [u8; 6]), Sense> {
    let bad = |at: u16| Sense::invalid_field_param(24 + at, None);
    let b0 = *tid.first().ok_or_else(|| bad(0))?;
    if b0 & 0x0F != 0x05 || b0 >> 6 != 1 {
        return Err(bad(0));
    }
    let len = usize::from(u16::from_be_bytes([
        tid.get(2).copied().unwrap_or(0),
        tid.get(3).copied().unwrap_or(0),
    ]));
    let raw = tid.get(4..4 + len).ok_or_else(|| bad(2))?;
    let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    let s = std::str::from_utf8(&raw[..end]).map_err(|_| bad(4))?;
    let lower = s.to_ascii_lowercase();
    let (name, isid_hex) = lower.rsplit_once(",i,0x").ok_or_else(|| bad(4))?;
    if isid_hex.len() != 12 || name.is_empty() {
        return Err(bad(4));
    }
    let mut isid = [0u8; 6];
    for (k, x) in isid.iter_mut().enumerate() {
        *x = u8::from_str_radix(isid_hex.get(2 * k..2 * k + 2).ok_or_else(|| bad(4))?, 16)
            .map_err(|_| bad(4))?;
    }
    Ok((name.to_string(), isid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> PortId {
        PortId {
            initiator: format!("iqn.test:{n}"),
            isid: [0, 0, 0, 0, 0, n],
            rel_port: 1,
        }
    }

    fn param(key: u64, sa_key: u64, flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 24];
        p[0..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sa_key.to_be_bytes());
        p[20] = flags;
        p
    }

    #[test]
    fn register_reserve_conflict_matrix() {
        let mut s = PrState::default();
        s.out(&id(1), 0, 0, 0, &param(0, 0xA, 0), false).unwrap();
        s.out(&id(2), 0, 0, 0, &param(0, 0xB, 0), false).unwrap();
        assert_eq!(s.generation, 2);
        s.out(&id(1), 1, 0, 1, &param(0xA, 0, 0), false).unwrap();
        // Write exclusive: reads allowed, writes conflict for others.
        assert!(!s.conflicts(&id(2), Access::Read));
        assert!(s.conflicts(&id(2), Access::Write));
        assert!(!s.conflicts(&id(1), Access::Write));
        // A second reserve from another nexus conflicts.
        assert_eq!(
            s.out(&id(2), 1, 0, 1, &param(0xB, 0, 0), false)
                .unwrap_err(),
            PrError::Conflict
        );
        // Wrong type on release by the holder.
        assert_eq!(
            s.out(&id(1), 2, 0, 3, &param(0xA, 0, 0), false)
                .unwrap_err(),
            PrError::Check(Sense::invalid_release_of_pr())
        );
    }

    #[test]
    fn preempt_moves_reservation_and_notifies() {
        let mut s = PrState::default();
        s.out(&id(1), 0, 0, 0, &param(0, 0xA, 0), false).unwrap();
        s.out(&id(2), 0, 0, 0, &param(0, 0xB, 0), false).unwrap();
        s.out(&id(1), 1, 0, 3, &param(0xA, 0, 0), false).unwrap();
        let fx = s.out(&id(2), 4, 0, 3, &param(0xB, 0xA, 0), false).unwrap();
        assert_eq!(fx.uas, vec![(id(1), Sense::registrations_preempted())]);
        assert!(s.is_holder(&id(2)));
        assert_eq!(s.regs.len(), 1);
    }

    #[test]
    fn all_registrants_semantics() {
        let mut s = PrState::default();
        s.out(&id(1), 0, 0, 0, &param(0, 0xA, 0), false).unwrap();
        s.out(&id(2), 0, 0, 0, &param(0, 0xB, 0), false).unwrap();
        s.out(&id(1), 1, 0, 8, &param(0xA, 0, 0), false).unwrap();
        assert!(s.is_holder(&id(2)));
        assert!(s.conflicts(&id(3), Access::Read));
        // Reservation survives while a registrant remains.
        s.out(&id(1), 0, 0, 0, &param(0xA, 0, 0), false).unwrap();
        assert!(s.res.is_some());
        s.out(&id(2), 0, 0, 0, &param(0xB, 0, 0), false).unwrap();
        assert!(s.res.is_none());
    }

    #[test]
    fn full_status_and_capabilities_shape() {
        let mut s = PrState::default();
        s.out(&id(1), 0, 0, 0, &param(0, 0xA, 0), false).unwrap();
        let d = s.read(3, false).unwrap();
        let tid = id(1).transport_id();
        assert_eq!(d.len(), 8 + 24 + tid.len());
        assert_eq!(&d[8..16], &0xAu64.to_be_bytes());
        assert_eq!(tid[0], 0x45);
        let c = s.read(2, true).unwrap();
        assert_eq!(c[1], 8);
        assert_eq!(c[2] & 1, 1);
    }

    #[test]
    fn register_and_move() {
        let mut s = PrState::default();
        s.out(&id(1), 0, 0, 0, &param(0, 0xA, 0), false).unwrap();
        s.out(&id(1), 1, 0, 1, &param(0xA, 0, 0), false).unwrap();
        let mut p = vec![0u8; 24];
        p[0..8].copy_from_slice(&0xAu64.to_be_bytes());
        p[8..16].copy_from_slice(&0xCu64.to_be_bytes());
        p[17] = 0x02; // UNREG
        p[19] = 1;
        let tid = id(2).transport_id();
        p[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
        p.extend(tid);
        s.out(&id(1), 7, 0, 1, &p, false).unwrap();
        assert!(s.is_holder(&id(2)));
        assert_eq!(s.key_of(&id(2)), Some(0xC));
        assert_eq!(s.key_of(&id(1)), None);
    }

    #[test]
    fn aptpl_roundtrip() {
        let mut s = PrState::default();
        assert_eq!(
            s.out(&id(1), 0, 0, 0, &param(0, 0xA, 1), false)
                .unwrap_err(),
            PrError::Check(Sense::invalid_field_param(20, Some(0)))
        );
        s.out(&id(1), 0, 0, 0, &param(0, 0xA, 1), true).unwrap();
        s.out(&id(1), 1, 0, 5, &param(0xA, 0, 0), true).unwrap();
        assert_eq!(PrState::decode(&s.encode()), Some(s.clone()));
        assert_eq!(PrState::decode(&s.encode()[..10]), None);
    }
}
