use super::*;
use crate::text::parse_pairs;

const INITIATOR: &str = "iqn.1994-05.com.redhat:host1";
const TARGET: &str = "iqn.2026-11.io.tandem:n1-disk";
const ISID: [u8; 6] = [0x00, 0x02, 0x3d, 0x00, 0x00, 0x01];

struct Dir {
    targets: Vec<TargetPolicy>,
    discovery_auth: AuthPolicy,
}

impl TargetDirectory for Dir {
    fn lookup(&self, name: &str) -> Option<TargetPolicy> {
        self.targets
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
            .cloned()
    }
    fn discovery_auth(&self) -> AuthPolicy {
        self.discovery_auth.clone()
    }
    fn discovery_limits(&self) -> TargetLimits {
        TargetLimits {
            max_recv_data_segment_length: 32768,
            ..TargetLimits::default()
        }
    }
}

fn chap_policy(mutual: bool) -> AuthPolicy {
    AuthPolicy::Chap {
        username: "hostuser".into(),
        secret: "host-secret-123".into(),
        mutual: mutual.then(|| ("targetuser".into(), "target-secret-456".into())),
    }
}

fn dir(auth: AuthPolicy, allowed: Vec<String>) -> Dir {
    Dir {
        targets: vec![TargetPolicy {
            name: TARGET.into(),
            alias: Some("disk".into()),
            tpgt: 3,
            auth,
            allowed_initiators: allowed,
            limits: TargetLimits::default(),
        }],
        discovery_auth: AuthPolicy::None,
    }
}

fn req(csg: Stage, nsg: Stage, transit: bool) -> LoginRequestRepr {
    LoginRequestRepr {
        transit,
        cont: false,
        csg,
        nsg,
        version_max: 0,
        version_min: 0,
        isid: ISID,
        tsih: 0,
        itt: 0x1000,
        cid: 0,
        cmdsn: 1,
        expstatsn: 0,
    }
}

fn text(pairs: &[(&str, &str)]) -> Vec<u8> {
    emit_pairs(pairs)
}

fn keys(data: &[u8]) -> Vec<(String, String)> {
    parse_pairs(data, &TextLimits::DEFAULT).unwrap()
}

fn key<'a>(pairs: &'a [(String, String)], k: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(kk, _)| kk == k)
        .map(|(_, v)| v.as_str())
}

fn status(step: &LoginStep) -> (u8, u8) {
    (step.response.status_class, step.response.status_detail)
}

fn first_security(extra: &[(&str, &str)]) -> Vec<u8> {
    let mut pairs = vec![
        ("InitiatorName", INITIATOR),
        ("InitiatorAlias", "host1"),
        ("SessionType", "Normal"),
        ("TargetName", TARGET),
    ];
    pairs.extend_from_slice(extra);
    text(&pairs)
}

/// The operational keys open-iscsi sends for a normal session.
fn open_iscsi_operational() -> Vec<u8> {
    text(&[
        ("HeaderDigest", "CRC32C,None"),
        ("DataDigest", "None"),
        ("DefaultTime2Wait", "2"),
        ("DefaultTime2Retain", "0"),
        ("IFMarker", "No"),
        ("OFMarker", "No"),
        ("ErrorRecoveryLevel", "0"),
        ("InitialR2T", "No"),
        ("ImmediateData", "Yes"),
        ("MaxBurstLength", "16776192"),
        ("FirstBurstLength", "262144"),
        ("MaxOutstandingR2T", "1"),
        ("MaxConnections", "1"),
        ("DataPDUInOrder", "Yes"),
        ("DataSequenceInOrder", "Yes"),
        ("MaxRecvDataSegmentLength", "262144"),
    ])
}

fn state() -> LoginState {
    LoginState::new([7; 32])
}

fn finish_operational(st: &mut LoginState, d: &Dir) -> LoginResult {
    let step = st.handle(
        &req(Stage::Operational, Stage::FullFeature, true),
        &open_iscsi_operational(),
        d,
    );
    assert_eq!(status(&step), (0, 0));
    assert!(step.response.transit);
    assert_eq!(step.response.csg, Stage::Operational);
    assert_eq!(step.response.nsg, Stage::FullFeature);
    match step.outcome {
        LoginOutcome::Complete(r) => r,
        other => panic!("not complete: {other:?}"),
    }
}

#[test]
fn normal_login_no_auth() {
    let d = dir(AuthPolicy::None, vec![]);
    let mut st = state();
    let step = st.handle(
        &req(Stage::Security, Stage::Operational, true),
        &first_security(&[("AuthMethod", "None")]),
        &d,
    );
    assert_eq!(status(&step), (0, 0));
    assert_eq!(step.outcome, LoginOutcome::Continue);
    assert!(step.response.transit);
    assert_eq!(step.response.csg, Stage::Security);
    assert_eq!(step.response.nsg, Stage::Operational);
    assert_eq!(step.response.isid, ISID);
    assert_eq!(step.response.itt, 0x1000);
    assert_eq!(step.response.tsih, 0);
    assert_eq!(
        (step.response.version_max, step.response.version_active),
        (0, 0)
    );
    let k = keys(&step.data);
    assert_eq!(key(&k, "TargetPortalGroupTag"), Some("3"));
    assert_eq!(key(&k, "TargetAlias"), Some("disk"));
    assert_eq!(key(&k, "AuthMethod"), Some("None"));

    let step = st.handle(
        &req(Stage::Operational, Stage::FullFeature, true),
        &open_iscsi_operational(),
        &d,
    );
    assert_eq!(status(&step), (0, 0));
    let k = keys(&step.data);
    assert_eq!(key(&k, "HeaderDigest"), Some("CRC32C"));
    assert_eq!(key(&k, "DataDigest"), Some("None"));
    assert_eq!(key(&k, "DefaultTime2Wait"), Some("2"));
    assert_eq!(key(&k, "DefaultTime2Retain"), Some("0"));
    assert_eq!(key(&k, "IFMarker"), Some("No"));
    assert_eq!(key(&k, "OFMarker"), Some("No"));
    assert_eq!(key(&k, "ErrorRecoveryLevel"), Some("0"));
    assert_eq!(key(&k, "InitialR2T"), Some("Yes"));
    assert_eq!(key(&k, "ImmediateData"), Some("Yes"));
    assert_eq!(key(&k, "MaxBurstLength"), Some("1048576"));
    assert_eq!(key(&k, "FirstBurstLength"), Some("262144"));
    assert_eq!(key(&k, "MaxOutstandingR2T"), Some("1"));
    assert_eq!(key(&k, "MaxConnections"), Some("1"));
    assert_eq!(key(&k, "DataPDUInOrder"), Some("Yes"));
    assert_eq!(key(&k, "DataSequenceInOrder"), Some("Yes"));
    assert_eq!(key(&k, "MaxRecvDataSegmentLength"), Some("262144"));
    assert_eq!(key(&k, "TargetPortalGroupTag"), None, "sent only once");
    let LoginOutcome::Complete(r) = step.outcome else {
        panic!("not complete")
    };
    assert_eq!(r.session_type, SessionType::Normal);
    assert_eq!(r.initiator_name, INITIATOR);
    assert_eq!(r.initiator_alias.as_deref(), Some("host1"));
    assert_eq!(r.target_name.as_deref(), Some(TARGET));
    assert_eq!(r.isid, ISID);
    assert_eq!(r.tsih, 0);
    assert_eq!(r.first_cmdsn, 1);
    let p = r.params;
    assert!(p.header_digest && !p.data_digest);
    assert!(p.initial_r2t && p.immediate_data);
    assert_eq!(p.max_burst_length, 1 << 20);
    assert_eq!(p.first_burst_length, 262144);
    assert_eq!(p.max_recv_data_segment_length_initiator, 262144);
    assert_eq!(p.max_recv_data_segment_length_target, 262144);
    assert_eq!(p.default_time2retain, 0);

    // Nothing is accepted after completion.
    let step = st.handle(&req(Stage::Operational, Stage::FullFeature, true), &[], &d);
    assert_eq!(step.outcome, LoginOutcome::Failed);
}

#[test]
fn response_prefills_sequence_numbers() {
    let d = dir(AuthPolicy::None, vec![]);
    let mut st = state();
    let mut r = req(Stage::Security, Stage::Operational, true);
    r.cmdsn = 77;
    r.expstatsn = 12;
    let step = st.handle(&r, &first_security(&[("AuthMethod", "None")]), &d);
    assert_eq!(
        (
            step.response.statsn,
            step.response.expcmdsn,
            step.response.maxcmdsn
        ),
        (12, 77, 77)
    );
}

/// Runs a CHAP login, returning the step answering CHAP_N/CHAP_R.
fn chap_login(
    st: &mut LoginState,
    d: &Dir,
    chap_a: &str,
    secret: &str,
    mutual_challenge: Option<Vec<u8>>,
) -> (LoginStep, ChapAlgorithm, Vec<u8>) {
    let step = st.handle(
        &req(Stage::Security, Stage::Operational, true),
        &first_security(&[("AuthMethod", "CHAP,None")]),
        d,
    );
    assert_eq!(status(&step), (0, 0));
    assert!(!step.response.transit, "not authenticated yet");
    assert_eq!(key(&keys(&step.data), "AuthMethod"), Some("CHAP"));

    let step = st.handle(
        &req(Stage::Security, Stage::Operational, true),
        &text(&[("CHAP_A", chap_a)]),
        d,
    );
    assert_eq!(status(&step), (0, 0));
    assert!(!step.response.transit);
    let k = keys(&step.data);
    let alg = ChapAlgorithm::from_code(key(&k, "CHAP_A").unwrap().parse().unwrap()).unwrap();
    let id = chap::parse_identifier(key(&k, "CHAP_I").unwrap()).unwrap();
    let challenge = chap::decode_binary(key(&k, "CHAP_C").unwrap()).unwrap();
    assert_eq!(challenge.len(), alg.challenge_len());
    let r = chap::response(alg, id, secret.as_bytes(), &challenge);
    let r_hex = chap::encode_hex(&r);
    let mut pairs = vec![
        ("CHAP_N".to_string(), "hostuser".to_string()),
        ("CHAP_R".into(), r_hex),
    ];
    if let Some(c) = &mutual_challenge {
        pairs.push(("CHAP_I".into(), "42".into()));
        pairs.push(("CHAP_C".into(), chap::encode_base64(c)));
    }
    let step = st.handle(
        &req(Stage::Security, Stage::Operational, true),
        &emit_pairs(&pairs),
        d,
    );
    (step, alg, challenge)
}

#[test]
fn chap_md5_login() {
    let d = dir(chap_policy(false), vec![]);
    let mut st = state();
    let (step, alg, _) = chap_login(&mut st, &d, "5", "host-secret-123", None);
    assert_eq!(alg, ChapAlgorithm::Md5);
    assert_eq!(status(&step), (0, 0));
    assert!(step.response.transit);
    assert_eq!(step.response.nsg, Stage::Operational);
    let r = finish_operational(&mut st, &d);
    assert_eq!(r.initiator_name, INITIATOR);
}

#[test]
fn chap_sha256_preferred() {
    let d = dir(chap_policy(false), vec![]);
    let mut st = state();
    let (step, alg, challenge) = chap_login(&mut st, &d, "7,6,5", "host-secret-123", None);
    assert_eq!(alg, ChapAlgorithm::Sha256);
    assert_eq!(challenge.len(), 32);
    assert_eq!(status(&step), (0, 0));
    finish_operational(&mut st, &d);
}

#[test]
fn chap_wrong_secret() {
    let d = dir(chap_policy(false), vec![]);
    let mut st = state();
    let (step, _, _) = chap_login(&mut st, &d, "5", "wrong-secret", None);
    assert_eq!(status(&step), login_status::AUTHENTICATION_FAILURE);
    assert_eq!(step.outcome, LoginOutcome::Failed);
    assert!(step.data.is_empty());
    // Stays failed.
    let step = st.handle(&req(Stage::Security, Stage::Operational, true), &[], &d);
    assert_eq!(step.outcome, LoginOutcome::Failed);
}

#[test]
fn chap_wrong_user() {
    let d = dir(
        AuthPolicy::Chap {
            username: "other".into(),
            secret: "host-secret-123".into(),
            mutual: None,
        },
        vec![],
    );
    let mut st = state();
    let (step, _, _) = chap_login(&mut st, &d, "5", "host-secret-123", None);
    assert_eq!(status(&step), login_status::AUTHENTICATION_FAILURE);
}

#[test]
fn chap_unsupported_algorithm() {
    let d = dir(chap_policy(false), vec![]);
    let mut st = state();
    st.handle(
        &req(Stage::Security, Stage::Operational, false),
        &first_security(&[("AuthMethod", "CHAP")]),
        &d,
    );
    let step = st.handle(
        &req(Stage::Security, Stage::Operational, false),
        &text(&[("CHAP_A", "6,8")]),
        &d,
    );
    assert_eq!(status(&step), login_status::AUTHENTICATION_FAILURE);
}

#[test]
fn mutual_chap() {
    let d = dir(chap_policy(true), vec![]);
    let mut st = state();
    let their_challenge: Vec<u8> = (100u8..116).collect();
    let (step, alg, _) = chap_login(
        &mut st,
        &d,
        "5",
        "host-secret-123",
        Some(their_challenge.clone()),
    );
    assert_eq!(status(&step), (0, 0));
    assert!(step.response.transit);
    let k = keys(&step.data);
    assert_eq!(key(&k, "CHAP_N"), Some("targetuser"));
    let r = chap::decode_binary(key(&k, "CHAP_R").unwrap()).unwrap();
    assert!(chap::verify(
        alg,
        42,
        b"target-secret-456",
        &their_challenge,
        &r
    ));
    finish_operational(&mut st, &d);
}

#[test]
fn mutual_chap_required_but_not_requested() {
    let d = dir(chap_policy(true), vec![]);
    let mut st = state();
    let (step, _, _) = chap_login(&mut st, &d, "5", "host-secret-123", None);
    assert_eq!(status(&step), login_status::AUTHENTICATION_FAILURE);
}

#[test]
fn mutual_chap_not_configured() {
    let d = dir(chap_policy(false), vec![]);
    let mut st = state();
    let (step, _, _) = chap_login(&mut st, &d, "5", "host-secret-123", Some(vec![1; 16]));
    assert_eq!(status(&step), login_status::AUTHENTICATION_FAILURE);
}

#[test]
fn mutual_chap_reflected_challenge() {
    let d = dir(chap_policy(true), vec![]);
    let mut st = state();
    st.handle(
        &req(Stage::Security, Stage::Operational, true),
        &first_security(&[("AuthMethod", "CHAP")]),
        &d,
    );
    let step = st.handle(
        &req(Stage::Security, Stage::Operational, true),
        &text(&[("CHAP_A", "5")]),
        &d,
    );
    let k = keys(&step.data);
    let id = chap::parse_identifier(key(&k, "CHAP_I").unwrap()).unwrap();
    let challenge_str = key(&k, "CHAP_C").unwrap().to_string();
    let challenge = chap::decode_binary(&challenge_str).unwrap();
    let r = chap::encode_hex(&chap::response(
        ChapAlgorithm::Md5,
        id,
        b"host-secret-123",
        &challenge,
    ));
    let step = st.handle(
        &req(Stage::Security, Stage::Operational, true),
        &text(&[
            ("CHAP_N", "hostuser"),
            ("CHAP_R", &r),
            ("CHAP_I", "1"),
            ("CHAP_C", &challenge_str),
        ]),
        &d,
    );
    assert_eq!(status(&step), login_status::AUTHENTICATION_FAILURE);
}

#[test]
fn chap_required_but_initiator_offers_none() {
    let d = dir(chap_policy(false), vec![]);
    let mut st = state();
    let step = st.handle(
        &req(Stage::Security, Stage::Operational, true),
        &first_security(&[("AuthMethod", "None")]),
        &d,
    );
    assert_eq!(status(&step), login_status::AUTHENTICATION_FAILURE);
}

#[test]
fn chap_required_cannot_skip_security() {
    let d = dir(chap_policy(false), vec![]);
    let mut st = state();
    let step = st.handle(
        &req(Stage::Operational, Stage::FullFeature, true),
        &first_security(&[]),
        &d,
    );
    assert_eq!(status(&step), login_status::AUTHENTICATION_FAILURE);

    // Nor leave the security stage without answering the challenge.
    let mut st = state();
    st.handle(
        &req(Stage::Security, Stage::Operational, true),
        &first_security(&[("AuthMethod", "CHAP")]),
        &d,
    );
    let step = st.handle(&req(Stage::Security, Stage::Operational, true), &[], &d);
    assert_eq!(status(&step), login_status::AUTHENTICATION_FAILURE);
}

#[test]
fn chap_keys_out_of_order() {
    let d = dir(chap_policy(false), vec![]);
    let mut st = state();
    st.handle(
        &req(Stage::Security, Stage::Operational, false),
        &first_security(&[("AuthMethod", "CHAP")]),
        &d,
    );
    let step = st.handle(
        &req(Stage::Security, Stage::Operational, false),
        &text(&[("CHAP_N", "hostuser"), ("CHAP_R", "0x00")]),
        &d,
    );
    assert_eq!(status(&step), login_status::AUTHENTICATION_FAILURE);
}

#[test]
fn skip_security_when_no_auth() {
    let d = dir(AuthPolicy::None, vec![]);
    let mut st = state();
    let mut data = first_security(&[]);
    data.extend_from_slice(&open_iscsi_operational());
    let step = st.handle(
        &req(Stage::Operational, Stage::FullFeature, true),
        &data,
        &d,
    );
    assert_eq!(status(&step), (0, 0));
    let k = keys(&step.data);
    assert_eq!(key(&k, "TargetPortalGroupTag"), Some("3"));
    assert_eq!(key(&k, "MaxRecvDataSegmentLength"), Some("262144"));
    assert!(matches!(step.outcome, LoginOutcome::Complete(_)));
}

#[test]
fn security_straight_to_full_feature() {
    let d = dir(AuthPolicy::None, vec![]);
    let mut st = state();
    let step = st.handle(
        &req(Stage::Security, Stage::FullFeature, true),
        &first_security(&[("AuthMethod", "None")]),
        &d,
    );
    assert_eq!(status(&step), (0, 0));
    let LoginOutcome::Complete(r) = step.outcome else {
        panic!()
    };
    // We never declared MaxRecvDataSegmentLength, so the default applies.
    assert_eq!(r.params.max_recv_data_segment_length_target, 8192);
}

#[test]
fn acl_denial() {
    let d = dir(
        AuthPolicy::None,
        vec!["iqn.1994-05.com.redhat:other".into()],
    );
    let mut st = state();
    let step = st.handle(
        &req(Stage::Security, Stage::Operational, true),
        &first_security(&[("AuthMethod", "None")]),
        &d,
    );
    assert_eq!(status(&step), login_status::AUTHORIZATION_FAILURE);
    assert_eq!(step.outcome, LoginOutcome::Failed);

    let d = dir(AuthPolicy::None, vec![INITIATOR.to_uppercase()]);
    let mut st = state();
    let step = st.handle(
        &req(Stage::Security, Stage::Operational, true),
        &first_security(&[("AuthMethod", "None")]),
        &d,
    );
    assert_eq!(status(&step), (0, 0), "names compare case-insensitively");
}

#[test]
fn unknown_target_and_missing_names() {
    let d = dir(AuthPolicy::None, vec![]);
    let mut st = state();
    let step = st.handle(
        &req(Stage::Security, Stage::Operational, true),
        &text(&[
            ("InitiatorName", INITIATOR),
            ("TargetName", "iqn.2026-11.io.tandem:nope"),
        ]),
        &d,
    );
    assert_eq!(status(&step), login_status::NOT_FOUND);

    let mut st = state();
    let step = st.handle(
        &req(Stage::Security, Stage::Operational, true),
        &text(&[("TargetName", TARGET), ("AuthMethod", "None")]),
        &d,
    );
    assert_eq!(status(&step), login_status::MISSING_PARAMETER);

    let mut st = state();
    let step = st.handle(
        &req(Stage::Security, Stage::Operational, true),
        &text(&[("InitiatorName", INITIATOR), ("SessionType", "Normal")]),
        &d,
    );
    assert_eq!(status(&step), login_status::MISSING_PARAMETER);

    let mut st = state();
    let step = st.handle(
        &req(Stage::Security, Stage::Operational, true),
        &text(&[("InitiatorName", INITIATOR), ("SessionType", "Bogus")]),
        &d,
    );
    assert_eq!(status(&step), login_status::SESSION_TYPE_NOT_SUPPORTED);
}

#[test]
fn discovery_session() {
    let d = dir(chap_policy(false), vec!["nobody".into()]);
    let mut st = state();
    let step = st.handle(
        &req(Stage::Security, Stage::Operational, true),
        &text(&[
            ("InitiatorName", INITIATOR),
            ("SessionType", "Discovery"),
            ("AuthMethod", "None"),
        ]),
        &d,
    );
    assert_eq!(status(&step), (0, 0));
    let k = keys(&step.data);
    assert_eq!(key(&k, "TargetPortalGroupTag"), None);
    assert!(step.response.transit);
    let step = st.handle(
        &req(Stage::Operational, Stage::FullFeature, true),
        &text(&[
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("MaxBurstLength", "262144"),
            ("DefaultTime2Wait", "2"),
            ("MaxRecvDataSegmentLength", "32768"),
        ]),
        &d,
    );
    assert_eq!(status(&step), (0, 0));
    let k = keys(&step.data);
    assert_eq!(key(&k, "MaxBurstLength"), Some("Irrelevant"));
    assert_eq!(key(&k, "MaxRecvDataSegmentLength"), Some("32768"));
    let LoginOutcome::Complete(r) = step.outcome else {
        panic!()
    };
    assert_eq!(r.session_type, SessionType::Discovery);
    assert_eq!(r.target_name, None);
}

#[test]
fn discovery_with_chap() {
    let mut d = dir(AuthPolicy::None, vec![]);
    d.discovery_auth = chap_policy(false);
    let mut st = state();
    let step = st.handle(
        &req(Stage::Security, Stage::Operational, true),
        &text(&[
            ("InitiatorName", INITIATOR),
            ("SessionType", "Discovery"),
            ("AuthMethod", "None"),
        ]),
        &d,
    );
    assert_eq!(status(&step), login_status::AUTHENTICATION_FAILURE);
}

#[test]
fn continuation_bit() {
    let d = dir(AuthPolicy::None, vec![]);
    let mut st = state();
    let all = first_security(&[("AuthMethod", "None")]);
    let (a, b) = all.split_at(17); // in the middle of the InitiatorName value
    let mut r1 = req(Stage::Security, Stage::Operational, false);
    r1.cont = true;
    let step = st.handle(&r1, a, &d);
    assert_eq!(status(&step), (0, 0));
    assert_eq!(step.outcome, LoginOutcome::Continue);
    assert!(step.data.is_empty());
    assert!(!step.response.transit);
    let step = st.handle(&req(Stage::Security, Stage::Operational, true), b, &d);
    assert_eq!(status(&step), (0, 0));
    assert!(step.response.transit);
    assert_eq!(key(&keys(&step.data), "AuthMethod"), Some("None"));
}

#[test]
fn continuation_is_bounded() {
    let d = dir(AuthPolicy::None, vec![]);
    let mut st = state();
    let mut r1 = req(Stage::Security, Stage::Operational, false);
    r1.cont = true;
    let chunk = vec![b'a'; 8192];
    let mut failed = false;
    for _ in 0..10 {
        if st.handle(&r1, &chunk, &d).outcome == LoginOutcome::Failed {
            failed = true;
            break;
        }
    }
    assert!(failed);
}

#[test]
fn transit_and_continue_together() {
    let d = dir(AuthPolicy::None, vec![]);
    let mut st = state();
    let mut r = req(Stage::Security, Stage::Operational, true);
    r.cont = true;
    let step = st.handle(&r, &first_security(&[]), &d);
    assert_eq!(status(&step), login_status::INITIATOR_ERROR);
}

#[test]
fn illegal_transitions() {
    let d = dir(AuthPolicy::None, vec![]);
    for (csg, nsg) in [
        (Stage::Security, Stage::Security),
        (Stage::Operational, Stage::Security),
        (Stage::Operational, Stage::Operational),
        (Stage::Security, Stage::Reserved),
        (Stage::FullFeature, Stage::FullFeature),
        (Stage::Reserved, Stage::FullFeature),
    ] {
        let mut st = state();
        let step = st.handle(&req(csg, nsg, true), &first_security(&[]), &d);
        assert_eq!(
            status(&step),
            login_status::INITIATOR_ERROR,
            "{csg:?}->{nsg:?}"
        );
        assert_eq!(step.outcome, LoginOutcome::Failed);
    }
    // Going back to the security stage after leaving it.
    let mut st = state();
    st.handle(
        &req(Stage::Security, Stage::Operational, true),
        &first_security(&[("AuthMethod", "None")]),
        &d,
    );
    let step = st.handle(&req(Stage::Security, Stage::Operational, true), &[], &d);
    assert_eq!(status(&step), login_status::INITIATOR_ERROR);
}

#[test]
fn unsupported_version() {
    let d = dir(AuthPolicy::None, vec![]);
    let mut st = state();
    let mut r = req(Stage::Security, Stage::Operational, true);
    r.version_min = 1;
    r.version_max = 2;
    let step = st.handle(&r, &first_security(&[]), &d);
    assert_eq!(status(&step), login_status::UNSUPPORTED_VERSION);
}

#[test]
fn identity_must_not_change() {
    let d = dir(AuthPolicy::None, vec![]);
    let mut st = state();
    st.handle(
        &req(Stage::Security, Stage::Operational, true),
        &first_security(&[("AuthMethod", "None")]),
        &d,
    );
    let mut r = req(Stage::Operational, Stage::FullFeature, true);
    r.isid[5] = 9;
    let step = st.handle(&r, &[], &d);
    assert_eq!(status(&step), login_status::INITIATOR_ERROR);
}

#[test]
fn bad_and_unknown_keys() {
    let d = dir(AuthPolicy::None, vec![]);
    let mut st = state();
    st.handle(
        &req(Stage::Security, Stage::Operational, true),
        &first_security(&[("AuthMethod", "None")]),
        &d,
    );
    let step = st.handle(
        &req(Stage::Operational, Stage::FullFeature, false),
        &text(&[
            ("FooBar", "1"),
            ("X-com.example.thing", "yes"),
            ("X#vendor", "1"),
            ("MaxBurstLength", "100"),
            ("FirstBurstLength", "99999999999"),
            ("MaxRecvDataSegmentLength", "16777216"),
            ("InitialR2T", "maybe"),
            ("HeaderDigest", "MD5"),
            ("ErrorRecoveryLevel", "2"),
            ("DefaultTime2Wait", "3601"),
            ("IFMarkInt", "2048~8192"),
            ("TaskReporting", "ResponseFence,RFC3720"),
            ("iSCSIProtocolLevel", "1"),
        ]),
        &d,
    );
    assert_eq!(status(&step), (0, 0));
    assert!(!step.response.transit);
    let k = keys(&step.data);
    assert_eq!(key(&k, "FooBar"), Some("NotUnderstood"));
    assert_eq!(key(&k, "X-com.example.thing"), Some("NotUnderstood"));
    assert_eq!(key(&k, "X#vendor"), Some("NotUnderstood"));
    assert_eq!(key(&k, "MaxBurstLength"), Some("Reject"));
    assert_eq!(key(&k, "FirstBurstLength"), Some("Reject"));
    assert_eq!(
        key(&k, "MaxRecvDataSegmentLength"),
        Some("262144"),
        "our declaration"
    );
    assert_eq!(
        k.iter()
            .filter(|(kk, _)| kk == "MaxRecvDataSegmentLength")
            .count(),
        1
    );
    assert_eq!(key(&k, "InitialR2T"), Some("Reject"));
    assert_eq!(key(&k, "HeaderDigest"), Some("Reject"));
    assert_eq!(key(&k, "ErrorRecoveryLevel"), Some("0"));
    assert_eq!(key(&k, "DefaultTime2Wait"), Some("Reject"));
    assert_eq!(key(&k, "IFMarkInt"), Some("Irrelevant"));
    assert_eq!(key(&k, "TaskReporting"), Some("RFC3720"));
    assert_eq!(key(&k, "iSCSIProtocolLevel"), Some("NotUnderstood"));
    assert_eq!(step.outcome, LoginOutcome::Continue);

    let LoginOutcome::Continue = step.outcome else {
        panic!()
    };

    // Declaring a key twice fails the login.
    let step = st.handle(
        &req(Stage::Operational, Stage::FullFeature, true),
        &text(&[("MaxBurstLength", "262144")]),
        &d,
    );
    assert_eq!(status(&step), login_status::INITIATOR_ERROR);
}

#[test]
fn duplicate_key_in_one_pdu() {
    let d = dir(AuthPolicy::None, vec![]);
    let mut st = state();
    let step = st.handle(
        &req(Stage::Security, Stage::Operational, true),
        &first_security(&[("AuthMethod", "None"), ("AuthMethod", "None")]),
        &d,
    );
    assert_eq!(status(&step), login_status::INITIATOR_ERROR);
}

#[test]
fn security_key_in_operational_stage() {
    let d = dir(AuthPolicy::None, vec![]);
    let mut st = state();
    st.handle(
        &req(Stage::Security, Stage::Operational, true),
        &first_security(&[("AuthMethod", "None")]),
        &d,
    );
    let step = st.handle(
        &req(Stage::Operational, Stage::FullFeature, true),
        &text(&[("CHAP_A", "5")]),
        &d,
    );
    assert_eq!(status(&step), login_status::INITIATOR_ERROR);
}

#[test]
fn target_only_keys_rejected() {
    let d = dir(AuthPolicy::None, vec![]);
    let mut st = state();
    st.handle(
        &req(Stage::Security, Stage::Operational, true),
        &first_security(&[("AuthMethod", "None")]),
        &d,
    );
    let step = st.handle(
        &req(Stage::Operational, Stage::FullFeature, true),
        &text(&[("TargetPortalGroupTag", "1")]),
        &d,
    );
    assert_eq!(status(&step), login_status::INITIATOR_ERROR);
}

#[test]
fn identity_keys_may_repeat_unchanged() {
    // libiscsi sends InitiatorName/TargetName/SessionType again in its operational request.
    let d = dir(AuthPolicy::None, vec![]);
    let mut st = state();
    st.handle(
        &req(Stage::Security, Stage::Operational, true),
        &first_security(&[("AuthMethod", "None")]),
        &d,
    );
    let mut data = first_security(&[]);
    data.extend_from_slice(&open_iscsi_operational());
    let step = st.handle(
        &req(Stage::Operational, Stage::FullFeature, true),
        &data,
        &d,
    );
    assert_eq!(status(&step), (0, 0));
    assert!(matches!(step.outcome, LoginOutcome::Complete(_)));

    for (k, v) in [
        ("InitiatorName", "iqn.1994-05.com.redhat:someone-else"),
        ("TargetName", "iqn.2026-11.io.tandem:other"),
        ("SessionType", "Discovery"),
    ] {
        let mut st = state();
        st.handle(
            &req(Stage::Security, Stage::Operational, true),
            &first_security(&[("AuthMethod", "None")]),
            &d,
        );
        let step = st.handle(
            &req(Stage::Operational, Stage::FullFeature, true),
            &text(&[(k, v)]),
            &d,
        );
        assert_eq!(status(&step), login_status::INITIATOR_ERROR, "{k}");
    }
}

/// The exact sequence libiscsi uses with CHAP (and mutual CHAP): T=1 offer, T=0 CHAP_A=5,
/// T=1 CHAP_N/CHAP_R(+CHAP_I/CHAP_C with a 32-byte challenge), then an operational request
/// that repeats the identity keys.
#[test]
fn libiscsi_mutual_chap_sequence() {
    let d = dir(chap_policy(true), vec![]);
    let mut st = state();
    let step = st.handle(
        &req(Stage::Security, Stage::Operational, true),
        &text(&[
            ("InitiatorName", INITIATOR),
            ("TargetName", TARGET),
            ("SessionType", "Normal"),
            ("AuthMethod", "CHAP,None"),
        ]),
        &d,
    );
    assert_eq!(key(&keys(&step.data), "AuthMethod"), Some("CHAP"));
    let step = st.handle(
        &req(Stage::Security, Stage::Operational, false),
        &text(&[("CHAP_A", "5")]),
        &d,
    );
    let k = keys(&step.data);
    assert_eq!(key(&k, "CHAP_A"), Some("5"));
    let id: u8 = key(&k, "CHAP_I").unwrap().parse().unwrap(); // libiscsi uses atoi()
    let c = key(&k, "CHAP_C").unwrap();
    assert!(c.starts_with("0x"), "libiscsi only parses hex challenges");
    let challenge = hex::decode(&c[2..]).unwrap();
    let r = chap::response(ChapAlgorithm::Md5, id, b"host-secret-123", &challenge);
    let r = format!("0x{}", hex::encode_upper(r));
    let their_c: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37)).collect();
    let their_c_hex = format!("0x{}", hex::encode_upper(&their_c));
    let step = st.handle(
        &req(Stage::Security, Stage::Operational, true),
        &text(&[
            ("CHAP_N", "hostuser"),
            ("CHAP_R", &r),
            ("CHAP_I", "1"),
            ("CHAP_C", &their_c_hex),
        ]),
        &d,
    );
    assert_eq!(status(&step), (0, 0));
    assert!(step.response.transit);
    assert_eq!(step.response.csg, Stage::Security);
    let k = keys(&step.data);
    assert_eq!(key(&k, "CHAP_N"), Some("targetuser"));
    let tr = key(&k, "CHAP_R").unwrap();
    assert_eq!(tr.len(), 2 + 32, "libiscsi checks the CHAP_R length");
    let expected = chap::response(ChapAlgorithm::Md5, 1, b"target-secret-456", &their_c);
    assert_eq!(chap::decode_binary(tr).unwrap(), expected);

    let mut data = text(&[
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("SessionType", "Normal"),
    ]);
    data.extend_from_slice(&open_iscsi_operational());
    let step = st.handle(
        &req(Stage::Operational, Stage::FullFeature, true),
        &data,
        &d,
    );
    assert_eq!(status(&step), (0, 0));
    assert!(matches!(step.outcome, LoginOutcome::Complete(_)));
}

#[test]
fn malformed_text_fails_login() {
    let d = dir(AuthPolicy::None, vec![]);
    let mut st = state();
    let step = st.handle(
        &req(Stage::Security, Stage::Operational, true),
        b"garbage\0",
        &d,
    );
    assert_eq!(status(&step), login_status::INITIATOR_ERROR);
}

#[test]
fn pdu_count_is_bounded() {
    let d = dir(AuthPolicy::None, vec![]);
    let mut st = state();
    st.handle(
        &req(Stage::Security, Stage::Operational, false),
        &first_security(&[("AuthMethod", "None")]),
        &d,
    );
    let mut last = None;
    for _ in 0..MAX_LOGIN_PDUS {
        last = Some(st.handle(&req(Stage::Security, Stage::Operational, false), &[], &d));
    }
    assert_eq!(last.unwrap().outcome, LoginOutcome::Failed);
}

#[test]
fn limits_are_applied() {
    let mut d = dir(AuthPolicy::None, vec![]);
    d.targets[0].limits = TargetLimits {
        max_recv_data_segment_length: 65536,
        max_burst_length: 131072,
        first_burst_length: 65536,
        max_outstanding_r2t: 4,
        max_connections: 1,
    };
    let mut st = state();
    st.handle(
        &req(Stage::Security, Stage::Operational, true),
        &first_security(&[("AuthMethod", "None")]),
        &d,
    );
    let step = st.handle(
        &req(Stage::Operational, Stage::FullFeature, true),
        &text(&[
            ("MaxBurstLength", "262144"),
            ("FirstBurstLength", "262144"),
            ("MaxOutstandingR2T", "8"),
            ("MaxConnections", "4"),
            ("DataDigest", "CRC32C"),
            ("ImmediateData", "No"),
            ("InitialR2T", "Yes"),
            ("MaxRecvDataSegmentLength", "8192"),
        ]),
        &d,
    );
    let k = keys(&step.data);
    assert_eq!(key(&k, "MaxBurstLength"), Some("131072"));
    assert_eq!(key(&k, "FirstBurstLength"), Some("65536"));
    assert_eq!(key(&k, "MaxOutstandingR2T"), Some("4"));
    assert_eq!(key(&k, "MaxConnections"), Some("1"));
    assert_eq!(key(&k, "ImmediateData"), Some("No"));
    assert_eq!(key(&k, "MaxRecvDataSegmentLength"), Some("65536"));
    let LoginOutcome::Complete(r) = step.outcome else {
        panic!()
    };
    assert!(r.params.data_digest);
    assert!(!r.params.immediate_data);
    assert_eq!(r.params.max_recv_data_segment_length_initiator, 8192);
    assert_eq!(r.params.max_recv_data_segment_length_target, 65536);
    assert_eq!(r.params.max_outstanding_r2t, 4);
}

#[test]
fn secrets_are_not_logged() {
    let s = format!("{:?}", chap_policy(true));
    assert!(!s.contains("host-secret-123"));
    assert!(!s.contains("target-secret-456"));
    assert!(s.contains("hostuser"));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn stage() -> impl Strategy<Value = Stage> {
        (0u8..4).prop_map(Stage::from_bits)
    }

    fn request() -> impl Strategy<Value = LoginRequestRepr> {
        (
            any::<bool>(),
            any::<bool>(),
            stage(),
            stage(),
            0u8..2,
            0u8..2,
            any::<u32>(),
        )
            .prop_map(
                |(transit, cont, csg, nsg, vmax, vmin, cmdsn)| LoginRequestRepr {
                    transit,
                    cont,
                    csg,
                    nsg,
                    version_max: vmax,
                    version_min: vmin,
                    isid: ISID,
                    tsih: 0,
                    itt: 1,
                    cid: 0,
                    cmdsn,
                    expstatsn: 0,
                },
            )
    }

    fn key_text() -> impl Strategy<Value = Vec<u8>> {
        let keys = prop::sample::select(vec![
            "InitiatorName",
            "TargetName",
            "SessionType",
            "AuthMethod",
            "CHAP_A",
            "CHAP_I",
            "CHAP_C",
            "CHAP_N",
            "CHAP_R",
            "HeaderDigest",
            "MaxBurstLength",
            "FirstBurstLength",
            "MaxRecvDataSegmentLength",
            "InitialR2T",
            "X-foo",
            "TargetAlias",
            "IFMarkInt",
            "ErrorRecoveryLevel",
        ]);
        let values = prop::sample::select(vec![
            INITIATOR,
            TARGET,
            "Normal",
            "Discovery",
            "None",
            "CHAP",
            "CHAP,None",
            "5",
            "7",
            "0x00",
            "0b",
            "Yes",
            "No",
            "262144",
            "0",
            "CRC32C,None",
            "Reject",
            "hostuser",
            "0x0102030405060708090a0b0c0d0e0f10",
            "",
        ]);
        prop::collection::vec((keys, values), 0..8).prop_map(|p| emit_pairs(&p))
    }

    proptest! {
        #[test]
        fn handle_never_panics_on_random_bytes(
            seq in prop::collection::vec((request(), prop::collection::vec(any::<u8>(), 0..200)), 1..6)
        ) {
            let d = dir(chap_policy(true), vec![]);
            let mut st = state();
            for (r, data) in seq {
                let step = st.handle(&r, &data, &d);
                prop_assert!(step.data.len() <= MAX_LOGIN_RESPONSE);
                prop_assert!(!(step.response.transit && step.response.cont));
                if step.response.transit {
                    prop_assert!(r.transit);
                }
            }
        }

        #[test]
        fn handle_never_panics_on_plausible_keys(
            seq in prop::collection::vec((request(), key_text()), 1..8),
            chap in any::<bool>(),
        ) {
            let auth = if chap { chap_policy(false) } else { AuthPolicy::None };
            let d = dir(auth, vec![]);
            let mut st = state();
            for (r, data) in seq {
                let step = st.handle(&r, &data, &d);
                if step.outcome == LoginOutcome::Failed {
                    prop_assert!(step.response.status_class != 0);
                } else {
                    prop_assert_eq!(step.response.status_class, 0);
                }
            }
        }
    }
}

#[test]
fn initiator_mrdsl_bounds() {
    let d = dir(AuthPolicy::None, vec![]);
    for (value, ok) in [
        ("511", false),
        ("abc", false),
        ("512", true),
        ("99999999", true),
    ] {
        let mut st = state();
        let mut data = first_security(&[]);
        data.extend_from_slice(&text(&[("MaxRecvDataSegmentLength", value)]));
        let step = st.handle(
            &req(Stage::Operational, Stage::FullFeature, true),
            &data,
            &d,
        );
        assert_eq!(step.outcome != LoginOutcome::Failed, ok, "{value}");
        if let LoginOutcome::Complete(r) = step.outcome {
            assert!(r.params.max_recv_data_segment_length_initiator <= crate::params::MAX_LENGTH);
        }
    }
}

#[test]
fn chap_sha256_base64_response_and_mutual() {
    let d = dir(chap_policy(true), vec![]);
    let mut st = state();
    st.handle(
        &req(Stage::Security, Stage::Operational, true),
        &first_security(&[("AuthMethod", "CHAP")]),
        &d,
    );
    let step = st.handle(
        &req(Stage::Security, Stage::Operational, false),
        &text(&[("CHAP_A", "7")]),
        &d,
    );
    let k = keys(&step.data);
    assert_eq!(key(&k, "CHAP_A"), Some("7"));
    let id = chap::parse_identifier(key(&k, "CHAP_I").unwrap()).unwrap();
    let challenge = chap::decode_binary(key(&k, "CHAP_C").unwrap()).unwrap();
    let r = chap::response(ChapAlgorithm::Sha256, id, b"host-secret-123", &challenge);
    let their_c = [0x5au8; 32];
    let step = st.handle(
        &req(Stage::Security, Stage::FullFeature, true),
        &text(&[
            ("CHAP_N", "hostuser"),
            ("CHAP_R", &chap::encode_base64(&r)),
            ("CHAP_I", "0x10"),
            ("CHAP_C", &chap::encode_hex(&their_c)),
        ]),
        &d,
    );
    assert_eq!(status(&step), (0, 0));
    let k = keys(&step.data);
    let tr = chap::decode_binary(key(&k, "CHAP_R").unwrap()).unwrap();
    assert_eq!(tr.len(), 32);
    assert!(chap::verify(
        ChapAlgorithm::Sha256,
        0x10,
        b"target-secret-456",
        &their_c,
        &tr
    ));
    assert!(matches!(step.outcome, LoginOutcome::Complete(_)));
}

#[test]
fn chap_misconfiguration_is_a_target_error() {
    let d = dir(
        AuthPolicy::Chap {
            username: "u".into(),
            secret: String::new(),
            mutual: None,
        },
        vec![],
    );
    let mut st = state();
    let step = st.handle(
        &req(Stage::Security, Stage::Operational, true),
        &first_security(&[("AuthMethod", "CHAP")]),
        &d,
    );
    assert_eq!(status(&step), login_status::TARGET_ERROR);

    let same = AuthPolicy::Chap {
        username: "hostuser".into(),
        secret: "host-secret-123".into(),
        mutual: Some(("targetuser".into(), "host-secret-123".into())),
    };
    let d = dir(same, vec![]);
    let mut st = state();
    let (step, _, _) = chap_login(&mut st, &d, "5", "host-secret-123", Some(vec![9; 16]));
    assert_eq!(status(&step), login_status::TARGET_ERROR);
    assert!(
        step.data.is_empty(),
        "no CHAP_R computed with the initiator's secret"
    );
}

#[test]
fn long_response_is_sent_in_pieces() {
    let d = dir(AuthPolicy::None, vec![]);
    let mut st = state();
    let names: Vec<String> = (0..200)
        .map(|i| format!("X-com.example.vendor.key{i:03}"))
        .collect();
    let mut pairs: Vec<(&str, &str)> = vec![
        ("InitiatorName", INITIATOR),
        ("SessionType", "Normal"),
        ("TargetName", TARGET),
        ("MaxRecvDataSegmentLength", "65536"),
    ];
    pairs.extend(names.iter().map(|n| (n.as_str(), "1")));
    let step = st.handle(
        &req(Stage::Operational, Stage::FullFeature, true),
        &text(&pairs),
        &d,
    );
    assert_eq!(status(&step), (0, 0));
    assert!(step.response.cont && !step.response.transit);
    assert_eq!(step.data.len(), MAX_LOGIN_RESPONSE);
    assert_eq!(step.outcome, LoginOutcome::Continue);
    let mut all = step.data;

    // The initiator answers each piece with an empty request.
    let step = st.handle(&req(Stage::Operational, Stage::FullFeature, true), &[], &d);
    assert_eq!(status(&step), (0, 0));
    assert!(!step.response.cont && step.response.transit);
    assert_eq!(step.response.nsg, Stage::FullFeature);
    all.extend_from_slice(&step.data);
    let k = keys(&all);
    assert_eq!(k.iter().filter(|(_, v)| v == "NotUnderstood").count(), 200);
    assert_eq!(key(&k, "MaxRecvDataSegmentLength"), Some("262144"));
    let LoginOutcome::Complete(r) = step.outcome else {
        panic!()
    };
    assert_eq!(r.params.max_recv_data_segment_length_initiator, 65536);
}

#[test]
fn request_with_data_during_response_pieces_fails() {
    let d = dir(AuthPolicy::None, vec![]);
    let mut st = state();
    let names: Vec<String> = (0..200)
        .map(|i| format!("X-com.example.vendor.key{i:03}"))
        .collect();
    let mut pairs: Vec<(&str, &str)> = vec![("InitiatorName", INITIATOR), ("TargetName", TARGET)];
    pairs.extend(names.iter().map(|n| (n.as_str(), "1")));
    let step = st.handle(
        &req(Stage::Operational, Stage::FullFeature, true),
        &text(&pairs),
        &d,
    );
    assert!(step.response.cont);
    let step = st.handle(
        &req(Stage::Operational, Stage::FullFeature, true),
        &text(&[("HeaderDigest", "None")]),
        &d,
    );
    assert_eq!(status(&step), login_status::INITIATOR_ERROR);
}

fn burst_login(pairs: &[(&str, &str)]) -> (Vec<(String, String)>, LoginResult) {
    let d = dir(AuthPolicy::None, vec![]);
    let mut st = state();
    let step = st.handle(
        &req(Stage::Security, Stage::Operational, true),
        &first_security(&[("AuthMethod", "None")]),
        &d,
    );
    assert_eq!(status(&step), (0, 0));
    let step = st.handle(
        &req(Stage::Operational, Stage::FullFeature, true),
        &text(pairs),
        &d,
    );
    assert_eq!(status(&step), (0, 0));
    let k = keys(&step.data);
    let LoginOutcome::Complete(r) = step.outcome else {
        panic!("not complete")
    };
    (k, r)
}

#[test]
fn first_burst_answer_never_exceeds_max_burst_either_order() {
    for pairs in [
        [("MaxBurstLength", "512"), ("FirstBurstLength", "65536")],
        [("FirstBurstLength", "65536"), ("MaxBurstLength", "512")],
    ] {
        let (k, r) = burst_login(&pairs);
        assert_eq!(key(&k, "MaxBurstLength"), Some("512"), "{pairs:?}");
        assert_eq!(key(&k, "FirstBurstLength"), Some("512"), "{pairs:?}");
        assert_eq!(r.params.first_burst_length, 512);
        assert_eq!(r.params.max_burst_length, 512);
    }
}

#[test]
fn first_burst_below_max_burst_is_kept() {
    let (k, r) = burst_login(&[("MaxBurstLength", "65536"), ("FirstBurstLength", "8192")]);
    assert_eq!(key(&k, "FirstBurstLength"), Some("8192"));
    assert_eq!(r.params.first_burst_length, 8192);
}
