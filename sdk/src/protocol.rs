//! Every message of wire protocol v1, as prost types matching `sdk/proto/postern.proto`.
//!
//! The types are written by hand against the checked-in `.proto` (no `protoc` at build time);
//! the tests at the bottom pin field numbers by decoding bytes produced from the schema's
//! numbering. Limits that belong to the wire live here beside the messages.

#![allow(missing_docs)]

/// Protocol version spoken by this build. A peer with another major version is refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default hard cap for one control frame (the u32 length prefix is checked against it).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;

/// Longest lease name, in bytes after NFC normalization.
pub const MAX_LEASE_NAME_BYTES: usize = 63;

/// Most ALPN identifiers a lease or handshake may carry, and the longest one.
pub const MAX_ALPN_ENTRIES: usize = 8;
pub const MAX_ALPN_BYTES: usize = 64;

/// Lease metadata bounds.
pub const MAX_METADATA_ENTRIES: usize = 32;
pub const MAX_METADATA_KEY_BYTES: usize = 64;
pub const MAX_METADATA_VALUE_BYTES: usize = 256;

/// Most grants one session may present.
pub const MAX_GRANTS_PER_SESSION: usize = 16;

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ClientFrame {
    #[prost(oneof = "client_frame::Msg", tags = "1, 2, 3, 4, 5, 6")]
    pub msg: Option<client_frame::Msg>,
}

pub mod client_frame {
    #[derive(Clone, PartialEq, ::prost::Oneof)]
    pub enum Msg {
        #[prost(message, tag = "1")]
        Hello(super::ClientHello),
        #[prost(message, tag = "2")]
        Authenticate(super::Authenticate),
        #[prost(message, tag = "3")]
        Register(super::RegisterLease),
        #[prost(message, tag = "4")]
        Renew(super::RenewLease),
        #[prost(message, tag = "5")]
        Deregister(super::DeregisterLease),
        #[prost(message, tag = "6")]
        Connect(super::Connect),
    }
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct RelayFrame {
    #[prost(oneof = "relay_frame::Msg", tags = "1, 2, 3, 4, 5, 6")]
    pub msg: Option<relay_frame::Msg>,
}

pub mod relay_frame {
    #[derive(Clone, PartialEq, ::prost::Oneof)]
    pub enum Msg {
        #[prost(message, tag = "1")]
        Hello(super::ServerHello),
        #[prost(message, tag = "2")]
        Authenticated(super::Authenticated),
        #[prost(message, tag = "3")]
        Granted(super::LeaseGranted),
        #[prost(message, tag = "4")]
        Error(super::Error),
        #[prost(message, tag = "5")]
        ConnectResult(super::ConnectResult),
        #[prost(message, tag = "6")]
        Incoming(super::Incoming),
    }
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ClientHello {
    #[prost(uint32, tag = "1")]
    pub protocol_version: u32,
    #[prost(string, tag = "2")]
    pub client: String,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ServerHello {
    #[prost(uint32, tag = "1")]
    pub protocol_version: u32,
    #[prost(bytes = "vec", tag = "2")]
    pub session_nonce: Vec<u8>,
    #[prost(uint32, tag = "3")]
    pub max_frame_bytes: u32,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Authenticate {
    #[prost(bytes = "vec", tag = "1")]
    pub identity_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub signature: Vec<u8>,
    #[prost(message, repeated, tag = "3")]
    pub grants: Vec<SignedGrant>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Authenticated {
    #[prost(uint32, tag = "1")]
    pub grants_accepted: u32,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct RegisterLease {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(bytes = "vec", tag = "2")]
    pub e2ee_static_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub static_key_signature: Vec<u8>,
    #[prost(string, repeated, tag = "4")]
    pub alpn: Vec<String>,
    #[prost(btree_map = "string, string", tag = "5")]
    pub metadata: std::collections::BTreeMap<String, String>,
    #[prost(uint32, tag = "6")]
    pub ttl_secs: u32,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct RenewLease {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct DeregisterLease {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct LeaseGranted {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint64, tag = "2")]
    pub expires_at_unix_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
#[repr(i32)]
pub enum ErrorCode {
    Unspecified = 0,
    Malformed = 1,
    UnsupportedVersion = 2,
    Unauthenticated = 3,
    Forbidden = 4,
    GrantInvalid = 5,
    GrantExpired = 6,
    LeaseTaken = 7,
    Limit = 8,
    InvalidName = 9,
    NotFound = 10,
    ShuttingDown = 11,
    Timeout = 12,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Error {
    #[prost(enumeration = "ErrorCode", tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(string, tag = "3")]
    pub lease: String,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Connect {
    #[prost(string, tag = "1")]
    pub lease: String,
    #[prost(string, tag = "2")]
    pub alpn: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
#[repr(i32)]
pub enum ConnectCode {
    Unspecified = 0,
    Ok = 1,
    NotFound = 2,
    Forbidden = 3,
    Busy = 4,
    Limit = 5,
    Unreachable = 6,
    Malformed = 7,
    ShuttingDown = 8,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ConnectResult {
    #[prost(enumeration = "ConnectCode", tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(bytes = "vec", tag = "3")]
    pub e2ee_static_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub static_key_signature: Vec<u8>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Incoming {
    #[prost(string, tag = "1")]
    pub lease: String,
    #[prost(string, tag = "2")]
    pub alpn: String,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct LeaseGrant {
    #[prost(string, tag = "1")]
    pub workspace: String,
    #[prost(string, tag = "2")]
    pub lease_pattern: String,
    #[prost(bytes = "vec", tag = "3")]
    pub identity_key: Vec<u8>,
    #[prost(uint64, tag = "4")]
    pub issued_at_unix: u64,
    #[prost(uint64, tag = "5")]
    pub expires_at_unix: u64,
    #[prost(uint32, tag = "6")]
    pub permissions: u32,
}

/// Bits of [`LeaseGrant::permissions`].
pub mod permission {
    pub const LISTEN: u32 = 1;
    pub const DIAL: u32 = 2;
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct SignedGrant {
    #[prost(bytes = "vec", tag = "1")]
    pub grant: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub signature: Vec<u8>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct HandshakePayload {
    #[prost(uint64, tag = "1")]
    pub timestamp_unix_ms: u64,
    #[prost(string, repeated, tag = "2")]
    pub alpn: Vec<String>,
}

impl ClientFrame {
    pub fn new(msg: client_frame::Msg) -> Self {
        Self { msg: Some(msg) }
    }
}

impl RelayFrame {
    pub fn new(msg: relay_frame::Msg) -> Self {
        Self { msg: Some(msg) }
    }

    /// A relay error frame.
    pub fn error(code: ErrorCode, message: impl Into<String>, lease: impl Into<String>) -> Self {
        Self::new(relay_frame::Msg::Error(Error {
            code: code as i32,
            message: message.into(),
            lease: lease.into(),
        }))
    }

    /// A connect answer without key material (every code but `Ok`).
    pub fn connect_refused(code: ConnectCode, message: impl Into<String>) -> Self {
        Self::new(relay_frame::Msg::ConnectResult(ConnectResult {
            code: code as i32,
            message: message.into(),
            ..Default::default()
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use prost::Message;

    /// Field numbers are the wire contract: these bytes are what the `.proto` numbering produces.
    #[test]
    fn field_numbers_match_the_proto() {
        // ClientFrame{connect(6){lease(1)="ab", alpn(2)="h2"}}
        let bytes = [0x32, 0x08, 0x0a, 0x02, b'a', b'b', 0x12, 0x02, b'h', b'2'];
        let frame = ClientFrame::decode(&bytes[..]).unwrap();
        assert_eq!(
            frame.msg,
            Some(client_frame::Msg::Connect(Connect {
                lease: "ab".into(),
                alpn: "h2".into()
            }))
        );
        assert_eq!(frame.encode_to_vec(), bytes);

        // RelayFrame{connect_result(5){code(1)=BUSY(4)}}
        let bytes = [0x2a, 0x02, 0x08, 0x04];
        let frame = RelayFrame::decode(&bytes[..]).unwrap();
        match frame.msg {
            Some(relay_frame::Msg::ConnectResult(r)) => {
                assert_eq!(r.code(), ConnectCode::Busy)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_enum_values_decode_to_default() {
        let bytes = [0x2a, 0x02, 0x08, 0x7f];
        let frame = RelayFrame::decode(&bytes[..]).unwrap();
        match frame.msg {
            Some(relay_frame::Msg::ConnectResult(r)) => {
                assert_eq!(r.code(), ConnectCode::Unspecified)
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
