//! RADIUS packet codec (RFC 2865/2866/2869/5997/5176): encoding, decoding, User-Password hiding,
//! Request/Response Authenticators and Message-Authenticator (HMAC-MD5).
//!
//! Pure functions over bytes; no sockets, no clocks. Attributes are kept as raw `(type, value)`
//! pairs in wire order so that values we do not interpret (Class above all) are carried through
//! byte for byte.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use std::net::Ipv4Addr;

/// Packet codes used by the portal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Code {
    /// 1
    AccessRequest,
    /// 2
    AccessAccept,
    /// 3
    AccessReject,
    /// 4
    AccountingRequest,
    /// 5
    AccountingResponse,
    /// 11
    AccessChallenge,
    /// 12
    StatusServer,
    /// 40 (RFC 5176)
    DisconnectRequest,
    /// 41
    DisconnectAck,
    /// 42
    DisconnectNak,
    /// 43
    CoaRequest,
    /// 44
    CoaAck,
    /// 45
    CoaNak,
    /// Anything else (kept so decoding never fails on an unexpected code).
    Other(u8),
}

impl Code {
    /// Wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            Code::AccessRequest => 1,
            Code::AccessAccept => 2,
            Code::AccessReject => 3,
            Code::AccountingRequest => 4,
            Code::AccountingResponse => 5,
            Code::AccessChallenge => 11,
            Code::StatusServer => 12,
            Code::DisconnectRequest => 40,
            Code::DisconnectAck => 41,
            Code::DisconnectNak => 42,
            Code::CoaRequest => 43,
            Code::CoaAck => 44,
            Code::CoaNak => 45,
            Code::Other(c) => c,
        }
    }

    /// From the wire value.
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Code::AccessRequest,
            2 => Code::AccessAccept,
            3 => Code::AccessReject,
            4 => Code::AccountingRequest,
            5 => Code::AccountingResponse,
            11 => Code::AccessChallenge,
            12 => Code::StatusServer,
            40 => Code::DisconnectRequest,
            41 => Code::DisconnectAck,
            42 => Code::DisconnectNak,
            43 => Code::CoaRequest,
            44 => Code::CoaAck,
            45 => Code::CoaNak,
            other => Code::Other(other),
        }
    }
}

/// Attribute type numbers (RFC 2865, 2866, 2869, 3162).
pub mod attr {
    pub const USER_NAME: u8 = 1;
    pub const USER_PASSWORD: u8 = 2;
    pub const NAS_IP_ADDRESS: u8 = 4;
    pub const SERVICE_TYPE: u8 = 6;
    pub const FRAMED_IP_ADDRESS: u8 = 8;
    pub const REPLY_MESSAGE: u8 = 18;
    pub const CLASS: u8 = 25;
    pub const SESSION_TIMEOUT: u8 = 27;
    pub const IDLE_TIMEOUT: u8 = 28;
    pub const CALLING_STATION_ID: u8 = 31;
    pub const NAS_IDENTIFIER: u8 = 32;
    pub const ACCT_STATUS_TYPE: u8 = 40;
    pub const ACCT_DELAY_TIME: u8 = 41;
    pub const ACCT_SESSION_ID: u8 = 44;
    pub const ACCT_AUTHENTIC: u8 = 45;
    pub const ACCT_SESSION_TIME: u8 = 46;
    pub const ACCT_TERMINATE_CAUSE: u8 = 49;
    pub const EVENT_TIMESTAMP: u8 = 55;
    pub const NAS_PORT_TYPE: u8 = 61;
    pub const MESSAGE_AUTHENTICATOR: u8 = 80;
    pub const ACCT_INTERIM_INTERVAL: u8 = 85;
    pub const ERROR_CAUSE: u8 = 101;
    pub const NAS_IPV6_ADDRESS: u8 = 95;
    pub const FRAMED_IPV6_ADDRESS: u8 = 168;
}

/// Largest RADIUS packet (RFC 2865 §3).
pub const MAX_PACKET: usize = 4096;
const HEADER: usize = 20;

/// Why bytes could not be read as a RADIUS packet.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PacketError {
    /// Shorter than the header or than its own length field; drop it.
    #[error("packet truncated")]
    Truncated,
    /// Length field outside 20..=4096; drop it.
    #[error("packet length field {0} is invalid")]
    BadLength(usize),
    /// An attribute's length runs past the packet or is below 2; drop it.
    #[error("attribute {0} is malformed")]
    BadAttribute(u8),
    /// Encoding would exceed 4096 bytes or an attribute exceeds 253 bytes of value.
    #[error("packet too large")]
    TooLarge,
}

/// A decoded (or to-be-encoded) RADIUS packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Packet code.
    pub code: Code,
    /// Identifier matching replies to requests.
    pub identifier: u8,
    /// Request or Response Authenticator, as on the wire.
    pub authenticator: [u8; 16],
    /// Attributes in wire order.
    pub attributes: Vec<(u8, Vec<u8>)>,
}

impl Packet {
    /// A packet with no attributes.
    pub fn new(code: Code, identifier: u8, authenticator: [u8; 16]) -> Self {
        Packet {
            code,
            identifier,
            authenticator,
            attributes: Vec::new(),
        }
    }

    /// Appends an attribute.
    pub fn push(&mut self, typ: u8, value: impl Into<Vec<u8>>) {
        self.attributes.push((typ, value.into()));
    }

    /// Appends a 32-bit integer attribute.
    pub fn push_u32(&mut self, typ: u8, value: u32) {
        self.push(typ, value.to_be_bytes().to_vec());
    }

    /// Appends an IPv4 address attribute.
    pub fn push_ipv4(&mut self, typ: u8, value: Ipv4Addr) {
        self.push(typ, value.octets().to_vec());
    }

    /// First value of an attribute.
    pub fn get(&self, typ: u8) -> Option<&[u8]> {
        self.attributes
            .iter()
            .find(|(t, _)| *t == typ)
            .map(|(_, v)| v.as_slice())
    }

    /// Every value of an attribute, in order.
    pub fn get_all(&self, typ: u8) -> impl Iterator<Item = &[u8]> {
        self.attributes
            .iter()
            .filter(move |(t, _)| *t == typ)
            .map(|(_, v)| v.as_slice())
    }

    /// First value of an attribute read as a 32-bit integer (None if absent or not 4 bytes).
    pub fn get_u32(&self, typ: u8) -> Option<u32> {
        let v = self.get(typ)?;
        Some(u32::from_be_bytes(v.try_into().ok()?))
    }

    /// First value of a text attribute (lossy UTF-8).
    pub fn get_text(&self, typ: u8) -> Option<String> {
        self.get(typ)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Encodes as-is (authenticator and Message-Authenticator bytes as they are).
    pub fn encode(&self) -> Result<Vec<u8>, PacketError> {
        let mut out = Vec::with_capacity(128);
        out.push(self.code.to_u8());
        out.push(self.identifier);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.authenticator);
        for (typ, value) in &self.attributes {
            if value.len() > 253 {
                return Err(PacketError::TooLarge);
            }
            out.push(*typ);
            out.push((value.len() + 2) as u8);
            out.extend_from_slice(value);
        }
        if out.len() > MAX_PACKET {
            return Err(PacketError::TooLarge);
        }
        let len = (out.len() as u16).to_be_bytes();
        out[2..4].copy_from_slice(&len);
        Ok(out)
    }

    /// Decodes a packet; trailing bytes beyond the length field are ignored (RFC 2865 §3).
    pub fn decode(bytes: &[u8]) -> Result<Packet, PacketError> {
        if bytes.len() < HEADER {
            return Err(PacketError::Truncated);
        }
        let len = u16::from_be_bytes([bytes[2], bytes[3]]) as usize;
        if !(HEADER..=MAX_PACKET).contains(&len) {
            return Err(PacketError::BadLength(len));
        }
        if bytes.len() < len {
            return Err(PacketError::Truncated);
        }
        let mut authenticator = [0u8; 16];
        authenticator.copy_from_slice(&bytes[4..20]);
        let mut attributes = Vec::new();
        let mut at = HEADER;
        while at < len {
            if at + 2 > len {
                return Err(PacketError::BadAttribute(bytes[at]));
            }
            let (typ, alen) = (bytes[at], bytes[at + 1] as usize);
            if alen < 2 || at + alen > len {
                return Err(PacketError::BadAttribute(typ));
            }
            attributes.push((typ, bytes[at + 2..at + alen].to_vec()));
            at += alen;
        }
        Ok(Packet {
            code: Code::from_u8(bytes[0]),
            identifier: bytes[1],
            authenticator,
            attributes,
        })
    }
}

/// Hides a User-Password (RFC 2865 §5.2) with the shared secret and Request Authenticator.
pub fn hide_password(password: &[u8], secret: &[u8], authenticator: &[u8; 16]) -> Vec<u8> {
    let padded_len = password.len().div_ceil(16).max(1) * 16;
    let mut out = password.to_vec();
    out.resize(padded_len, 0);
    let mut prev: Vec<u8> = authenticator.to_vec();
    for chunk in out.chunks_mut(16) {
        let digest = Md5::new()
            .chain_update(secret)
            .chain_update(&prev)
            .finalize();
        for (b, d) in chunk.iter_mut().zip(digest.iter()) {
            *b ^= d;
        }
        prev = chunk.to_vec();
    }
    out
}

/// Reverses [`hide_password`]; trailing NUL padding is removed.
pub fn unhide_password(hidden: &[u8], secret: &[u8], authenticator: &[u8; 16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hidden.len());
    let mut prev: Vec<u8> = authenticator.to_vec();
    for chunk in hidden.chunks(16) {
        let digest = Md5::new()
            .chain_update(secret)
            .chain_update(&prev)
            .finalize();
        out.extend(chunk.iter().zip(digest.iter()).map(|(b, d)| b ^ d));
        prev = chunk.to_vec();
    }
    while out.last() == Some(&0) {
        out.pop();
    }
    out
}

/// The packet's own length (its Length field) if the bytes can be a RADIUS packet: at least a
/// header, Length within 20..=4096 and not beyond the datagram (RFC 2865 §3: bytes past Length
/// are padding and ignored; a Length longer than the datagram means drop it). Everything that
/// reads received bytes asks this first, so no slice below can go out of bounds.
pub fn declared_length(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < HEADER {
        return None;
    }
    let len = u16::from_be_bytes([bytes[2], bytes[3]]) as usize;
    ((HEADER..=MAX_PACKET).contains(&len) && len <= bytes.len()).then_some(len)
}

/// Offset of the Message-Authenticator value in encoded bytes, if present.
fn message_authenticator_offset(bytes: &[u8]) -> Option<usize> {
    let len = declared_length(bytes)?;
    let mut at = HEADER;
    while at + 2 <= len {
        let (typ, alen) = (bytes[at], bytes[at + 1] as usize);
        if alen < 2 {
            return None;
        }
        if at + alen > len {
            return None;
        }
        if typ == attr::MESSAGE_AUTHENTICATOR && alen == 18 {
            return Some(at + 2);
        }
        at += alen;
    }
    None
}

fn hmac_md5(secret: &[u8], data: &[u8]) -> [u8; 16] {
    // HMAC accepts keys of any length, so new_from_slice cannot fail.
    #[allow(clippy::expect_used)]
    let mut mac = Hmac::<Md5>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Fills the Message-Authenticator value (which must be present, zeroed) of an encoded packet:
/// HMAC-MD5 over the packet with the given authenticator in the header position (RFC 3579 §3.2).
fn sign_message_authenticator(bytes: &mut [u8], secret: &[u8], header_authenticator: &[u8; 16]) {
    if let Some(at) = message_authenticator_offset(bytes) {
        let mut scratch = bytes.to_vec();
        scratch[4..20].copy_from_slice(header_authenticator);
        scratch[at..at + 16].fill(0);
        let mac = hmac_md5(secret, &scratch);
        bytes[at..at + 16].copy_from_slice(&mac);
    }
}

/// Encodes an Access-Request or Status-Server: the packet's authenticator is the random Request
/// Authenticator; Message-Authenticator is (re)placed last and signed.
pub fn encode_access_request(packet: &Packet, secret: &[u8]) -> Result<Vec<u8>, PacketError> {
    let mut p = packet.clone();
    p.attributes
        .retain(|(t, _)| *t != attr::MESSAGE_AUTHENTICATOR);
    p.attributes
        .insert(0, (attr::MESSAGE_AUTHENTICATOR, vec![0; 16]));
    let mut bytes = p.encode()?;
    sign_message_authenticator(&mut bytes, secret, &p.authenticator);
    Ok(bytes)
}

/// Encodes an Accounting-Request (or CoA/Disconnect request): the Request Authenticator is
/// MD5(packet with zero authenticator + secret) (RFC 2866 §3). Returns the bytes and the
/// authenticator actually sent (needed to verify the response).
pub fn encode_accounting_request(
    packet: &Packet,
    secret: &[u8],
) -> Result<(Vec<u8>, [u8; 16]), PacketError> {
    let mut p = packet.clone();
    p.authenticator = [0; 16];
    p.attributes
        .retain(|(t, _)| *t != attr::MESSAGE_AUTHENTICATOR);
    let mut bytes = p.encode()?;
    let auth: [u8; 16] = Md5::new()
        .chain_update(&bytes)
        .chain_update(secret)
        .finalize()
        .into();
    bytes[4..20].copy_from_slice(&auth);
    Ok((bytes, auth))
}

/// Encodes a reply to `request_authenticator`: Message-Authenticator (if the reply has one) is
/// signed over the request's authenticator, then the Response Authenticator is computed.
pub fn encode_response(
    packet: &Packet,
    request_authenticator: &[u8; 16],
    secret: &[u8],
) -> Result<Vec<u8>, PacketError> {
    let mut p = packet.clone();
    p.authenticator = *request_authenticator;
    let mut bytes = p.encode()?;
    sign_message_authenticator(&mut bytes, secret, request_authenticator);
    let auth: [u8; 16] = Md5::new()
        .chain_update(&bytes)
        .chain_update(secret)
        .finalize()
        .into();
    bytes[4..20].copy_from_slice(&auth);
    Ok(bytes)
}

/// How a reply's integrity checks came out.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplyCheck {
    /// Response Authenticator (and Message-Authenticator, when present) verified.
    Verified {
        /// Whether the reply carried a valid Message-Authenticator.
        has_message_authenticator: bool,
    },
    /// Response Authenticator wrong: forged, or the secret differs. Drop the reply.
    BadResponseAuthenticator,
    /// Message-Authenticator present but wrong. Drop the reply.
    BadMessageAuthenticator,
    /// Not a RADIUS packet (shorter than a header, Length outside 20..=4096 or beyond the
    /// datagram). Drop it.
    Malformed,
}

/// Verifies a reply's Response Authenticator and Message-Authenticator against the request's
/// authenticator (RFC 2865 §3, RFC 3579 §3.2).
pub fn verify_reply(bytes: &[u8], request_authenticator: &[u8; 16], secret: &[u8]) -> ReplyCheck {
    let Some(len) = declared_length(bytes) else {
        return ReplyCheck::Malformed;
    };
    let bytes = &bytes[..len];
    let mut scratch = bytes.to_vec();
    scratch[4..20].copy_from_slice(request_authenticator);
    let expected: [u8; 16] = Md5::new()
        .chain_update(&scratch)
        .chain_update(secret)
        .finalize()
        .into();
    if expected[..] != bytes[4..20] {
        return ReplyCheck::BadResponseAuthenticator;
    }
    match message_authenticator_offset(bytes) {
        None => ReplyCheck::Verified {
            has_message_authenticator: false,
        },
        Some(at) => {
            scratch[at..at + 16].fill(0);
            let mac = hmac_md5(secret, &scratch);
            if mac[..] == bytes[at..at + 16] {
                ReplyCheck::Verified {
                    has_message_authenticator: true,
                }
            } else {
                ReplyCheck::BadMessageAuthenticator
            }
        }
    }
}

/// Why a received datagram was not accepted as the reply to a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Integrity check failed (forged, other secret, not RADIUS).
    Check(ReplyCheck),
    /// Verified but no Message-Authenticator although this server must send one.
    MissingMessageAuthenticator,
    /// Verified but the attributes do not parse.
    Undecodable(PacketError),
}

/// The whole receive-side decision for one datagram: verified (Response Authenticator,
/// Message-Authenticator when present or required) and decoded — or why it is dropped. Total
/// over any bytes: never panics (fuzzed in the tests below).
pub fn accept_reply(
    bytes: &[u8],
    request_authenticator: &[u8; 16],
    secret: &[u8],
    require_message_authenticator: bool,
) -> Result<(Packet, bool), Dropped> {
    match verify_reply(bytes, request_authenticator, secret) {
        ReplyCheck::Verified {
            has_message_authenticator,
        } => {
            if require_message_authenticator && !has_message_authenticator {
                return Err(Dropped::MissingMessageAuthenticator);
            }
            let packet = Packet::decode(bytes).map_err(Dropped::Undecodable)?;
            Ok((packet, has_message_authenticator))
        }
        other => Err(Dropped::Check(other)),
    }
}

/// Verifies a received request's Message-Authenticator (server side). `None` if absent.
pub fn verify_request_message_authenticator(bytes: &[u8], secret: &[u8]) -> Option<bool> {
    let at = message_authenticator_offset(bytes)?;
    let len = declared_length(bytes)?;
    let mut scratch = bytes[..len].to_vec();
    scratch[at..at + 16].fill(0);
    let mac = hmac_md5(secret, &scratch);
    Some(mac[..] == bytes[at..at + 16])
}

/// Verifies a CoA-Request or Disconnect-Request (RFC 5176 §3.5, §3.3): the Request
/// Authenticator as for accounting, and a Message-Authenticator, when present, computed over the
/// packet with a zero Request Authenticator. `Some(has_message_authenticator)` when authentic.
pub fn verify_dynauth_request(bytes: &[u8], secret: &[u8]) -> Option<bool> {
    if !verify_accounting_request(bytes, secret) {
        return None;
    }
    let len = declared_length(bytes)?;
    let bytes = &bytes[..len];
    match message_authenticator_offset(bytes) {
        None => Some(false),
        Some(at) => {
            let mut scratch = bytes.to_vec();
            scratch[4..20].fill(0);
            scratch[at..at + 16].fill(0);
            (hmac_md5(secret, &scratch)[..] == bytes[at..at + 16]).then_some(true)
        }
    }
}

/// Encodes a CoA-Request or Disconnect-Request as a server sends it (tests, tools): Request
/// Authenticator as for accounting, Message-Authenticator signed with a zero one.
pub fn encode_dynauth_request(packet: &Packet, secret: &[u8]) -> Result<Vec<u8>, PacketError> {
    let mut p = packet.clone();
    p.authenticator = [0; 16];
    p.attributes
        .retain(|(t, _)| *t != attr::MESSAGE_AUTHENTICATOR);
    p.attributes
        .push((attr::MESSAGE_AUTHENTICATOR, vec![0; 16]));
    let mut bytes = p.encode()?;
    sign_message_authenticator(&mut bytes, secret, &[0; 16]);
    let auth: [u8; 16] = Md5::new()
        .chain_update(&bytes)
        .chain_update(secret)
        .finalize()
        .into();
    bytes[4..20].copy_from_slice(&auth);
    Ok(bytes)
}

/// Verifies a received Accounting-Request's authenticator (server side).
pub fn verify_accounting_request(bytes: &[u8], secret: &[u8]) -> bool {
    let Some(len) = declared_length(bytes) else {
        return false;
    };
    let bytes = &bytes[..len];
    let mut scratch = bytes.to_vec();
    scratch[4..20].fill(0);
    let expected: [u8; 16] = Md5::new()
        .chain_update(&scratch)
        .chain_update(secret)
        .finalize()
        .into();
    expected[..] == bytes[4..20]
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"testing123";

    #[test]
    fn hidden_password_round_trips_for_every_length() {
        let auth = [7u8; 16];
        for len in [1usize, 15, 16, 17, 32, 100, 128] {
            let pw: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let hidden = hide_password(&pw, SECRET, &auth);
            assert_eq!(hidden.len() % 16, 0);
            assert_ne!(hidden[..len.min(16)], pw[..len.min(16)]);
            assert_eq!(unhide_password(&hidden, SECRET, &auth), pw);
        }
    }

    #[test]
    fn hidden_password_matches_rfc2865_example() {
        // RFC 2865 §7.1 example: secret "xyzzy5461", password "arctangent".
        let auth: [u8; 16] = [
            0x0f, 0x40, 0x3f, 0x94, 0x73, 0x97, 0x80, 0x57, 0xbd, 0x83, 0xd5, 0xcb, 0x98, 0xf4,
            0x22, 0x7a,
        ];
        let hidden = hide_password(b"arctangent", b"xyzzy5461", &auth);
        let expected = [
            0x0d, 0xbe, 0x70, 0x8d, 0x93, 0xd4, 0x13, 0xce, 0x31, 0x96, 0xe4, 0x3f, 0x78, 0x2a,
            0x0a, 0xee,
        ];
        assert_eq!(hidden, expected);
    }

    #[test]
    fn decode_reads_what_encode_wrote() {
        let mut p = Packet::new(Code::AccessAccept, 42, [1; 16]);
        p.push(attr::CLASS, vec![0, 255, 1, 2]);
        p.push_u32(attr::SESSION_TIMEOUT, 30);
        let decoded = Packet::decode(&p.encode().expect("small packet encodes")).expect("decodes");
        assert_eq!(decoded, p);
        assert_eq!(decoded.get_u32(attr::SESSION_TIMEOUT), Some(30));
    }

    #[test]
    fn malformed_packets_are_errors_not_panics() {
        assert_eq!(Packet::decode(&[1, 2, 3]), Err(PacketError::Truncated));
        let mut bytes = Packet::new(Code::AccessAccept, 1, [0; 16])
            .encode()
            .expect("encodes");
        bytes[3] = 10;
        assert_eq!(Packet::decode(&bytes), Err(PacketError::BadLength(10)));
        let mut p = Packet::new(Code::AccessAccept, 1, [0; 16]);
        p.push(attr::CLASS, vec![1, 2, 3]);
        let mut bytes = p.encode().expect("encodes");
        bytes[21] = 40; // attribute length past the end
        assert_eq!(
            Packet::decode(&bytes),
            Err(PacketError::BadAttribute(attr::CLASS))
        );
        bytes[21] = 1; // attribute length below 2
        assert_eq!(
            Packet::decode(&bytes),
            Err(PacketError::BadAttribute(attr::CLASS))
        );
    }

    #[test]
    fn signed_reply_verifies_and_tampering_is_detected() {
        let request_auth = [9u8; 16];
        let mut reply = Packet::new(Code::AccessAccept, 5, [0; 16]);
        reply.push(attr::MESSAGE_AUTHENTICATOR, vec![0; 16]);
        reply.push(attr::REPLY_MESSAGE, b"hello".to_vec());
        let bytes = encode_response(&reply, &request_auth, SECRET).expect("encodes");
        assert_eq!(
            verify_reply(&bytes, &request_auth, SECRET),
            ReplyCheck::Verified {
                has_message_authenticator: true
            }
        );
        assert_eq!(
            verify_reply(&bytes, &request_auth, b"other"),
            ReplyCheck::BadResponseAuthenticator
        );
        assert_eq!(
            verify_reply(&bytes, &[8u8; 16], SECRET),
            ReplyCheck::BadResponseAuthenticator
        );
        let mut tampered = bytes.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(
            verify_reply(&tampered, &request_auth, SECRET),
            ReplyCheck::BadResponseAuthenticator
        );
    }

    fn signed_reply(request_auth: &[u8; 16]) -> Vec<u8> {
        let mut reply = Packet::new(Code::AccessAccept, 5, [0; 16]);
        reply.push(attr::MESSAGE_AUTHENTICATOR, vec![0; 16]);
        reply.push(attr::CLASS, b"class".to_vec());
        encode_response(&reply, request_auth, SECRET).expect("encodes")
    }

    #[test]
    fn a_length_field_below_the_header_is_dropped_not_a_panic() {
        let request_auth = [9u8; 16];
        for bad_len in [0u16, 1, 4, 19] {
            let mut bytes = signed_reply(&request_auth);
            bytes[2..4].copy_from_slice(&bad_len.to_be_bytes());
            assert_eq!(
                verify_reply(&bytes, &request_auth, SECRET),
                ReplyCheck::Malformed
            );
            assert_eq!(verify_request_message_authenticator(&bytes, SECRET), None);
            assert!(!verify_accounting_request(&bytes, SECRET));
        }
        let mut longer = signed_reply(&request_auth);
        let claimed = (longer.len() + 1) as u16;
        longer[2..4].copy_from_slice(&claimed.to_be_bytes());
        assert_eq!(
            verify_reply(&longer, &request_auth, SECRET),
            ReplyCheck::Malformed,
            "a Length beyond the datagram is dropped"
        );
    }

    #[test]
    fn accept_reply_requires_message_authenticator_only_when_asked() {
        let request_auth = [3u8; 16];
        let mut plain = Packet::new(Code::AccessAccept, 1, [0; 16]);
        plain.push(attr::CLASS, b"c".to_vec());
        let bytes = encode_response(&plain, &request_auth, SECRET).expect("encodes");
        assert!(accept_reply(&bytes, &request_auth, SECRET, false).is_ok());
        assert_eq!(
            accept_reply(&bytes, &request_auth, SECRET, true).map(|(p, _)| p),
            Err(Dropped::MissingMessageAuthenticator)
        );
        let signed = signed_reply(&request_auth);
        let (packet, has_ma) =
            accept_reply(&signed, &request_auth, SECRET, true).expect("signed reply accepted");
        assert!(has_ma);
        assert_eq!(packet.get(attr::CLASS), Some(&b"class"[..]));
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            /// Any datagram at all: every receive-side function returns, none panics.
            #[test]
            fn any_datagram_is_handled(bytes in proptest::collection::vec(any::<u8>(), 0..700),
                                       auth in any::<[u8; 16]>(), require in any::<bool>()) {
                let _ = accept_reply(&bytes, &auth, SECRET, require);
                let _ = Packet::decode(&bytes);
                let _ = verify_request_message_authenticator(&bytes, SECRET);
                let _ = verify_accounting_request(&bytes, SECRET);
                let _ = verify_dynauth_request(&bytes, SECRET);
            }

            /// A genuine signed reply with bytes overwritten anywhere (Length field, attribute
            /// lengths, Message-Authenticator) or cut short is never accepted as something else,
            /// and nothing panics.
            #[test]
            fn tampered_replies_are_dropped(edits in proptest::collection::vec((0usize..64, any::<u8>()), 1..6),
                                            cut in 0usize..64) {
                let request_auth = [9u8; 16];
                let genuine = signed_reply(&request_auth);
                let mut bytes = genuine.clone();
                for (at, value) in edits {
                    let at = at % bytes.len();
                    bytes[at] = value;
                }
                bytes.truncate(bytes.len().saturating_sub(cut % 8));
                if let Ok((packet, _)) = accept_reply(&bytes, &request_auth, SECRET, true) {
                    // Only edits that changed nothing the checks cover can pass.
                    let decoded = Packet::decode(&genuine).expect("genuine decodes");
                    prop_assert_eq!(packet.attributes, decoded.attributes);
                    prop_assert_eq!(packet.code, decoded.code);
                }
            }
        }
    }

    #[test]
    fn access_request_message_authenticator_verifies() {
        let mut p = Packet::new(Code::AccessRequest, 3, [4; 16]);
        p.push(attr::USER_NAME, b"alice".to_vec());
        let bytes = encode_access_request(&p, SECRET).expect("encodes");
        assert_eq!(
            verify_request_message_authenticator(&bytes, SECRET),
            Some(true)
        );
        assert_eq!(
            verify_request_message_authenticator(&bytes, b"wrong"),
            Some(false)
        );
    }

    #[test]
    fn dynauth_requests_verify_with_a_zero_authenticator_message_authenticator() {
        let mut p = Packet::new(Code::DisconnectRequest, 7, [0; 16]);
        p.push(attr::ACCT_SESSION_ID, b"abc".to_vec());
        let bytes = encode_dynauth_request(&p, SECRET).expect("encodes");
        assert_eq!(verify_dynauth_request(&bytes, SECRET), Some(true));
        assert_eq!(verify_dynauth_request(&bytes, b"wrong"), None);
        let mut tampered = bytes.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(verify_dynauth_request(&tampered, SECRET), None);
    }

    #[test]
    fn accounting_request_authenticator_verifies() {
        let mut p = Packet::new(Code::AccountingRequest, 3, [0; 16]);
        p.push_u32(attr::ACCT_STATUS_TYPE, 1);
        let (bytes, auth) = encode_accounting_request(&p, SECRET).expect("encodes");
        assert_eq!(bytes[4..20], auth);
        assert!(verify_accounting_request(&bytes, SECRET));
        assert!(!verify_accounting_request(&bytes, b"wrong"));
    }
}
