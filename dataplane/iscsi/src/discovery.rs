//! SendTargets discovery (RFC 7143 §12.3, appendix C).

use crate::text::emit_pairs;

/// A target as listed by SendTargets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetListing {
    /// The target's iSCSI name.
    pub name: String,
    /// Portals: `"127.0.0.1:3260"` or `"[::1]:3260"`, with their portal group tag.
    pub addresses: Vec<(String, u16)>,
}

fn initiator_allowed(allowed: &[String], initiator_name: &str) -> bool {
    allowed.is_empty()
        || allowed
            .iter()
            .any(|a| a.eq_ignore_ascii_case(initiator_name))
}

/// Answers `SendTargets=<request_value>`: `"All"` lists every target the initiator may see
/// (targets whose allow-list is empty or contains it); a target name lists just that target if
/// visible; an empty value means "the target of this session", which only makes sense on a
/// normal session, so the caller passes that session's target name. Anything else yields an
/// empty answer. Output is `TargetName=…\0TargetAddress=addr,tpgt\0…`.
pub fn send_targets(
    request_value: &str,
    initiator_name: &str,
    targets: &[(TargetListing, Vec<String>)],
) -> Vec<u8> {
    let mut pairs: Vec<(&str, String)> = Vec::new();
    for (listing, allowed) in targets {
        let wanted = request_value == "All" || listing.name.eq_ignore_ascii_case(request_value);
        if !wanted || !initiator_allowed(allowed, initiator_name) {
            continue;
        }
        pairs.push(("TargetName", listing.name.clone()));
        for (addr, tpgt) in &listing.addresses {
            pairs.push(("TargetAddress", format!("{addr},{tpgt}")));
        }
    }
    emit_pairs(&pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets() -> Vec<(TargetListing, Vec<String>)> {
        vec![
            (
                TargetListing {
                    name: "iqn.2026-11.io.tandem:n1-a".into(),
                    addresses: vec![("10.0.0.1:3260".into(), 1), ("[fd00::1]:3260".into(), 1)],
                },
                vec![],
            ),
            (
                TargetListing {
                    name: "iqn.2026-11.io.tandem:n1-b".into(),
                    addresses: vec![("10.0.0.1:3260".into(), 2)],
                },
                vec!["iqn.1994-05.com.redhat:host1".into()],
            ),
        ]
    }

    #[test]
    fn all_filters_by_acl() {
        let out = send_targets("All", "iqn.1994-05.com.redhat:host2", &targets());
        assert_eq!(
            out,
            b"TargetName=iqn.2026-11.io.tandem:n1-a\0TargetAddress=10.0.0.1:3260,1\0\
TargetAddress=[fd00::1]:3260,1\0"
                .to_vec()
        );
        let out = send_targets("All", "IQN.1994-05.com.redhat:HOST1", &targets());
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("TargetName=iqn.2026-11.io.tandem:n1-b\0"));
        assert!(text.contains("TargetAddress=10.0.0.1:3260,2\0"));
    }

    #[test]
    fn single_target() {
        let out = send_targets(
            "iqn.2026-11.io.tandem:n1-b",
            "iqn.1994-05.com.redhat:host1",
            &targets(),
        );
        assert_eq!(
            out,
            b"TargetName=iqn.2026-11.io.tandem:n1-b\0TargetAddress=10.0.0.1:3260,2\0".to_vec()
        );
        assert!(send_targets("iqn.2026-11.io.tandem:n1-b", "other", &targets()).is_empty());
        assert!(send_targets("iqn.nope", "other", &targets()).is_empty());
        assert!(send_targets("", "other", &targets()).is_empty());
    }
}
