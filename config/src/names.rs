//! Name rules for nodes, devices, target aliases and iSCSI names (RFC 3720 section 3.2.6).

/// Longest iSCSI name, in bytes (RFC 3720 section 3.2.6.1).
pub const ISCSI_NAME_LEN_MAX: usize = 223;

/// `[a-z0-9-]{1,63}`, not starting or ending with '-'.
pub fn is_node_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// `[A-Za-z0-9_-]{1,64}`.
pub fn is_device_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `[a-z0-9.-]{1,64}`: a target alias becomes part of an IQN, so it uses IQN characters.
pub fn is_alias(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// The target alias to use for a device name: lowercase, `_` becomes `-`.
pub fn alias_for_device(device_name: &str) -> String {
    device_name
        .chars()
        .map(|c| {
            if c == '_' {
                '-'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// Checks an iSCSI name: `iqn.YYYY-MM.reversed.domain[:anything]`, `eui.` + 16 hex digits,
/// or `naa.` + 16 or 32 hex digits. Names compare case-insensitively.
pub fn validate_iscsi_name(name: &str) -> Result<(), String> {
    if name.len() > ISCSI_NAME_LEN_MAX {
        return Err(format!(
            "iSCSI name is {} bytes, at most {ISCSI_NAME_LEN_MAX} allowed",
            name.len()
        ));
    }
    let lower = name.to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix("iqn.") {
        let bad = || {
            format!("`{name}` is not a valid IQN: expected iqn.YYYY-MM.reversed.domain[:unique], e.g. iqn.1994-05.com.redhat:host1")
        };
        let (date, rest) = rest.split_at_checked(7).ok_or_else(bad)?;
        let db = date.as_bytes();
        let date_ok = db[..4].iter().all(u8::is_ascii_digit)
            && db[4] == b'-'
            && db[5..].iter().all(u8::is_ascii_digit)
            && (1..=12).contains(&date[5..].parse::<u8>().unwrap_or(0));
        if !date_ok {
            return Err(bad());
        }
        let rest = rest.strip_prefix('.').ok_or_else(bad)?;
        let (authority, unique) = match rest.split_once(':') {
            Some((a, u)) => (a, Some(u)),
            None => (rest, None),
        };
        let authority_ok = !authority.is_empty()
            && authority.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !authority_ok {
            return Err(bad());
        }
        if let Some(unique) = unique {
            if unique.is_empty()
                || !unique
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'_'))
            {
                return Err(format!(
                    "`{name}` is not a valid IQN: the part after ':' must be non-empty and use only letters, digits, '-', '.', ':' and '_'"
                ));
            }
        }
        Ok(())
    } else if let Some(hex) = lower.strip_prefix("eui.") {
        if hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(())
        } else {
            Err(format!(
                "`{name}` is not a valid EUI name: expected eui. followed by 16 hex digits"
            ))
        }
    } else if let Some(hex) = lower.strip_prefix("naa.") {
        if (hex.len() == 16 || hex.len() == 32) && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(())
        } else {
            Err(format!(
                "`{name}` is not a valid NAA name: expected naa. followed by 16 or 32 hex digits"
            ))
        }
    } else {
        Err(format!(
            "`{name}` is not an iSCSI name: it must start with iqn., eui. or naa."
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iscsi_names() {
        for ok in [
            "iqn.2026-11.io.tandem:node1-disk1",
            "iqn.1994-05.com.redhat:5c3d2f1a9b",
            "iqn.1991-05.com.microsoft:WIN-HOST.example.com",
            "iqn.2001-04.com.example",
            "eui.02004567A425678D",
            "naa.52004567BA64678D",
            "naa.62004567BA64678D0123456789ABCDEF",
        ] {
            assert_eq!(validate_iscsi_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "iqn.",
            "iqn.2026-13.io.tandem:x",
            "iqn.26-11.io.tandem:x",
            "iqn.2026-11io.tandem:x",
            "iqn.2026-11.:x",
            "iqn.2026-11.io..tandem:x",
            "iqn.2026-11.io.tandem:",
            "iqn.2026-11.io.tandem:has space",
            "eui.0200",
            "naa.xyz4567BA64678D",
            "host1",
        ] {
            assert!(validate_iscsi_name(bad).is_err(), "{bad}");
        }
        assert!(
            validate_iscsi_name(&format!("iqn.2026-11.io.tandem:{}", "a".repeat(220))).is_err()
        );
    }

    #[test]
    fn simple_names() {
        assert!(is_node_name("node-1"));
        assert!(!is_node_name("Node1"));
        assert!(!is_node_name("-node"));
        assert!(!is_node_name(""));
        assert!(is_device_name("Disk_1-a"));
        assert!(!is_device_name("disk 1"));
        assert!(!is_device_name("disk.1"));
        assert!(is_alias("disk1.a-b"));
        assert!(!is_alias("Disk1"));
        assert_eq!(alias_for_device("My_Disk"), "my-disk");
    }
}
