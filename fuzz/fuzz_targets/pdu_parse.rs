//! Fuzzes the PDU header parsers: the `Bhs` view and every `Repr::parse`. Whatever parses must
//! re-emit to a header that parses to the same Repr.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_iscsi::wire::*;

fn roundtrip<R: PduRepr + PartialEq + core::fmt::Debug>(bhs: &Bhs<&[u8]>) {
    if let Ok(r) = R::parse_bhs(bhs) {
        let mut buf = [0u8; BHS_LEN];
        r.emit_bhs(&mut buf);
        let again = R::parse_bhs(&Bhs::new_unchecked(&buf[..])).expect("re-parse");
        assert_eq!(r, again);
    }
}

fuzz_target!(|data: &[u8]| {
    // Unchecked view: parse must still not panic on short input.
    let unchecked = Bhs::new_unchecked(data);
    let _ = AnyPdu::parse(&unchecked);
    let _ = ScsiCommandRepr::parse(&unchecked);

    let Ok(bhs) = Bhs::new_checked(data) else { return };
    let _ = (bhs.opcode(), bhs.immediate(), bhs.final_flag(), bhs.lun(), bhs.itt());
    let _ = bhs.pdu_len(true, true);
    let _ = tandem_iscsi::digest::crc32c(bhs.header());

    if let Ok(any) = AnyPdu::parse(&bhs) {
        let mut buf = [0u8; BHS_LEN];
        any.emit(&mut buf);
        assert_eq!(AnyPdu::parse(&Bhs::new_unchecked(&buf[..])).expect("re-parse"), any);
    }
    roundtrip::<NopOutRepr>(&bhs);
    roundtrip::<ScsiCommandRepr>(&bhs);
    roundtrip::<TaskMgmtRequestRepr>(&bhs);
    roundtrip::<LoginRequestRepr>(&bhs);
    roundtrip::<TextRequestRepr>(&bhs);
    roundtrip::<DataOutRepr>(&bhs);
    roundtrip::<LogoutRequestRepr>(&bhs);
    roundtrip::<SnackRequestRepr>(&bhs);
    roundtrip::<NopInRepr>(&bhs);
    roundtrip::<ScsiResponseRepr>(&bhs);
    roundtrip::<TaskMgmtResponseRepr>(&bhs);
    roundtrip::<LoginResponseRepr>(&bhs);
    roundtrip::<TextResponseRepr>(&bhs);
    roundtrip::<DataInRepr>(&bhs);
    roundtrip::<LogoutResponseRepr>(&bhs);
    roundtrip::<R2tRepr>(&bhs);
    roundtrip::<AsyncMessageRepr>(&bhs);
    roundtrip::<RejectRepr>(&bhs);

    // The AHS that follows the BHS (as much of it as the input holds).
    let ahs_end = data.len().min(BHS_LEN + bhs.total_ahs_len());
    if let Ok(ahs) = parse_ahs(&data[BHS_LEN..ahs_end]) {
        if let Ok(cmd) = ScsiCommandRepr::parse(&bhs) {
            if let Ok(cdb) = cmd.full_cdb(&ahs) {
                assert!(cdb.len() >= 16 && cdb.len() <= MAX_CDB_LEN);
            }
        }
    }

    // Setters on a copy cannot panic either.
    let mut copy = [0u8; BHS_LEN];
    copy.copy_from_slice(&data[..BHS_LEN]);
    let mut m = Bhs::new_unchecked(&mut copy[..]);
    let _ = m.set_data_segment_len(bhs.data_segment_len());
    let _ = m.set_total_ahs_len(bhs.total_ahs_len());
});
