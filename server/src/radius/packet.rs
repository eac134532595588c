//! RADIUS packets (RFC 2865/2866/2869/5997/5176) on the design card's `radius` crate
//! (radius-rs): the crate decodes packets and attributes, encodes replies, reveals a received
//! User-Password, and computes and checks Response Authenticators. The requests the portal
//! sends ([`Request`]: Access-Request, Status-Server, Accounting-Request) are written straight
//! into their bytes here, User-Password hidden and the Accounting-Request's authenticator
//! computed here too (byte for byte what the crate wrote: tested). This module also adds what
//! the crate lacks and guards what it gets wrong (`toolchain.md`, "The radius crate"):
//!
//! - Message-Authenticator (HMAC-MD5, RFC 3579 §3.2) signing and verification for requests and
//!   replies, including RFC 5176 §3.3 (computed with a zero Request Authenticator);
//! - sizes checked before the crate's encoder (its u16 length arithmetic can wrap);
//! - the Length field checked before anything reads received bytes ([`declared_length`]);
//! - the receive-side decision for a datagram in one total function ([`accept_reply`]).
//!
//! Pure functions over bytes; no sockets, no clocks. Attribute values we do not interpret (Class
//! above all) are carried through byte for byte.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use radius::core::{avp::AVP, packet::Packet as WirePacket};
use std::net::{Ipv4Addr, Ipv6Addr};

pub use radius::core::code::Code;

/// Attribute type numbers, from the crate's dictionaries (RFC 2865, 2866, 2869, 3162, 5176, 6911).
pub mod attr {
    use radius::core::{rfc2865, rfc2866, rfc2869, rfc3162, rfc3576, rfc6911};
    pub const USER_NAME: u8 = rfc2865::USER_NAME_TYPE;
    pub const USER_PASSWORD: u8 = rfc2865::USER_PASSWORD_TYPE;
    pub const NAS_IP_ADDRESS: u8 = rfc2865::NAS_IP_ADDRESS_TYPE;
    pub const SERVICE_TYPE: u8 = rfc2865::SERVICE_TYPE_TYPE;
    pub const STATE: u8 = rfc2865::STATE_TYPE;
    pub const FRAMED_IP_ADDRESS: u8 = rfc2865::FRAMED_IP_ADDRESS_TYPE;
    pub const REPLY_MESSAGE: u8 = rfc2865::REPLY_MESSAGE_TYPE;
    pub const CLASS: u8 = rfc2865::CLASS_TYPE;
    pub const SESSION_TIMEOUT: u8 = rfc2865::SESSION_TIMEOUT_TYPE;
    pub const IDLE_TIMEOUT: u8 = rfc2865::IDLE_TIMEOUT_TYPE;
    pub const CALLING_STATION_ID: u8 = rfc2865::CALLING_STATION_ID_TYPE;
    pub const PROXY_STATE: u8 = rfc2865::PROXY_STATE_TYPE;
    pub const NAS_IDENTIFIER: u8 = rfc2865::NAS_IDENTIFIER_TYPE;
    pub const ACCT_STATUS_TYPE: u8 = rfc2866::ACCT_STATUS_TYPE_TYPE;
    pub const ACCT_DELAY_TIME: u8 = rfc2866::ACCT_DELAY_TIME_TYPE;
    pub const ACCT_SESSION_ID: u8 = rfc2866::ACCT_SESSION_ID_TYPE;
    pub const ACCT_AUTHENTIC: u8 = rfc2866::ACCT_AUTHENTIC_TYPE;
    pub const ACCT_SESSION_TIME: u8 = rfc2866::ACCT_SESSION_TIME_TYPE;
    pub const ACCT_TERMINATE_CAUSE: u8 = rfc2866::ACCT_TERMINATE_CAUSE_TYPE;
    pub const EVENT_TIMESTAMP: u8 = rfc2869::EVENT_TIMESTAMP_TYPE;
    pub const NAS_PORT_TYPE: u8 = rfc2865::NAS_PORT_TYPE_TYPE;
    pub const MESSAGE_AUTHENTICATOR: u8 = rfc2869::MESSAGE_AUTHENTICATOR_TYPE;
    pub const ACCT_INTERIM_INTERVAL: u8 = rfc2869::ACCT_INTERIM_INTERVAL_TYPE;
    pub const ERROR_CAUSE: u8 = rfc3576::ERROR_CAUSE_TYPE;
    pub const NAS_IPV6_ADDRESS: u8 = rfc3162::NAS_IPV6_ADDRESS_TYPE;
    pub const FRAMED_IPV6_ADDRESS: u8 = rfc6911::FRAMED_IPV6_ADDRESS_TYPE;
    /// Session identification attributes (RFC 5176 §3) the portal never gives its sessions:
    /// NAS-Port, Called-Station-Id, Acct-Multi-Session-Id, NAS-Port-Id,
    /// Chargeable-User-Identity, Framed-Interface-Id, Framed-IPv6-Prefix.
    pub const FOREIGN_SESSION_IDENTIFICATION: [u8; 7] = [5, 30, 50, 87, 89, 96, 97];
}

/// Largest RADIUS packet (RFC 2865 §3).
pub const MAX_PACKET: usize = 4096;
const HEADER: usize = 20;
/// Largest attribute value (one length octet, counting the two header octets).
const MAX_VALUE: usize = 253;
/// Largest User-Password the crate hides (RFC 2865 §5.2).
const MAX_PASSWORD: usize = 128;

/// Why bytes could not be read as, or a packet could not be turned into, a RADIUS packet.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PacketError {
    /// Shorter than the header or than its own length field, or a Length field outside
    /// 20..=4096; drop it.
    #[error("not a RADIUS packet (length)")]
    Truncated,
    /// The attributes do not parse (a length below 2 or past the packet); drop it.
    #[error("malformed attributes: {0}")]
    Malformed(String),
    /// Encoding would exceed 4096 bytes or an attribute value 253 bytes.
    #[error("packet too large")]
    TooLarge,
    /// A User-Password longer than 128 bytes.
    #[error("password longer than {MAX_PASSWORD} bytes")]
    PasswordTooLong,
    /// The crate refused to encode (an unknown code, for instance).
    #[error("cannot encode: {0}")]
    Encode(String),
}

/// A RADIUS packet: the crate's packet (which holds the shared secret it is encoded with) plus
/// the bookkeeping needed to check sizes before the crate's encoder runs.
#[derive(Clone, Debug)]
pub struct Packet {
    wire: WirePacket,
    /// Bytes the attributes take on the wire so far.
    attributes_len: usize,
    /// An attribute value longer than 253 bytes was added.
    oversized_value: bool,
}

/// The 20-byte header a request's authenticator is carried in.
fn header(code: u8, identifier: u8, authenticator: &[u8; 16]) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0] = code;
    h[1] = identifier;
    h[2..4].copy_from_slice(&(HEADER as u16).to_be_bytes());
    h[4..].copy_from_slice(authenticator);
    h
}

impl Packet {
    /// A packet without attributes, with the caller's authenticator (a request's random Request
    /// Authenticator is chosen by the transport so that retransmissions reuse it). The crate has
    /// no setter for the authenticator, so the packet is decoded from its bare header.
    pub fn new(code: Code, identifier: u8, authenticator: [u8; 16], secret: &[u8]) -> Self {
        let wire = WirePacket::decode(&header(code as u8, identifier, &authenticator), secret)
            .unwrap_or_else(|_| {
                // A well-formed 20-byte header always decodes; keep a packet of the right code
                // and identifier regardless (its authenticator is then random).
                WirePacket::new_with_identifier(code, secret, identifier)
            });
        Packet {
            wire,
            attributes_len: 0,
            oversized_value: false,
        }
    }

    /// The reply of code `code` to this request: same Identifier, the request's authenticator
    /// (the crate computes the Response Authenticator from it) and secret.
    pub fn reply(&self, code: Code) -> Packet {
        Packet {
            wire: self.wire.make_response_packet(code),
            attributes_len: 0,
            oversized_value: false,
        }
    }

    /// Reads a packet: Length checked first (20..=4096, within the datagram; bytes past it are
    /// padding, RFC 2865 §3), then the crate decodes the attributes.
    pub fn decode(bytes: &[u8], secret: &[u8]) -> Result<Packet, PacketError> {
        let len = declared_length(bytes).ok_or(PacketError::Truncated)?;
        let wire = WirePacket::decode(&bytes[..len], secret)
            .map_err(|e| PacketError::Malformed(e.to_string()))?;
        Ok(Packet {
            wire,
            attributes_len: len - HEADER,
            oversized_value: false,
        })
    }

    /// Packet code.
    pub fn code(&self) -> Code {
        self.wire.get_code()
    }

    /// Identifier.
    pub fn identifier(&self) -> u8 {
        self.wire.get_identifier()
    }

    /// The authenticator as held (a request's; for a reply made by [`Packet::reply`], the
    /// request's).
    pub fn authenticator(&self) -> [u8; 16] {
        let mut a = [0u8; 16];
        let held = self.wire.get_authenticator();
        if held.len() == 16 {
            a.copy_from_slice(held);
        }
        a
    }

    /// The User-Password of a received Access-Request, revealed (NUL padding removed).
    pub fn user_password(&self) -> Option<Vec<u8>> {
        let avp = self.wire.lookup(attr::USER_PASSWORD)?;
        avp.encode_user_password(self.wire.get_secret(), self.wire.get_authenticator())
            .ok()
    }

    /// First value of an attribute.
    pub fn get(&self, typ: u8) -> Option<Vec<u8>> {
        self.wire.lookup(typ).map(AVP::encode_bytes)
    }

    /// The types of the attributes it holds, each once, in type order.
    pub fn types(&self) -> Vec<u8> {
        (1..=u8::MAX)
            .filter(|typ| self.wire.lookup(*typ).is_some())
            .collect()
    }

    /// Every value of an attribute, in order.
    pub fn get_all(&self, typ: u8) -> Vec<Vec<u8>> {
        self.wire
            .lookup_all(typ)
            .into_iter()
            .map(AVP::encode_bytes)
            .collect()
    }

    /// First value of an attribute read as a 32-bit integer (None if absent or not 4 bytes).
    pub fn get_u32(&self, typ: u8) -> Option<u32> {
        self.wire.lookup(typ)?.encode_u32().ok()
    }

    /// First value of a text attribute (lossy UTF-8).
    pub fn get_text(&self, typ: u8) -> Option<String> {
        self.get(typ)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    /// The crate's encoding, after the size checks it does not do safely itself.
    fn encode_wire(&self) -> Result<Vec<u8>, PacketError> {
        if self.oversized_value || HEADER + self.attributes_len > MAX_PACKET {
            return Err(PacketError::TooLarge);
        }
        self.wire
            .encode()
            .map_err(|e| PacketError::Encode(e.to_string()))
    }
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

/// Where a packet's Message-Authenticator is.
#[derive(Debug, PartialEq, Eq)]
enum MessageAuthenticator {
    /// Not in the packet.
    Absent,
    /// Its value starts at this offset.
    At(usize),
    /// An attribute of its type with a length other than 18, or attributes that do not parse
    /// up to it: the packet is refused (never read as "without one").
    Malformed,
}

/// Finds the Message-Authenticator in encoded bytes.
fn find_message_authenticator(bytes: &[u8]) -> MessageAuthenticator {
    let Some(len) = declared_length(bytes) else {
        return MessageAuthenticator::Malformed;
    };
    let mut at = HEADER;
    while at + 2 <= len {
        let (typ, alen) = (bytes[at], bytes[at + 1] as usize);
        if alen < 2 || at + alen > len {
            return MessageAuthenticator::Malformed;
        }
        if typ == attr::MESSAGE_AUTHENTICATOR {
            return if alen == 18 {
                MessageAuthenticator::At(at + 2)
            } else {
                MessageAuthenticator::Malformed
            };
        }
        at += alen;
    }
    MessageAuthenticator::Absent
}

/// Offset of a well-formed Message-Authenticator value in encoded bytes (our own packets).
fn message_authenticator_offset(bytes: &[u8]) -> Option<usize> {
    match find_message_authenticator(bytes) {
        MessageAuthenticator::At(at) => Some(at),
        _ => None,
    }
}

fn hmac_md5(secret: &[u8], data: &[u8]) -> [u8; 16] {
    // HMAC accepts keys of any length, so new_from_slice cannot fail.
    #[allow(clippy::expect_used)]
    let mut mac = Hmac::<Md5>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn md5(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// Fills the Message-Authenticator value (if present) of encoded bytes: HMAC-MD5 over the packet
/// with `header_authenticator` in the header and the value zeroed (RFC 3579 §3.2). Leaves
/// `header_authenticator` in the header.
fn sign_message_authenticator(bytes: &mut [u8], secret: &[u8], header_authenticator: &[u8; 16]) {
    bytes[4..HEADER].copy_from_slice(header_authenticator);
    if let Some(at) = message_authenticator_offset(bytes) {
        bytes[at..at + 16].fill(0);
        let mac = hmac_md5(secret, bytes);
        bytes[at..at + 16].copy_from_slice(&mac);
    }
}

/// Signs the Message-Authenticator over `header_authenticator`, then stamps the MD5
/// authenticator over the signed bytes (reply: the request's authenticator; RFC 5176 request:
/// zero). The crate computes the same authenticator but cannot sign Message-Authenticator
/// first, which has to be inside that hash.
fn sign_then_authenticate(
    mut bytes: Vec<u8>,
    secret: &[u8],
    header_authenticator: &[u8; 16],
) -> Vec<u8> {
    sign_message_authenticator(&mut bytes, secret, header_authenticator);
    let auth = md5(&[&bytes, secret]);
    bytes[4..HEADER].copy_from_slice(&auth);
    bytes
}

/// A request the portal sends (Access-Request, Status-Server, Accounting-Request), built
/// straight into its wire bytes: the header, then each attribute as it is pushed. The crate's
/// packet kept each attribute in a vector of its own and copied the whole packet twice more to
/// compute an Accounting-Request's authenticator: about 2 % of the portal's CPU per journey.
/// Replies and received packets stay [`Packet`]s.
#[derive(Clone, Debug)]
pub struct Request<'s> {
    /// Header (its Length set at encoding) and attributes.
    bytes: Vec<u8>,
    secret: &'s [u8],
    /// An attribute value longer than 253 bytes was pushed (and left out): encoding fails.
    oversized_value: bool,
}

impl<'s> Request<'s> {
    /// A request without attributes, with the caller's authenticator (an Accounting-Request's
    /// is computed at encoding; pass zeros).
    pub fn new(code: Code, identifier: u8, authenticator: [u8; 16], secret: &'s [u8]) -> Self {
        let mut bytes = Vec::with_capacity(256);
        bytes.extend_from_slice(&header(code as u8, identifier, &authenticator));
        Request {
            bytes,
            secret,
            oversized_value: false,
        }
    }

    /// An Access-Request or Status-Server: Message-Authenticator is its first attribute (zero
    /// until [`encode_access_request`] signs it; first, as BlastRADIUS mitigations ask).
    pub fn access_request(
        code: Code,
        identifier: u8,
        authenticator: [u8; 16],
        secret: &'s [u8],
    ) -> Self {
        let mut request = Request::new(code, identifier, authenticator, secret);
        request.push(attr::MESSAGE_AUTHENTICATOR, [0u8; 16]);
        request
    }

    /// Appends User-Password hidden with the secret and this request's authenticator (RFC
    /// 2865 §5.2): NUL-padded to a multiple of 16 bytes, each block XORed with the MD5 of the
    /// secret and the block before it (the authenticator for the first).
    pub fn push_user_password(&mut self, password: &[u8]) -> Result<(), PacketError> {
        if password.len() > MAX_PASSWORD {
            return Err(PacketError::PasswordTooLong);
        }
        self.secret_given()?;
        let len = password.len().div_ceil(16).max(1) * 16;
        let mut hidden = [0u8; MAX_PASSWORD];
        hidden[..password.len()].copy_from_slice(password);
        let mut previous = self.authenticator();
        for block in hidden[..len].chunks_mut(16) {
            let key = md5(&[self.secret, &previous]);
            for (byte, k) in block.iter_mut().zip(key) {
                *byte ^= k;
            }
            previous.copy_from_slice(block);
        }
        self.push(attr::USER_PASSWORD, &hidden[..len]);
        Ok(())
    }

    /// The authenticator in the header (an Accounting-Request's is zero until encoded).
    pub fn authenticator(&self) -> [u8; 16] {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.bytes[4..HEADER]);
        a
    }

    /// First value of an attribute.
    pub fn get(&self, typ: u8) -> Option<Vec<u8>> {
        let mut at = HEADER;
        while at + 2 <= self.bytes.len() {
            let (t, len) = (self.bytes[at], usize::from(self.bytes[at + 1]));
            if t == typ {
                return Some(self.bytes[at + 2..at + len].to_vec());
            }
            at += len;
        }
        None
    }

    /// A request is hidden and signed with its server's shared secret: never with none (the
    /// configuration refuses an empty one; this is the last guard).
    fn secret_given(&self) -> Result<(), PacketError> {
        if self.secret.is_empty() {
            return Err(PacketError::Encode("no shared secret".into()));
        }
        Ok(())
    }

    /// The bytes with their Length set, after the checks: a shared secret, a code among
    /// `codes`, sizes.
    fn wire(&self, codes: &[Code]) -> Result<Vec<u8>, PacketError> {
        self.secret_given()?;
        let code = Code::from(self.bytes[0]);
        if !codes.contains(&code) {
            return Err(PacketError::Encode(format!(
                "not a request of this kind: {code:?}"
            )));
        }
        if self.oversized_value || self.bytes.len() > MAX_PACKET {
            return Err(PacketError::TooLarge);
        }
        let mut bytes = self.bytes.clone();
        let len = bytes.len() as u16;
        bytes[2..4].copy_from_slice(&len.to_be_bytes());
        Ok(bytes)
    }
}

/// Appending attributes, the same for a request being written ([`Request`]) and a reply
/// being built ([`Packet`]).
pub trait PushAttribute {
    /// Appends an attribute (a value over 253 bytes makes the packet unencodable).
    fn push(&mut self, typ: u8, value: impl AsRef<[u8]>);

    /// Appends a 32-bit integer attribute.
    fn push_u32(&mut self, typ: u8, value: u32) {
        self.push(typ, value.to_be_bytes());
    }

    /// Appends an IPv4 address attribute.
    fn push_ipv4(&mut self, typ: u8, value: Ipv4Addr) {
        self.push(typ, value.octets());
    }

    /// Appends an IPv6 address attribute.
    fn push_ipv6(&mut self, typ: u8, value: Ipv6Addr) {
        self.push(typ, value.octets());
    }
}

impl PushAttribute for Packet {
    fn push(&mut self, typ: u8, value: impl AsRef<[u8]>) {
        let value = value.as_ref();
        self.oversized_value |= value.len() > MAX_VALUE;
        self.attributes_len += 2 + value.len();
        self.wire.add(AVP::from_bytes(typ, value));
    }
}

impl PushAttribute for Request<'_> {
    fn push(&mut self, typ: u8, value: impl AsRef<[u8]>) {
        let value = value.as_ref();
        if value.len() > MAX_VALUE {
            self.oversized_value = true;
            return;
        }
        self.bytes.push(typ);
        self.bytes.push((value.len() + 2) as u8);
        self.bytes.extend_from_slice(value);
    }
}

/// Encodes an Access-Request or Status-Server (built by [`Request::access_request`], which
/// puts the Message-Authenticator first): the authenticator as chosen, the
/// Message-Authenticator signed (appended last to a request built without one).
pub fn encode_access_request(request: &Request<'_>) -> Result<Vec<u8>, PacketError> {
    let appended;
    let request = if request.get(attr::MESSAGE_AUTHENTICATOR).is_some() {
        request
    } else {
        let mut with = request.clone();
        with.push(attr::MESSAGE_AUTHENTICATOR, [0u8; 16]);
        appended = with;
        &appended
    };
    let mut bytes = request.wire(&[Code::AccessRequest, Code::StatusServer])?;
    sign_message_authenticator(&mut bytes, request.secret, &request.authenticator());
    Ok(bytes)
}

/// Encodes an Accounting-Request: its Request Authenticator is the MD5 of the packet with a
/// zero one and the secret (RFC 2866 §3). Returns the bytes and the authenticator sent (needed
/// to verify the response).
pub fn encode_accounting_request(
    request: &Request<'_>,
) -> Result<(Vec<u8>, [u8; 16]), PacketError> {
    let mut bytes = request.wire(&[Code::AccountingRequest])?;
    bytes[4..HEADER].fill(0);
    let auth = md5(&[&bytes, request.secret]);
    bytes[4..HEADER].copy_from_slice(&auth);
    Ok((bytes, auth))
}

/// Encodes a reply made by [`Packet::reply`]: without Message-Authenticator the crate computes
/// the Response Authenticator; with one, it is signed over the request's authenticator first.
pub fn encode_response(packet: &Packet) -> Result<Vec<u8>, PacketError> {
    let bytes = packet.encode_wire()?;
    if packet.get(attr::MESSAGE_AUTHENTICATOR).is_none() {
        return Ok(bytes);
    }
    Ok(sign_then_authenticate(
        bytes,
        packet.wire.get_secret(),
        &packet.authenticator(),
    ))
}

/// Encodes a CoA-Request or Disconnect-Request as a server sends it (tests, tools): a
/// Message-Authenticator (added last if absent) signed with a zero Request Authenticator, then
/// the Request Authenticator as for accounting (RFC 5176 §3.3, §2.3).
pub fn encode_dynauth_request(packet: &Packet) -> Result<Vec<u8>, PacketError> {
    let mut p = packet.clone();
    if p.get(attr::MESSAGE_AUTHENTICATOR).is_none() {
        p.push(attr::MESSAGE_AUTHENTICATOR, [0u8; 16]);
    }
    let bytes = p.encode_wire()?;
    Ok(sign_then_authenticate(bytes, p.wire.get_secret(), &[0; 16]))
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

/// Verifies a reply's Response Authenticator (by the crate, on the bytes cut to their Length)
/// and Message-Authenticator (over the request's authenticator) (RFC 2865 §3, RFC 3579 §3.2).
/// An Accounting-Response's Message-Authenticator is defined by no RFC but RFC 5997's (to a
/// Status-Server: over the request's authenticator); FreeRADIUS signs one to an
/// Accounting-Request over 16 zero octets, as its requests: either is taken (the RADIUS
/// review's M1: such replies were dropped, every Start and Stop never acknowledged) — the
/// Response Authenticator, over the whole reply with the secret, has verified it already.
pub fn verify_reply(bytes: &[u8], request_authenticator: &[u8; 16], secret: &[u8]) -> ReplyCheck {
    let Some(len) = declared_length(bytes) else {
        return ReplyCheck::Malformed;
    };
    let bytes = &bytes[..len];
    let request = header(0, 0, request_authenticator);
    if !WirePacket::is_authentic_response(bytes, &request, secret) {
        return ReplyCheck::BadResponseAuthenticator;
    }
    match find_message_authenticator(bytes) {
        MessageAuthenticator::Absent => ReplyCheck::Verified {
            has_message_authenticator: false,
        },
        MessageAuthenticator::Malformed => ReplyCheck::BadMessageAuthenticator,
        MessageAuthenticator::At(at) => {
            let mut scratch = bytes.to_vec();
            scratch[at..at + 16].fill(0);
            let mut signed_over = |vector: &[u8; 16]| {
                scratch[4..HEADER].copy_from_slice(vector);
                hmac_md5(secret, &scratch)[..] == bytes[at..at + 16]
            };
            if signed_over(request_authenticator)
                || (bytes[0] == Code::AccountingResponse as u8 && signed_over(&[0; 16]))
            {
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
    /// Verified, but its code does not answer the request (an Access-Accept or a proxy's
    /// Protocol-Error to an Accounting-Request): no answer to it (RFC 2865 §3, RFC 2866 §4),
    /// and none will come — the request ends as its server's failure.
    NotAnAnswer {
        /// The reply's code.
        code: u8,
        /// The request's.
        request: u8,
    },
}

/// A RADIUS code's name, for the log (its number when unknown).
fn code_name(code: u8) -> std::borrow::Cow<'static, str> {
    match name_of(code) {
        Some(name) => format!("{name} ({code})").into(),
        None => format!("code {code}").into(),
    }
}

/// A packet code as the RFCs name it (`radius test`'s output: black-box tester V's D1).
pub fn code_text(code: Code) -> std::borrow::Cow<'static, str> {
    let number = code as u8;
    name_of(number).map_or_else(|| format!("code {number}").into(), Into::into)
}

/// A RADIUS code's name as the RFCs write it (none when unknown).
fn name_of(code: u8) -> Option<&'static str> {
    Some(match code {
        1 => "Access-Request",
        2 => "Access-Accept",
        3 => "Access-Reject",
        4 => "Accounting-Request",
        5 => "Accounting-Response",
        11 => "Access-Challenge",
        12 => "Status-Server",
        13 => "Status-Client",
        40 => "Disconnect-Request",
        41 => "Disconnect-ACK",
        42 => "Disconnect-NAK",
        43 => "CoA-Request",
        44 => "CoA-ACK",
        45 => "CoA-NAK",
        52 => "Protocol-Error",
        _ => return None,
    })
}

/// Whether a reply of code `reply` answers a request of code `request`: Access-Accept, -Reject
/// or -Challenge an Access-Request, Accounting-Response an Accounting-Request. A Status-Server
/// takes any (the prober and `radius test` say what each means).
pub fn answers(request: u8, reply: u8) -> bool {
    match request {
        1 => matches!(reply, 2 | 3 | 11),
        4 => reply == 5,
        _ => true,
    }
}

/// What the log says of a dropped reply: a sentence, not the variant's name.
impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dropped::Check(ReplyCheck::BadResponseAuthenticator) => f.write_str(
                "its Response Authenticator does not verify (the server has another shared secret, or it is forged)",
            ),
            Dropped::Check(ReplyCheck::BadMessageAuthenticator) => f.write_str(
                "its Message-Authenticator does not verify (the server has another shared secret, or it is forged)",
            ),
            Dropped::Check(ReplyCheck::Malformed) => f.write_str(
                "not a RADIUS packet (its Length is outside 20-4096 or beyond the datagram)",
            ),
            Dropped::Check(ReplyCheck::Verified { .. }) => f.write_str("verified"),
            Dropped::MissingMessageAuthenticator => {
                f.write_str("no Message-Authenticator although the server must send one")
            }
            Dropped::Undecodable(e) => write!(f, "its attributes cannot be read: {e}"),
            Dropped::NotAnAnswer { code, request } => {
                write!(
                    f,
                    "its code, {}, does not answer an {}",
                    code_name(*code),
                    code_name(*request)
                )?;
                if *code == 52 {
                    f.write_str(" (a proxy's Protocol-Error: it could not pass the request on)")?;
                }
                Ok(())
            }
        }
    }
}

/// The whole receive-side decision for one datagram, a reply to a `request` (its code and
/// Request Authenticator): verified (Response Authenticator, Message-Authenticator when present
/// or required), of a code that answers the request ([`answers`]), and decoded — or why it is
/// dropped. Total
/// over any bytes: never panics (fuzzed in the tests below).
pub fn accept_reply(
    bytes: &[u8],
    (request, request_authenticator): (u8, &[u8; 16]),
    secret: &[u8],
    require_message_authenticator: bool,
) -> Result<(Packet, bool), Dropped> {
    match verify_reply(bytes, request_authenticator, secret) {
        ReplyCheck::Verified {
            has_message_authenticator,
        } => {
            if !answers(request, bytes[0]) {
                return Err(Dropped::NotAnAnswer {
                    code: bytes[0],
                    request,
                });
            }
            if require_message_authenticator && !has_message_authenticator {
                return Err(Dropped::MissingMessageAuthenticator);
            }
            let packet = Packet::decode(bytes, secret).map_err(Dropped::Undecodable)?;
            Ok((packet, has_message_authenticator))
        }
        // The Response Authenticator verified, so the secret is right: attributes that do not
        // parse up to the Message-Authenticator are the reply's fault, and said as such.
        ReplyCheck::BadMessageAuthenticator => match Packet::decode(bytes, secret) {
            Err(e) => Err(Dropped::Undecodable(e)),
            Ok(_) => Err(Dropped::Check(ReplyCheck::BadMessageAuthenticator)),
        },
        other => Err(Dropped::Check(other)),
    }
}

/// Verifies a received request's Message-Authenticator (server side). `None` if absent.
pub fn verify_request_message_authenticator(bytes: &[u8], secret: &[u8]) -> Option<bool> {
    let at = match find_message_authenticator(bytes) {
        MessageAuthenticator::Absent => return None,
        MessageAuthenticator::Malformed => return Some(false),
        MessageAuthenticator::At(at) => at,
    };
    let len = declared_length(bytes)?;
    let mut scratch = bytes[..len].to_vec();
    scratch[at..at + 16].fill(0);
    Some(hmac_md5(secret, &scratch)[..] == bytes[at..at + 16])
}

/// Verifies the Request Authenticator of a received Accounting-Request, CoA-Request or
/// Disconnect-Request (by the crate; RFC 2866 §3, RFC 5176 §2.3). Any other code is refused: the
/// crate's check says yes to every Access-Request.
pub fn verify_accounting_request(bytes: &[u8], secret: &[u8]) -> bool {
    let Some(len) = declared_length(bytes) else {
        return false;
    };
    matches!(
        Code::from(bytes[0]),
        Code::AccountingRequest | Code::DisconnectRequest | Code::CoARequest
    ) && WirePacket::is_authentic_request(&bytes[..len], secret)
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
    match find_message_authenticator(bytes) {
        MessageAuthenticator::Absent => Some(false),
        MessageAuthenticator::Malformed => None,
        MessageAuthenticator::At(at) => {
            let mut scratch = bytes.to_vec();
            scratch[4..HEADER].fill(0);
            scratch[at..at + 16].fill(0);
            (hmac_md5(secret, &scratch)[..] == bytes[at..at + 16]).then_some(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"testing123";

    use crate::hex;

    /// An Access-Request built without its Message-Authenticator gets one appended, signed:
    /// the same bytes as one built with it there, at the same place.
    #[test]
    fn an_access_request_without_a_message_authenticator_gets_one_signed() {
        let auth: [u8; 16] = core::array::from_fn(|i| i as u8 + 3);
        let mut bare = Request::new(Code::AccessRequest, 4, auth, SECRET);
        bare.push(attr::USER_NAME, b"alice");
        let mut built = Request::new(Code::AccessRequest, 4, auth, SECRET);
        built.push(attr::USER_NAME, b"alice");
        built.push(attr::MESSAGE_AUTHENTICATOR, [0u8; 16]);
        let bytes = encode_access_request(&bare).expect("encodes");
        assert_eq!(bytes, encode_access_request(&built).expect("encodes"));
        assert_eq!(
            verify_request_message_authenticator(&bytes, SECRET),
            Some(true)
        );
        assert!(
            bare.get(attr::MESSAGE_AUTHENTICATOR).is_none(),
            "the packet is unchanged"
        );
    }

    /// The bytes every kind of packet had on the wire with the hand-written codec this module
    /// replaced (recorded from it with these inputs): neither moving to the crate nor writing
    /// the requests ourselves again changed any of them.
    #[test]
    fn wire_bytes_are_those_of_the_previous_codec() {
        let auth: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
        let mut p = Request::access_request(Code::AccessRequest, 7, auth, SECRET);
        p.push(attr::USER_NAME, b"alice");
        p.push_user_password(b"correct horse battery")
            .expect("fits");
        p.push_ipv4(attr::NAS_IP_ADDRESS, Ipv4Addr::new(127, 0, 0, 1));
        p.push(attr::NAS_IDENTIFIER, b"portal");
        p.push_u32(attr::NAS_PORT_TYPE, 5);
        p.push(attr::CALLING_STATION_ID, b"192.0.2.10");
        p.push_ipv4(attr::FRAMED_IP_ADDRESS, Ipv4Addr::new(192, 0, 2, 10));
        assert_eq!(
            hex(&encode_access_request(&p).expect("encodes")),
            "010700750102030405060708090a0b0c0d0e0f1050126f1469f1fe018deea8fdd0af00e69ed70107616c6963650222f053832040a302b730be86ecbfaeab776759f857588e6a505a9a174cbae8a80504067f0000012008706f7274616c3d06000000051f0c3139322e302e322e31300806c000020a"
        );
        let s = Request::access_request(Code::StatusServer, 9, [2; 16], SECRET);
        assert_eq!(
            hex(&encode_access_request(&s).expect("encodes")),
            "0c090026020202020202020202020202020202025012123e49c152a17bb52f0f216555005e3d"
        );
        let mut a = Request::new(Code::AccountingRequest, 11, [0; 16], SECRET);
        a.push_u32(attr::ACCT_STATUS_TYPE, 2);
        a.push(attr::ACCT_SESSION_ID, b"0123456789abcdef");
        a.push(attr::CLASS, [0, 255, 1]);
        a.push_u32(attr::ACCT_TERMINATE_CAUSE, 6);
        let (bytes, sent_auth) = encode_accounting_request(&a).expect("encodes");
        assert_eq!(
            hex(&bytes),
            "040b0037ca2f47de91bf9c8b02aa608affd3fde12806000000022c1230313233343536373839616263646566190500ff01310600000006"
        );
        assert_eq!(sent_auth[..], bytes[4..20]);
        let request = Packet::new(Code::AccessRequest, 7, auth, SECRET);
        let mut r = request.reply(Code::AccessAccept);
        r.push(attr::MESSAGE_AUTHENTICATOR, [0; 16]);
        r.push(attr::REPLY_MESSAGE, b"hello");
        r.push(attr::CLASS, b"class");
        assert_eq!(
            hex(&encode_response(&r).expect("encodes")),
            "020700347f9648a8b58e9ec044902a0509f01ace5012c6f71b0065605ff1b88a46030821f7dd120768656c6c6f1907636c617373"
        );
        let acct = Packet::new(Code::AccountingRequest, 11, [5; 16], SECRET);
        assert_eq!(
            hex(&encode_response(&acct.reply(Code::AccountingResponse)).expect("encodes")),
            "050b00146126c704eb15230cf43673252633a55f"
        );
        let mut d = Packet::new(Code::DisconnectRequest, 77, [0; 16], SECRET);
        d.push(attr::ACCT_SESSION_ID, b"abc");
        assert_eq!(
            hex(&encode_dynauth_request(&d).expect("encodes")),
            "284d002b9bcf11e3f1ad1b8b88c9f642972165812c0561626350127c1c4518ba0ddfb3d0561a7236b02c96"
        );
        let disconnect = Packet::new(Code::DisconnectRequest, 77, [6; 16], SECRET);
        let mut n = disconnect.reply(Code::DisconnectNAK);
        n.push(attr::MESSAGE_AUTHENTICATOR, [0; 16]);
        n.push_u32(attr::ERROR_CAUSE, 503);
        assert_eq!(
            hex(&encode_response(&n).expect("encodes")),
            "2a4d002c316beee8eca1b3742adc60226b3db6ae5012ac7da331088d9e8300530166c521b9666506000001f7"
        );
    }

    #[test]
    fn hidden_password_round_trips_for_every_length() {
        let auth = [7u8; 16];
        for len in [0usize, 1, 15, 16, 17, 32, 100, 128] {
            let pw: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let mut p = Request::access_request(Code::AccessRequest, 1, auth, SECRET);
            p.push_user_password(&pw).expect("fits");
            let hidden = p.get(attr::USER_PASSWORD).expect("present");
            assert_eq!(hidden.len(), len.div_ceil(16).max(1) * 16, "{len}");
            if len > 0 {
                assert_ne!(hidden[..len.min(16)], pw[..len.min(16)]);
            }
            let received = Packet::decode(&encode_access_request(&p).expect("encodes"), SECRET)
                .expect("decodes");
            assert_eq!(received.user_password(), Some(pw));
        }
        let mut p = Request::access_request(Code::AccessRequest, 1, auth, SECRET);
        assert_eq!(
            p.push_user_password(&[b'x'; 129]),
            Err(PacketError::PasswordTooLong)
        );
    }

    #[test]
    fn hidden_password_matches_rfc2865_example() {
        // RFC 2865 §7.1 example: secret "xyzzy5461", password "arctangent".
        let auth: [u8; 16] = [
            0x0f, 0x40, 0x3f, 0x94, 0x73, 0x97, 0x80, 0x57, 0xbd, 0x83, 0xd5, 0xcb, 0x98, 0xf4,
            0x22, 0x7a,
        ];
        let mut p = Request::new(Code::AccessRequest, 0, auth, b"xyzzy5461");
        p.push_user_password(b"arctangent").expect("fits");
        let expected = [
            0x0d, 0xbe, 0x70, 0x8d, 0x93, 0xd4, 0x13, 0xce, 0x31, 0x96, 0xe4, 0x3f, 0x78, 0x2a,
            0x0a, 0xee,
        ];
        assert_eq!(p.get(attr::USER_PASSWORD), Some(expected.to_vec()));
    }

    #[test]
    fn decode_reads_what_encode_wrote() {
        let request = Packet::new(Code::AccessRequest, 42, [1; 16], SECRET);
        let mut p = request.reply(Code::AccessAccept);
        p.push(attr::CLASS, [0, 255, 1, 2]);
        p.push_u32(attr::SESSION_TIMEOUT, 30);
        let decoded = Packet::decode(&encode_response(&p).expect("small packet encodes"), SECRET)
            .expect("decodes");
        assert_eq!(decoded.code(), Code::AccessAccept);
        assert_eq!(decoded.identifier(), 42);
        assert_eq!(decoded.get_all(attr::CLASS), vec![vec![0, 255, 1, 2]]);
        assert_eq!(decoded.get_u32(attr::SESSION_TIMEOUT), Some(30));
    }

    #[test]
    fn oversized_packets_are_refused_before_the_crate_encodes_them() {
        let mut p = Request::new(Code::AccountingRequest, 1, [0; 16], SECRET);
        p.push(attr::CLASS, [1u8; 254]);
        assert_eq!(encode_accounting_request(&p), Err(PacketError::TooLarge));
        // 300 values of 253 bytes: 76,500 bytes, past what the crate's u16 sum survives.
        let mut p = Request::new(Code::AccountingRequest, 1, [0; 16], SECRET);
        for _ in 0..300 {
            p.push(attr::CLASS, [1u8; 253]);
        }
        assert_eq!(encode_accounting_request(&p), Err(PacketError::TooLarge));
        let mut p = Request::new(Code::AccountingRequest, 1, [0; 16], SECRET);
        for _ in 0..15 {
            p.push(attr::CLASS, [1u8; 253]);
        }
        assert!(encode_accounting_request(&p).is_ok(), "3,845 bytes fit");
        p.push(attr::CLASS, [1u8; 253]);
        assert_eq!(encode_accounting_request(&p), Err(PacketError::TooLarge));
        // Exactly 4,096 bytes fit; one more does not.
        for (value, fits) in [(249usize, true), (250, false)] {
            let mut p = Request::new(Code::AccountingRequest, 1, [0; 16], SECRET);
            for _ in 0..15 {
                p.push(attr::CLASS, [1u8; 253]);
            }
            p.push(attr::CLASS, vec![2u8; value]);
            let encoded = encode_accounting_request(&p);
            assert_eq!(encoded.is_ok(), fits, "{value}");
            if let Ok((bytes, _)) = encoded {
                assert_eq!(bytes.len(), MAX_PACKET);
            }
        }
    }

    /// What the crate writes for the same request, with its own authenticator: every kind of
    /// attribute the portal's accounting sends, IPv6 addresses and several Class values (one
    /// empty) included.
    #[test]
    fn accounting_requests_are_the_bytes_the_crate_writes() {
        let mut ours = Request::new(Code::AccountingRequest, 200, [0; 16], SECRET);
        let mut crates = Packet::new(Code::AccountingRequest, 200, [0; 16], SECRET);
        let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
        for (typ, value) in [
            (attr::ACCT_STATUS_TYPE, 2u32.to_be_bytes().to_vec()),
            (
                attr::ACCT_SESSION_ID,
                b"0190a1b2c3d4e5f60718293a4b5c6d7e".to_vec(),
            ),
            (attr::USER_NAME, b"alice@example".to_vec()),
            (attr::NAS_IPV6_ADDRESS, v6.octets().to_vec()),
            (attr::CALLING_STATION_ID, b"2001:db8::10".to_vec()),
            (attr::FRAMED_IPV6_ADDRESS, v6.octets().to_vec()),
            (attr::CLASS, vec![0, 255, 1]),
            (attr::CLASS, Vec::new()),
            (attr::CLASS, vec![7; 253]),
            (attr::ACCT_SESSION_TIME, 3_600u32.to_be_bytes().to_vec()),
            (attr::ACCT_TERMINATE_CAUSE, 6u32.to_be_bytes().to_vec()),
        ] {
            ours.push(typ, &value);
            crates.push(typ, &value);
        }
        let (bytes, auth) = encode_accounting_request(&ours).expect("encodes");
        assert_eq!(
            hex(&bytes),
            hex(&crates.encode_wire().expect("the crate encodes"))
        );
        assert_eq!(auth[..], bytes[4..20]);
        assert!(verify_accounting_request(&bytes, SECRET));
    }

    #[test]
    fn requests_need_a_secret_and_their_own_encoder() {
        let mut p = Request::access_request(Code::AccessRequest, 1, [1; 16], b"");
        assert!(matches!(
            p.push_user_password(b"pw"),
            Err(PacketError::Encode(_))
        ));
        assert!(matches!(
            encode_access_request(&p),
            Err(PacketError::Encode(_))
        ));
        let a = Request::new(Code::AccountingRequest, 1, [0; 16], SECRET);
        assert!(matches!(
            encode_access_request(&a),
            Err(PacketError::Encode(_))
        ));
        let r = Request::access_request(Code::AccessRequest, 1, [1; 16], SECRET);
        assert!(matches!(
            encode_accounting_request(&r),
            Err(PacketError::Encode(_))
        ));
    }

    #[test]
    fn malformed_packets_are_errors_not_panics() {
        assert_eq!(
            Packet::decode(&[1, 2, 3], SECRET).map(|_| ()),
            Err(PacketError::Truncated)
        );
        let request = Packet::new(Code::AccessRequest, 1, [0; 16], SECRET);
        let mut bytes = encode_response(&request.reply(Code::AccessAccept)).expect("encodes");
        bytes[3] = 10;
        assert_eq!(
            Packet::decode(&bytes, SECRET).map(|_| ()),
            Err(PacketError::Truncated)
        );
        let mut p = request.reply(Code::AccessAccept);
        p.push(attr::CLASS, [1, 2, 3]);
        let mut bytes = encode_response(&p).expect("encodes");
        bytes[21] = 40; // attribute length past the end
        assert!(matches!(
            Packet::decode(&bytes, SECRET),
            Err(PacketError::Malformed(_))
        ));
        bytes[21] = 1; // attribute length below 2
        assert!(matches!(
            Packet::decode(&bytes, SECRET),
            Err(PacketError::Malformed(_))
        ));
    }

    fn signed_reply(request_auth: &[u8; 16]) -> Vec<u8> {
        let request = Packet::new(Code::AccessRequest, 5, *request_auth, SECRET);
        let mut reply = request.reply(Code::AccessAccept);
        reply.push(attr::MESSAGE_AUTHENTICATOR, [0; 16]);
        reply.push(attr::CLASS, b"class");
        encode_response(&reply).expect("encodes")
    }

    #[test]
    fn a_malformed_message_authenticator_is_refused_not_taken_as_absent() {
        // A reply whose Response Authenticator is right (whoever knows the secret… or a
        // server bug) but whose Message-Authenticator attribute is 10 bytes long.
        let request_auth = [9u8; 16];
        let mut bytes = vec![2u8, 5, 0, 0];
        bytes.extend_from_slice(&[0u8; 16]);
        bytes.extend_from_slice(&[attr::MESSAGE_AUTHENTICATOR, 10, 1, 2, 3, 4, 5, 6, 7, 8]);
        let len = bytes.len() as u16;
        bytes[2..4].copy_from_slice(&len.to_be_bytes());
        let authenticator = md5(&[&bytes[..4], &request_auth, &bytes[HEADER..], SECRET]);
        bytes[4..HEADER].copy_from_slice(&authenticator);
        assert_eq!(
            verify_reply(&bytes, &request_auth, SECRET),
            ReplyCheck::BadMessageAuthenticator
        );
        assert!(accept_reply(&bytes, (1, &request_auth), SECRET, false).is_err());
        assert_eq!(
            verify_request_message_authenticator(&bytes, SECRET),
            Some(false)
        );
    }

    #[test]
    fn broken_attributes_before_the_message_authenticator_are_said_to_be_malformed() {
        // The Response Authenticator right, an attribute of length 0 (then 1, then one running
        // past the end) ahead of the Message-Authenticator: not the secret's fault.
        let request_auth = [9u8; 16];
        for broken in [
            &[attr::CLASS, 0][..],
            &[attr::CLASS, 1],
            &[attr::CLASS, 40, 1],
        ] {
            let mut bytes = vec![2u8, 5, 0, 0];
            bytes.extend_from_slice(&[0u8; 16]);
            bytes.extend_from_slice(broken);
            bytes.extend_from_slice(&[attr::MESSAGE_AUTHENTICATOR, 18]);
            bytes.extend_from_slice(&[0u8; 16]);
            let len = bytes.len() as u16;
            bytes[2..4].copy_from_slice(&len.to_be_bytes());
            let authenticator = md5(&[&bytes[..4], &request_auth, &bytes[HEADER..], SECRET]);
            bytes[4..HEADER].copy_from_slice(&authenticator);
            let why = accept_reply(&bytes, (1, &request_auth), SECRET, false).expect_err("dropped");
            assert!(matches!(why, Dropped::Undecodable(_)), "{broken:?}: {why}");
            assert!(!why.to_string().contains("shared secret"), "{why}");
        }
    }

    #[test]
    fn signed_reply_verifies_and_tampering_is_detected() {
        let request_auth = [9u8; 16];
        let bytes = signed_reply(&request_auth);
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
        // The log says why in words (it used to print `Check(BadResponseAuthenticator)`).
        let why = accept_reply(&bytes, (1, &request_auth), b"other", true).expect_err("dropped");
        assert!(why.to_string().contains("another shared secret"), "{why}");
    }

    /// An Accounting-Response signed as FreeRADIUS signs one (its Message-Authenticator over
    /// 16 zero octets, the Response Authenticator over the request's) is an answer; an
    /// Access-Accept signed so is not, nor an Accounting-Response whose signature is wrong.
    #[test]
    fn an_accounting_response_signed_over_zeros_is_taken() {
        let request_auth = [9u8; 16];
        let over_zeros = |code: Code, tamper: bool| {
            let request = Packet::new(Code::AccountingRequest, 5, request_auth, SECRET);
            let mut reply = request.reply(code);
            reply.push(attr::MESSAGE_AUTHENTICATOR, [0; 16]);
            let mut bytes = encode_response(&reply).expect("encodes");
            sign_message_authenticator(&mut bytes, SECRET, &[0; 16]);
            if tamper {
                let last = bytes.len() - 1;
                bytes[last] ^= 1;
            }
            bytes[4..HEADER].copy_from_slice(&request_auth);
            let auth = md5(&[&bytes, SECRET]);
            bytes[4..HEADER].copy_from_slice(&auth);
            bytes
        };
        assert_eq!(
            verify_reply(
                &over_zeros(Code::AccountingResponse, false),
                &request_auth,
                SECRET
            ),
            ReplyCheck::Verified {
                has_message_authenticator: true
            }
        );
        assert_eq!(
            verify_reply(
                &over_zeros(Code::AccountingResponse, true),
                &request_auth,
                SECRET
            ),
            ReplyCheck::BadMessageAuthenticator
        );
        assert_eq!(
            verify_reply(
                &over_zeros(Code::AccessAccept, false),
                &request_auth,
                SECRET
            ),
            ReplyCheck::BadMessageAuthenticator
        );
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
            // Unreadable is "bad", never "absent" (which a caller could accept).
            assert_eq!(
                verify_request_message_authenticator(&bytes, SECRET),
                Some(false)
            );
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

    /// A genuine reply whose code does not answer the request is no answer: an Access-Accept
    /// or a proxy's Protocol-Error to an Accounting-Request, an Accounting-Response to an
    /// Access-Request; the log names both codes.
    #[test]
    fn a_signed_reply_of_the_wrong_kind_is_no_answer() {
        let request_auth = [4u8; 16];
        let request = Packet::new(Code::AccountingRequest, 1, request_auth, SECRET);
        let reply = |code: Code| encode_response(&request.reply(code)).expect("encodes");
        let accounting = (Code::AccountingRequest as u8, &request_auth);
        assert!(accept_reply(&reply(Code::AccountingResponse), accounting, SECRET, false).is_ok());
        let why = accept_reply(&reply(Code::AccessAccept), accounting, SECRET, false)
            .map(|_| ())
            .expect_err("dropped");
        assert_eq!(
            why,
            Dropped::NotAnAnswer {
                code: 2,
                request: 4
            }
        );
        assert_eq!(
            why.to_string(),
            "its code, Access-Accept (2), does not answer an Accounting-Request (4)"
        );
        let mut protocol_error = reply(Code::AccountingResponse);
        protocol_error[0] = 52;
        let authenticator = md5(&[
            &protocol_error[..4],
            &request_auth,
            &protocol_error[HEADER..],
            SECRET,
        ]);
        protocol_error[4..HEADER].copy_from_slice(&authenticator);
        let why = accept_reply(&protocol_error, accounting, SECRET, false)
            .map(|_| ())
            .expect_err("dropped");
        assert!(
            why.to_string().contains("Protocol-Error (52)")
                && why.to_string().contains("could not pass the request on"),
            "{why}"
        );
        let access = (Code::AccessRequest as u8, &request_auth);
        for answer in [
            Code::AccessAccept,
            Code::AccessReject,
            Code::AccessChallenge,
        ] {
            assert!(
                accept_reply(&reply(answer), access, SECRET, false).is_ok(),
                "{answer:?}"
            );
        }
        assert!(accept_reply(&reply(Code::AccountingResponse), access, SECRET, false).is_err());
        let status = (Code::StatusServer as u8, &request_auth);
        assert!(accept_reply(&reply(Code::AccountingResponse), status, SECRET, false).is_ok());
        assert!(accept_reply(&reply(Code::AccessAccept), status, SECRET, false).is_ok());
    }

    #[test]
    fn accept_reply_requires_message_authenticator_only_when_asked() {
        let request_auth = [3u8; 16];
        let request = Packet::new(Code::AccessRequest, 1, request_auth, SECRET);
        let mut plain = request.reply(Code::AccessAccept);
        plain.push(attr::CLASS, b"c");
        let bytes = encode_response(&plain).expect("encodes");
        assert!(accept_reply(&bytes, (1, &request_auth), SECRET, false).is_ok());
        assert_eq!(
            accept_reply(&bytes, (1, &request_auth), SECRET, true).map(|_| ()),
            Err(Dropped::MissingMessageAuthenticator)
        );
        let signed = signed_reply(&request_auth);
        let (packet, has_ma) =
            accept_reply(&signed, (1, &request_auth), SECRET, true).expect("signed reply accepted");
        assert!(has_ma);
        assert_eq!(packet.get(attr::CLASS), Some(b"class".to_vec()));
    }

    #[test]
    fn the_crates_yes_to_every_access_request_is_not_taken_as_authentic() {
        let p = Request::access_request(Code::AccessRequest, 1, [1; 16], SECRET);
        let bytes = encode_access_request(&p).expect("encodes");
        assert!(!verify_accounting_request(&bytes, b"any secret at all"));
        assert_eq!(verify_dynauth_request(&bytes, SECRET), None);
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(4000)))]

            /// Any datagram at all: every receive-side function returns, none panics.
            #[test]
            fn any_datagram_is_handled(bytes in proptest::collection::vec(any::<u8>(), 0..700),
                                       auth in any::<[u8; 16]>(), require in any::<bool>(),
                                       request in any::<u8>()) {
                let _ = accept_reply(&bytes, (request, &auth), SECRET, require);
                if let Ok(p) = Packet::decode(&bytes, SECRET) {
                    let _ = p.user_password();
                    let _ = p.get_u32(attr::SESSION_TIMEOUT);
                }
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
                if let Ok((packet, _)) = accept_reply(&bytes, (1, &request_auth), SECRET, true) {
                    // Only edits that changed nothing the checks cover can pass.
                    let decoded = Packet::decode(&genuine, SECRET).expect("genuine decodes");
                    prop_assert_eq!(packet.get_all(attr::CLASS), decoded.get_all(attr::CLASS));
                    prop_assert_eq!(packet.get(attr::MESSAGE_AUTHENTICATOR), decoded.get(attr::MESSAGE_AUTHENTICATOR));
                    prop_assert_eq!(packet.code(), decoded.code());
                }
            }
        }
    }

    #[test]
    fn access_request_message_authenticator_verifies() {
        let mut p = Request::access_request(Code::AccessRequest, 3, [4; 16], SECRET);
        p.push(attr::USER_NAME, b"alice");
        let bytes = encode_access_request(&p).expect("encodes");
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
        let mut p = Packet::new(Code::DisconnectRequest, 7, [0; 16], SECRET);
        p.push(attr::ACCT_SESSION_ID, b"abc");
        let bytes = encode_dynauth_request(&p).expect("encodes");
        assert_eq!(verify_dynauth_request(&bytes, SECRET), Some(true));
        assert_eq!(verify_dynauth_request(&bytes, b"wrong"), None);
        let mut tampered = bytes.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(verify_dynauth_request(&tampered, SECRET), None);
    }

    #[test]
    fn accounting_request_authenticator_verifies() {
        let mut p = Request::new(Code::AccountingRequest, 3, [0; 16], SECRET);
        p.push_u32(attr::ACCT_STATUS_TYPE, 1);
        let (bytes, auth) = encode_accounting_request(&p).expect("encodes");
        assert_eq!(bytes[4..20], auth);
        assert!(verify_accounting_request(&bytes, SECRET));
        assert!(!verify_accounting_request(&bytes, b"wrong"));
    }
}
