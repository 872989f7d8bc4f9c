//! Fuzzes the mirror protocol receive path: arbitrary bytes, cut into pieces, through the
//! `FrameDecoder` and `decode_frame`. Nothing may panic, the decoder may never hold more than
//! one largest frame, and whatever decodes must re-encode to the very same bytes.
//!
//! First input byte: bits 0-6 the piece size (0 counts as 1); bit 7 set means "make the CRCs
//! right first", so the fuzzer reaches the body parsers instead of stopping at the header CRC.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_mirror::frame::FIXED_HEADER_LEN;
use tandem_mirror::{decode_frame, encode, payload_crc32c, Decoded, Frame, FrameDecoder, Limits};

/// Rewrites the payload and header CRC of every frame the bytes announce, front to back.
fn fix_crcs(stream: &mut [u8]) {
    let mut pos = 0;
    while stream.len() - pos >= FIXED_HEADER_LEN {
        let f = Frame::new_unchecked(&stream[pos..]);
        let (header_len, total) = (usize::from(f.header_len()), f.total_len());
        if header_len < FIXED_HEADER_LEN || total > stream.len() - pos {
            return;
        }
        let crc = payload_crc32c(&stream[pos + header_len..pos + total]);
        let mut f = Frame::new_unchecked(&mut stream[pos..pos + total]);
        f.set_payload_crc(crc);
        f.fill_header_crc();
        pos += total;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(mode & 0x7f).max(1);
    let mut owned;
    let stream = if mode & 0x80 != 0 {
        owned = stream.to_vec();
        fix_crcs(&mut owned);
        &owned[..]
    } else {
        stream
    };
    // A small payload limit so that oversize frames are reachable by the fuzzer.
    let limits = Limits::new(4096).expect("under the ceiling");
    let _ = decode_frame(stream, &limits);

    let mut d = FrameDecoder::new(limits);
    for chunk in stream.chunks(piece) {
        let mut rest = chunk;
        while !rest.is_empty() {
            let took = d.feed(rest);
            assert!(d.buffered() <= limits.frame_len_max_bytes());
            rest = &rest[took..];
            let mut progressed = took > 0;
            loop {
                match d.next_frame() {
                    Ok(Some(frame)) => {
                        progressed = true;
                        check_round_trip(frame, &limits);
                    }
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
            assert!(progressed, "a full decoder must yield a frame or an error");
        }
    }
});

fn check_round_trip(frame: &[u8], limits: &Limits) {
    match decode_frame(frame, limits) {
        Ok(Decoded::Replication(env)) => {
            let mut again = Vec::new();
            encode(&env, limits, &mut again).expect("a decoded message re-encodes");
            assert_eq!(again, frame);
        }
        Ok(Decoded::Link(m)) => {
            let mut again = Vec::new();
            m.encode(&mut again)
                .expect("a decoded link control frame re-encodes");
            assert_eq!(again, frame);
        }
        Ok(Decoded::Handshake(m)) => {
            let mut again = Vec::new();
            m.encode(&mut again)
                .expect("a decoded handshake re-encodes");
            assert_eq!(again, frame);
        }
        Err(_) => {}
    }
}
