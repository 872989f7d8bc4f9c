//! Fuzzes text parsing and the login state machine. The input is split into a sequence of
//! Login Requests: each chunk is a 48-byte header (parsed with `LoginRequestRepr::parse`)
//! followed by a 2-byte length and that many data bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_iscsi::login::{
    AuthPolicy, LoginOutcome, LoginState, TargetDirectory, TargetLimits, TargetPolicy,
};
use tandem_iscsi::text::{parse_pairs, TextLimits};
use tandem_iscsi::wire::{Bhs, LoginRequestRepr, BHS_LEN};

struct Dir;

impl TargetDirectory for Dir {
    fn lookup(&self, name: &str) -> Option<TargetPolicy> {
        let auth = if name.ends_with("chap") {
            AuthPolicy::Chap {
                username: "user".into(),
                secret: "secret-secret".into(),
                mutual: Some(("tgt".into(), "tgt-secret-secret".into())),
            }
        } else {
            AuthPolicy::None
        };
        name.starts_with("iqn.").then(|| TargetPolicy {
            name: name.to_string(),
            alias: Some("alias".into()),
            tpgt: 1,
            auth,
            allowed_initiators: vec![],
            limits: TargetLimits::default(),
        })
    }
    fn discovery_auth(&self) -> AuthPolicy {
        AuthPolicy::None
    }
    fn discovery_limits(&self) -> TargetLimits {
        TargetLimits::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = parse_pairs(data, &TextLimits::DEFAULT);

    let mut st = LoginState::new([0; 32]);
    let mut rest = data;
    for _ in 0..16 {
        if rest.len() < BHS_LEN + 2 {
            break;
        }
        let (hdr, tail) = rest.split_at(BHS_LEN);
        let len = usize::from(u16::from_be_bytes([tail[0], tail[1]]));
        let tail = &tail[2..];
        let len = len.min(tail.len());
        let (body, tail) = tail.split_at(len);
        rest = tail;
        let Ok(req) = LoginRequestRepr::parse(&Bhs::new_unchecked(hdr)) else { continue };
        let _ = parse_pairs(body, &TextLimits::DEFAULT);
        let step = st.handle(&req, body, &Dir);
        assert!(step.data.len() <= tandem_iscsi::login::MAX_LOGIN_RESPONSE);
        assert!(!(step.response.transit && !req.transit));
        match step.outcome {
            LoginOutcome::Failed => assert_ne!(step.response.status_class, 0),
            _ => assert_eq!(step.response.status_class, 0),
        }
    }
});
