//! `WhatsApp` JIDs as Evolution / Baileys deliver them (webhook doc §7): canonical form, kind,
//! phone digits, the equivalence key of one person's numbers and the other form of a number,
//! and the robust chat/sender rule.

use std::borrow::Cow;

/// What a JID names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    User,
    Group,
    Broadcast,
    Status,
    Newsletter,
    Lid,
    Unknown,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::User => "user",
            Kind::Group => "group",
            Kind::Broadcast => "broadcast",
            Kind::Status => "status",
            Kind::Newsletter => "newsletter",
            Kind::Lid => "lid",
            Kind::Unknown => "unknown",
        }
    }
}

const WHITESPACE: &[char] = &[' ', '\t', '\n', '\r', '\x0c'];

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Strip a trailing `:<digits>` (device) from a user part.
fn strip_device(user: &str) -> &str {
    match user.rfind(':') {
        Some(i) if is_digits(&user[i + 1..]) => &user[..i],
        _ => user,
    }
}

/// Strip a trailing `.<digits>` (agent) from a user part.
fn strip_agent(user: &str) -> &str {
    match user.rfind('.') {
        Some(i) if is_digits(&user[i + 1..]) => &user[..i],
        _ => user,
    }
}

/// The canonical form of a JID, or None when there is nothing to name. Borrows from the
/// input when it is canonical already (the common case), so the hot path allocates nothing.
pub fn normalize(jid: &str) -> Option<Cow<'_, str>> {
    // ASCII only: JIDs are ASCII, and this keeps the result independent of Unicode tables.
    let trimmed = jid.trim_matches(WHITESPACE);
    if trimmed.is_empty() {
        return None;
    }
    let Some(at) = trimmed.find('@') else {
        // A bare number: keep it only when it is one.
        let digits: String = trimmed
            .chars()
            .filter(|c| !matches!(c, '+' | '(' | ')' | '-' | '.' | ' '))
            .collect();
        if is_digits(&digits) && (5..=20).contains(&digits.len()) {
            return Some(Cow::Owned(digits + "@s.whatsapp.net"));
        }
        return None;
    };
    let (user_raw, server_raw) = (&trimmed[..at], &trimmed[at + 1..]);
    if user_raw.is_empty() {
        return None;
    }
    let server_lower = lower(server_raw);
    let server: &str = if server_lower == "c.us" {
        "s.whatsapp.net"
    } else {
        &server_lower
    };
    let mut user = strip_device(user_raw);
    if matches!(server, "s.whatsapp.net" | "lid" | "hosted" | "hosted.lid") {
        user = strip_agent(user);
    }
    if user.is_empty() {
        return None;
    }
    let user = lower(user);
    if let (Cow::Borrowed(u), true) = (
        &user,
        server.len() == server_raw.len() && server == server_raw,
    ) {
        if u.len() == user_raw.len() {
            return Some(Cow::Borrowed(trimmed));
        }
    }
    let mut out = String::with_capacity(user.len() + 1 + server.len());
    out.push_str(&user);
    out.push('@');
    out.push_str(server);
    Some(Cow::Owned(out))
}

fn lower(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// The canonical form of a JID, owned.
pub fn normalize_jid(jid: &str) -> Option<String> {
    normalize(jid).map(Cow::into_owned)
}

/// The kind of an already canonical JID.
pub fn kind_of_canonical(jid: &str) -> Kind {
    if jid == "status@broadcast" {
        return Kind::Status;
    }
    let server = match jid.find('@') {
        Some(i) => &jid[i + 1..],
        None => return Kind::Unknown,
    };
    match server {
        "s.whatsapp.net" | "hosted" => Kind::User,
        "g.us" => Kind::Group,
        "broadcast" => Kind::Broadcast,
        "newsletter" => Kind::Newsletter,
        "lid" | "hosted.lid" => Kind::Lid,
        _ => Kind::Unknown,
    }
}

pub fn jid_kind(jid: &str) -> Kind {
    normalize(jid).map_or(Kind::Unknown, |j| kind_of_canonical(&j))
}

fn digits_of_canonical(jid: &str) -> Option<&str> {
    if kind_of_canonical(jid) != Kind::User {
        return None;
    }
    let user = &jid[..jid.find('@')?];
    is_digits(user).then_some(user)
}

pub fn phone_digits(jid: &str) -> Option<String> {
    let canonical = normalize(jid)?;
    digits_of_canonical(&canonical).map(str::to_owned)
}

/// One key for the numbers of one person: Brazil with and without the 9th digit,
/// Mexico with and without the `1`, Argentina with and without the `9`.
pub fn phone_key(number: &str) -> String {
    let d: String = number.chars().filter(char::is_ascii_digit).collect();
    let b = d.as_bytes();
    if b.len() == 13 {
        if d.starts_with("55") && b[4] == b'9' {
            return format!("{}{}", &d[..4], &d[5..]);
        }
        if d.starts_with("521") || d.starts_with("549") {
            return format!("{}{}", &d[..2], &d[3..]);
        }
    }
    d
}

/// The other form of one person's number, as digits: Brazil with / without the 9 after the
/// DDD, Mexico with / without the `1` after 52, Argentina with / without the `9` after 54
/// (Evolution's onWhatsappCache treats them as one person, webhook doc §7). Only numbers
/// that can have a twin qualify, so the result is an involution: the variant's variant is the
/// number again.
/// - BR: `55 DD 9 XXXXXXXX` <-> `55 DD XXXXXXXX` when `XXXXXXXX` is a mobile number (starts with
///   6-9; landlines, 2-5, never got the 9) and the DDD has no 0 (no Brazilian area code does).
/// - MX: `52 1 NNNNNNNNNN` <-> `52 NNNNNNNNNN`, `N...` a national number (starts with 2-9).
/// - AR: `54 9 NNNNNNNNNN` <-> `54 NNNNNNNNNN`, `N...` a geographic number (starts with 1-3).
pub fn digits_variant(d: &str) -> Option<String> {
    let b = d.as_bytes();
    if !is_digits(d) || !(b.len() == 12 || b.len() == 13) {
        return None;
    }
    let within = |i: usize, lo: u8, hi: u8| b.get(i).is_some_and(|c| (lo..=hi).contains(c));
    let long = b.len() == 13;
    match &d[..2] {
        "55" if within(2, b'1', b'9') && within(3, b'1', b'9') => {
            if long && b[4] == b'9' && within(5, b'6', b'9') {
                Some(format!("{}{}", &d[..4], &d[5..]))
            } else if !long && within(4, b'6', b'9') {
                Some(format!("{}9{}", &d[..4], &d[4..]))
            } else {
                None
            }
        }
        "52" => mobile_prefix_variant(d, b'1', b'2', b'9'),
        "54" => mobile_prefix_variant(d, b'9', b'1', b'3'),
        _ => None,
    }
}

/// `CC P NNNNNNNNNN` <-> `CC NNNNNNNNNN` (12/13 digits, `P` the mobile prefix, `N...` starting
/// within `lo..=hi`).
fn mobile_prefix_variant(d: &str, prefix: u8, lo: u8, hi: u8) -> Option<String> {
    let b = d.as_bytes();
    if b.len() == 13 && b[2] == prefix && (lo..=hi).contains(&b[3]) {
        Some(format!("{}{}", &d[..2], &d[3..]))
    } else if b.len() == 12 && (lo..=hi).contains(&b[2]) {
        Some(format!("{}{}{}", &d[..2], prefix as char, &d[2..]))
    } else {
        None
    }
}

/// The JID of the other form of a user JID's number (see `digits_variant`), canonical; None
/// when the JID names no phone number or the number has no second form.
pub fn phone_variant(jid: &str) -> Option<String> {
    let canonical = normalize(jid)?;
    let user = canonical.strip_suffix("@s.whatsapp.net")?;
    digits_variant(user).map(|v| v + "@s.whatsapp.net")
}

/// The key fields of a message, as received.
#[derive(Default, Clone, Debug)]
pub struct KeyFields<'a> {
    pub remote_jid: Option<&'a str>,
    pub remote_jid_alt: Option<&'a str>,
    pub sender_pn: Option<&'a str>,
    pub sender_lid: Option<&'a str>,
    pub previous_remote_jid: Option<&'a str>,
    pub participant: Option<&'a str>,
    pub participant_alt: Option<&'a str>,
    pub participant_pn: Option<&'a str>,
    pub participant_lid: Option<&'a str>,
    pub from_me: bool,
    pub owner_jid: Option<&'a str>,
}

/// Who a message is with and from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addresses {
    pub chat_jid: Option<String>,
    pub chat_type: Kind,
    pub sender_jid: Option<String>,
    pub sender_phone: Option<String>,
    pub lid_pairs: Vec<(String, String)>,
}

fn norm(value: Option<&str>) -> Option<String> {
    value.and_then(normalize_jid)
}

fn first_of(kind: Kind, candidates: &[Option<&str>]) -> Option<String> {
    candidates
        .iter()
        .filter_map(|c| c.and_then(normalize))
        .find(|j| kind_of_canonical(j) == kind)
        .map(Cow::into_owned)
}

/// The robust rule of §7: phone when anything in the key tells it, else the LID.
pub fn resolve_addresses(k: &KeyFields) -> Addresses {
    let remote = norm(k.remote_jid);
    let head = remote.clone().or_else(|| norm(k.remote_jid_alt));
    let head_kind = head.as_deref().map_or(Kind::Unknown, kind_of_canonical);
    let mut lid_pairs = Vec::new();
    let mut owner = norm(k.owner_jid);
    let (chat_jid, sender_jid) = if matches!(
        head_kind,
        Kind::Group | Kind::Broadcast | Kind::Status | Kind::Newsletter
    ) {
        let sender = if k.from_me {
            // the envelope has no sender before the first connection; the participant of
            // one's own group message is oneself
            owner.or_else(|| {
                first_of(
                    Kind::User,
                    &[k.participant, k.participant_alt, k.participant_pn],
                )
            })
        } else {
            let phone = first_of(
                Kind::User,
                &[k.participant, k.participant_alt, k.participant_pn],
            );
            let lid = first_of(
                Kind::Lid,
                &[k.participant, k.participant_alt, k.participant_lid],
            );
            if let (Some(l), Some(p)) = (&lid, &phone) {
                lid_pairs.push((l.clone(), p.clone()));
            }
            phone.or(lid).or_else(|| norm(k.participant))
        };
        (head, sender)
    } else {
        let (sender_pn, sender_lid) = if k.from_me {
            (None, None)
        } else {
            (k.sender_pn, k.sender_lid)
        };
        if k.from_me && owner.is_none() {
            // 2.3.1-2.3.2: for fromMe, senderPn is the owner
            owner = first_of(Kind::User, &[k.sender_pn]);
        }
        // 2.3.1-2.3.2 swap remoteJid to senderPn, which for fromMe is the owner: the contact is
        // then only in previousRemoteJid, and remoteJid names nobody but ourselves.
        let previous = norm(k.previous_remote_jid);
        let swapped = k.from_me && remote.is_some() && remote == owner && previous.is_some();
        let first = if swapped { None } else { k.remote_jid };
        let phone = first_of(
            Kind::User,
            &[first, k.remote_jid_alt, sender_pn, k.previous_remote_jid],
        );
        let lid = first_of(
            Kind::Lid,
            &[first, k.remote_jid_alt, sender_lid, k.previous_remote_jid],
        );
        if let (Some(l), Some(p)) = (&lid, &phone) {
            lid_pairs.push((l.clone(), p.clone()));
        }
        let fallback = if swapped { previous } else { remote };
        let chat = phone.or(lid).or(fallback);
        let sender = if k.from_me { owner } else { chat.clone() };
        (chat, sender)
    };
    let chat_type = chat_jid.as_deref().map_or(Kind::Unknown, kind_of_canonical);
    let sender_phone = sender_jid
        .as_deref()
        .and_then(digits_of_canonical)
        .map(str::to_owned);
    Addresses {
        chat_jid,
        chat_type,
        sender_jid,
        sender_phone,
        lid_pairs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Option<String> {
        normalize_jid(s)
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(
            n("5511999999999@s.whatsapp.net").as_deref(),
            Some("5511999999999@s.whatsapp.net")
        );
        assert_eq!(
            n(" 5511999999999:12@S.WhatsApp.net ").as_deref(),
            Some("5511999999999@s.whatsapp.net")
        );
        assert_eq!(
            n("5511999999999@c.us").as_deref(),
            Some("5511999999999@s.whatsapp.net")
        );
        assert_eq!(
            n("123456789012345:20@lid").as_deref(),
            Some("123456789012345@lid")
        );
        assert_eq!(
            n("5511999999999.0:3@s.whatsapp.net").as_deref(),
            Some("5511999999999@s.whatsapp.net")
        );
        assert_eq!(
            n("5511999999999-1600000000@g.us").as_deref(),
            Some("5511999999999-1600000000@g.us")
        );
        assert_eq!(n("status@broadcast").as_deref(), Some("status@broadcast"));
        assert_eq!(
            n("+55 (11) 99999-9999").as_deref(),
            Some("5511999999999@s.whatsapp.net")
        );
        assert_eq!(n(""), None);
        assert_eq!(n("   "), None);
        assert_eq!(n("@s.whatsapp.net"), None);
        assert_eq!(n(":12@s.whatsapp.net"), None);
        assert_eq!(n("João"), None);
        assert_eq!(n("1234"), None);
        assert_eq!(
            n("abc:x@weird.server").as_deref(),
            Some("abc:x@weird.server")
        );
    }

    #[test]
    fn kinds() {
        assert_eq!(jid_kind("status@broadcast"), Kind::Status);
        assert_eq!(jid_kind("1600000000@broadcast"), Kind::Broadcast);
        assert_eq!(jid_kind("120363025246125486@g.us"), Kind::Group);
        assert_eq!(jid_kind("1@newsletter"), Kind::Newsletter);
        assert_eq!(jid_kind("1@lid"), Kind::Lid);
        assert_eq!(jid_kind("1@hosted.lid"), Kind::Lid);
        assert_eq!(jid_kind("1@hosted"), Kind::User);
        assert_eq!(jid_kind("1@c.us"), Kind::User);
        assert_eq!(jid_kind("x@y"), Kind::Unknown);
        assert_eq!(jid_kind(""), Kind::Unknown);
    }

    #[test]
    fn phones() {
        assert_eq!(
            phone_digits("5511999999999:3@s.whatsapp.net").as_deref(),
            Some("5511999999999")
        );
        assert_eq!(phone_digits("123@lid"), None);
        assert_eq!(phone_digits("abc@s.whatsapp.net"), None);
        assert_eq!(phone_key("5511998765432"), phone_key("551198765432"));
        assert_eq!(phone_key("5531998765432"), "553198765432");
        assert_eq!(phone_key("5215512345678"), phone_key("525512345678"));
        assert_eq!(phone_key("5491123456789"), phone_key("541123456789"));
        assert_eq!(phone_key("+1 (415) 555-0100"), "14155550100");
        assert_eq!(phone_key(""), "");
    }

    #[test]
    fn variants() {
        let v = |s: &str| phone_variant(s);
        let jid = |d: &str| Some(format!("{d}@s.whatsapp.net"));
        // BR: mobile with and without the 9th digit, either way, any input form
        assert_eq!(v("5531998765432@s.whatsapp.net"), jid("553198765432"));
        assert_eq!(v("553198765432@s.whatsapp.net"), jid("5531998765432"));
        assert_eq!(v("553198765432:7@c.us"), jid("5531998765432"));
        assert_eq!(v("5511987654321@s.whatsapp.net"), jid("551187654321"));
        assert_eq!(v("551161234567@s.whatsapp.net"), jid("5511961234567"));
        // BR landlines (2-5) never had the 9; 9 + landline digits is no old mobile either
        assert_eq!(v("551132345678@s.whatsapp.net"), None);
        assert_eq!(v("5511932345678@s.whatsapp.net"), None);
        // BR: no DDD has a 0; 13 digits without the 9 after the DDD
        assert_eq!(v("550198765432@s.whatsapp.net"), None);
        assert_eq!(v("5510998765432@s.whatsapp.net"), None);
        assert_eq!(v("5531898765432@s.whatsapp.net"), None);
        // MX 1, AR 9
        assert_eq!(v("5215512345678@s.whatsapp.net"), jid("525512345678"));
        assert_eq!(v("525512345678@s.whatsapp.net"), jid("5215512345678"));
        assert_eq!(v("5491123456789@s.whatsapp.net"), jid("541123456789"));
        assert_eq!(v("541123456789@s.whatsapp.net"), jid("5491123456789"));
        assert_eq!(v("5251234567890@s.whatsapp.net"), None);
        assert_eq!(v("521123456789@s.whatsapp.net"), None);
        assert_eq!(v("5481123456789@s.whatsapp.net"), None);
        assert_eq!(v("549123456789@s.whatsapp.net"), None);
        // other countries, lengths, servers
        assert_eq!(v("14155550100@s.whatsapp.net"), None);
        assert_eq!(v("55319987654321@s.whatsapp.net"), None);
        assert_eq!(v("5531998765432@lid"), None);
        assert_eq!(v("5531998765432-1600000000@g.us"), None);
        assert_eq!(v("5531998765432@hosted"), None);
        assert_eq!(v("5531998765432"), jid("553198765432"));
        assert_eq!(v(""), None);
        for d in [
            "5531998765432",
            "553198765432",
            "5215512345678",
            "541123456789",
        ] {
            let other = digits_variant(d).unwrap();
            assert_eq!(digits_variant(&other).as_deref(), Some(d));
            assert_eq!(phone_key(&other), phone_key(d));
        }
    }

    #[test]
    fn dm_with_lid_and_phone() {
        let a = resolve_addresses(&KeyFields {
            remote_jid: Some("123456789012345@lid"),
            remote_jid_alt: Some("5511987654321:2@s.whatsapp.net"),
            ..Default::default()
        });
        assert_eq!(a.chat_jid.as_deref(), Some("5511987654321@s.whatsapp.net"));
        assert_eq!(a.chat_type, Kind::User);
        assert_eq!(a.sender_phone.as_deref(), Some("5511987654321"));
        assert_eq!(
            a.lid_pairs,
            vec![(
                "123456789012345@lid".into(),
                "5511987654321@s.whatsapp.net".into()
            )]
        );
    }

    #[test]
    fn from_me_sender_is_the_owner_and_sender_pn_is_ignored() {
        let a = resolve_addresses(&KeyFields {
            remote_jid: Some("123@lid"),
            sender_pn: Some("5511900000001@s.whatsapp.net"),
            from_me: true,
            owner_jid: Some("5511900000001:5@s.whatsapp.net"),
            ..Default::default()
        });
        assert_eq!(a.chat_jid.as_deref(), Some("123@lid"));
        assert_eq!(a.chat_type, Kind::Lid);
        assert_eq!(
            a.sender_jid.as_deref(),
            Some("5511900000001@s.whatsapp.net")
        );
        assert!(a.lid_pairs.is_empty());
    }

    #[test]
    fn from_me_swapped_to_the_owner_keeps_the_contact() {
        // 2.3.1: remoteJid was swapped to senderPn, which for fromMe is the owner
        let a = resolve_addresses(&KeyFields {
            remote_jid: Some("5511900000001@s.whatsapp.net"),
            sender_pn: Some("5511900000001@s.whatsapp.net"),
            previous_remote_jid: Some("987654321098765@lid"),
            from_me: true,
            owner_jid: Some("5511900000001:17@s.whatsapp.net"),
            ..Default::default()
        });
        assert_eq!(a.chat_jid.as_deref(), Some("987654321098765@lid"));
        assert_eq!(a.chat_type, Kind::Lid);
        assert_eq!(
            a.sender_jid.as_deref(),
            Some("5511900000001@s.whatsapp.net")
        );
        assert!(a.lid_pairs.is_empty());
        // no envelope sender yet: senderPn names the owner
        let b = resolve_addresses(&KeyFields {
            remote_jid: Some("987654321098765@lid"),
            sender_pn: Some("5511900000001@s.whatsapp.net"),
            from_me: true,
            ..Default::default()
        });
        assert_eq!(b.chat_jid.as_deref(), Some("987654321098765@lid"));
        assert_eq!(
            b.sender_jid.as_deref(),
            Some("5511900000001@s.whatsapp.net")
        );
        // a message to oneself is not a swap
        let c = resolve_addresses(&KeyFields {
            remote_jid: Some("5511900000001@s.whatsapp.net"),
            from_me: true,
            owner_jid: Some("5511900000001@s.whatsapp.net"),
            ..Default::default()
        });
        assert_eq!(c.chat_jid.as_deref(), Some("5511900000001@s.whatsapp.net"));
    }

    #[test]
    fn group_sender_is_the_participant_phone() {
        let a = resolve_addresses(&KeyFields {
            remote_jid: Some("120363025246125486@g.us"),
            participant: Some("999@lid"),
            participant_alt: Some("5511911112222@s.whatsapp.net"),
            ..Default::default()
        });
        assert_eq!(a.chat_type, Kind::Group);
        assert_eq!(
            a.sender_jid.as_deref(),
            Some("5511911112222@s.whatsapp.net")
        );
        assert_eq!(
            a.lid_pairs,
            vec![("999@lid".into(), "5511911112222@s.whatsapp.net".into())]
        );
    }

    #[test]
    fn nothing_at_all() {
        let a = resolve_addresses(&KeyFields::default());
        assert_eq!(a.chat_jid, None);
        assert_eq!(a.chat_type, Kind::Unknown);
        assert_eq!(a.sender_jid, None);
    }

    #[test]
    fn odd_inputs_never_panic() {
        let long = "9".repeat(5000);
        let odd = [
            "@",
            "@@",
            ":",
            ":@",
            "a:@b",
            ".@lid",
            "1.:2@lid",
            "é@ü",
            "\u{0}",
            "::1@lid",
            "😀:1@s.whatsapp.net",
            "1:😀@lid",
            "-",
            "+",
            long.as_str(),
            "Ⅻ@c.us",
            "İ@lid",
        ];
        for s in &odd {
            let c = normalize_jid(s);
            if let Some(c) = &c {
                assert_eq!(normalize_jid(c).as_deref(), Some(c.as_str()), "{s:?}");
            }
            let _ = jid_kind(s);
            let _ = phone_digits(s);
            let _ = phone_key(s);
            let _ = phone_variant(s);
            let _ = digits_variant(s);
            let _ = resolve_addresses(&KeyFields {
                remote_jid: Some(s),
                participant: Some(s),
                ..Default::default()
            });
        }
    }
}
