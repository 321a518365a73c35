//! v2 TLVs: kept as received, validated where the spec gives them structure (CRC32c, SSL),
//! read through typed accessors.
//!
//! ppp 2.3 knows TLVs only by type number: no CRC32c check, no SSL sub-TLV parsing, no cloud
//! TLVs; those are this module's. Its iterator (`ppp::v2::TypeLengthValues`) is not used
//! either: it yields each value as a `Cow` owned by the iterator item, so the values cannot
//! be lent out of a buffer, and its errors carry no offset. The walk here is [`Walk`]: a
//! decoded header keeps its TLV bytes in one buffer, and the typed accessors and the encoder
//! read them in place. Copying every value into its own `Vec` (one allocation each, plus the
//! list's) cost about 30 ns of the 110 ns a HAProxy-style header (4 TLVs and a CRC32c) took to
//! decode; the [`RawTlv`] list is now built only when [`Tlvs::iter`] asks for it.

use std::sync::OnceLock;

use crate::error::{EncodeError, v2::Error};

/// TLV type numbers: the spec's (section 2.2) and the cloud load balancers'.
pub mod kind {
    /// `PP2_TYPE_ALPN`: the protocol negotiated by TLS ALPN, as bytes (e.g. `h2`).
    pub const ALPN: u8 = 0x01;
    /// `PP2_TYPE_AUTHORITY`: the host name the client asked for (TLS SNI or similar), UTF-8.
    pub const AUTHORITY: u8 = 0x02;
    /// `PP2_TYPE_CRC32C`: big-endian CRC32c of the whole header with this value zeroed.
    pub const CRC32C: u8 = 0x03;
    /// `PP2_TYPE_NOOP`: padding, to be ignored.
    pub const NOOP: u8 = 0x04;
    /// `PP2_TYPE_UNIQUE_ID`: an opaque connection id of up to 128 bytes chosen by the proxy.
    pub const UNIQUE_ID: u8 = 0x05;
    /// `PP2_TYPE_SSL`: client TLS facts, see [`Ssl`](crate::Ssl).
    pub const SSL: u8 = 0x20;
    /// `PP2_SUBTYPE_SSL_VERSION` (inside [`SSL`]): the TLS version, e.g. `TLSv1.3`.
    pub const SSL_VERSION: u8 = 0x21;
    /// `PP2_SUBTYPE_SSL_CN` (inside [`SSL`]): the client certificate's Common Name.
    pub const SSL_CN: u8 = 0x22;
    /// `PP2_SUBTYPE_SSL_CIPHER` (inside [`SSL`]): the cipher, e.g. `ECDHE-RSA-AES128-GCM-SHA256`.
    pub const SSL_CIPHER: u8 = 0x23;
    /// `PP2_SUBTYPE_SSL_SIG_ALG` (inside [`SSL`]): the certificate signature algorithm.
    pub const SSL_SIG_ALG: u8 = 0x24;
    /// `PP2_SUBTYPE_SSL_KEY_ALG` (inside [`SSL`]): the certificate key algorithm.
    pub const SSL_KEY_ALG: u8 = 0x25;
    /// `PP2_TYPE_NETNS`: the network namespace name the connection was accepted in, UTF-8.
    pub const NETNS: u8 = 0x30;
    /// Google Cloud Private Service Connect: 8-byte big-endian PSC connection id.
    pub const GCP: u8 = 0xE0;
    /// AWS (NLB, VPC endpoint services): sub-type byte, then value; sub-type 0x01 is the
    /// VPC endpoint id, ASCII.
    pub const AWS: u8 = 0xEA;
    /// Azure Private Link: sub-type byte, then value; sub-type 0x01 is the private endpoint
    /// link id, 4 bytes little-endian.
    pub const AZURE: u8 = 0xEE;
}

/// Size of a TLV's type byte and big-endian length.
pub(crate) const TLV_HEADER_LEN: usize = 3;
/// Size of the CRC32c TLV's value.
pub(crate) const CRC32C_LEN: usize = 4;
/// Largest header whose CRC32c is computed over a stack copy, see [`verify_crc32c`].
const CRC32C_COPY_MAX: usize = 512;
/// Size of the SSL TLV's fixed part: `client` (1 byte) and `verify` (4 bytes).
const SSL_FIXED_LEN: usize = 5;
/// Size of the SSL TLV's `verify` field.
const SSL_VERIFY_LEN: usize = 4;
/// AWS sub-type of the VPC endpoint id.
const AWS_SUBTYPE_VPCE_ID: u8 = 0x01;
/// Azure sub-type of the private endpoint link id.
const AZURE_SUBTYPE_LINK_ID: u8 = 0x01;
/// Size of the Azure link id.
const AZURE_LINK_ID_LEN: usize = 4;
/// Size of the GCP PSC connection id.
const GCP_CONNECTION_ID_LEN: usize = 8;

/// One TLV as received: kept raw so unknown types can be logged, filtered and re-emitted
/// unchanged (the `proxy-v2` restore mode forwards what it does not strip).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawTlv {
    /// The type byte; see [`kind`].
    pub kind: u8,
    /// The value, at most 65 535 bytes on the wire.
    pub value: Vec<u8>,
}

/// The TLVs of a v2 header, in wire order. A list rather than a map because order and
/// duplicates are part of what was sent; the typed accessors read the first TLV of their
/// type that decodes, and return `None` when there is none. Two lists are equal when they
/// hold the same TLVs in the same order.
#[derive(Clone, Default)]
pub struct Tlvs {
    /// Where the TLVs live.
    repr: Repr,
}

/// Where the TLVs of a [`Tlvs`] live.
#[derive(Debug, Clone)]
enum Repr {
    /// As decoded: their wire bytes, already checked to tile exactly.
    Wire {
        /// Type, length and value of each TLV, back to back.
        bytes: Vec<u8>,
        /// The same TLVs as a list, built on the first [`Tlvs::iter`].
        list: OnceLock<Vec<RawTlv>>,
    },
    /// Built or edited in memory.
    List(Vec<RawTlv>),
}

impl Default for Repr {
    fn default() -> Self {
        Self::List(Vec::new())
    }
}

impl Tlvs {
    /// All TLVs in wire order, for logging or filtering.
    pub fn iter(&self) -> impl Iterator<Item = &RawTlv> {
        self.list().iter()
    }

    /// Appends a TLV, for building headers to send (re-emission, tests, fake load balancers).
    pub fn push(&mut self, kind: u8, value: Vec<u8>) {
        let mut list = self.take_list();
        list.push(RawTlv { kind, value });
        self.repr = Repr::List(list);
    }

    /// Keeps only the TLVs for which `keep` returns true, preserving order: how the
    /// `proxy-v2` restore mode strips TLVs the app must not see.
    pub fn retain(&mut self, keep: impl FnMut(&RawTlv) -> bool) {
        let mut list = self.take_list();
        list.retain(keep);
        self.repr = Repr::List(list);
    }

    /// Whether there are no TLVs.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        match &self.repr {
            Repr::Wire { bytes, .. } => bytes.is_empty(),
            Repr::List(list) => list.is_empty(),
        }
    }

    /// How many TLVs there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries().count()
    }

    /// The value of the first TLV of type `kind`, for types without a typed accessor.
    #[must_use]
    pub fn get(&self, kind: u8) -> Option<&[u8]> {
        self.values(kind).next()
    }

    /// The ALPN protocol ([`kind::ALPN`]), raw bytes.
    #[must_use]
    pub fn alpn(&self) -> Option<&[u8]> {
        self.get(kind::ALPN)
    }

    /// The authority, i.e. SNI host name ([`kind::AUTHORITY`]), when UTF-8.
    #[must_use]
    pub fn authority(&self) -> Option<&str> {
        self.values(kind::AUTHORITY)
            .find_map(|value| std::str::from_utf8(value).ok())
    }

    /// The proxy's unique connection id ([`kind::UNIQUE_ID`]), raw bytes.
    #[must_use]
    pub fn unique_id(&self) -> Option<&[u8]> {
        self.get(kind::UNIQUE_ID)
    }

    /// The CRC32c carried by the header ([`kind::CRC32C`]). A decoded header's checksum has
    /// already been verified.
    #[must_use]
    pub fn crc32c(&self) -> Option<u32> {
        self.values(kind::CRC32C)
            .find_map(|value| <[u8; CRC32C_LEN]>::try_from(value).ok())
            .map(u32::from_be_bytes)
    }

    /// The network namespace name ([`kind::NETNS`]), when UTF-8.
    #[must_use]
    pub fn netns(&self) -> Option<&str> {
        self.values(kind::NETNS)
            .find_map(|value| std::str::from_utf8(value).ok())
    }

    /// The client TLS facts ([`kind::SSL`]); `None` also when a known sub-TLV is not UTF-8.
    #[must_use]
    pub fn ssl(&self) -> Option<Ssl> {
        self.values(kind::SSL).find_map(Ssl::decode)
    }

    /// The AWS VPC endpoint id ([`kind::AWS`], sub-type 0x01), e.g. `vpce-08d2bf15fac5001c9`.
    #[must_use]
    pub fn aws_vpce_id(&self) -> Option<&str> {
        self.values(kind::AWS).find_map(|value| match value {
            [AWS_SUBTYPE_VPCE_ID, id @ ..] => std::str::from_utf8(id).ok(),
            _ => None,
        })
    }

    /// The Azure private endpoint link id ([`kind::AZURE`], sub-type 0x01, little-endian).
    #[must_use]
    pub fn azure_private_link_id(&self) -> Option<u32> {
        self.values(kind::AZURE).find_map(|value| match value {
            [AZURE_SUBTYPE_LINK_ID, id @ ..] => <[u8; AZURE_LINK_ID_LEN]>::try_from(id)
                .ok()
                .map(u32::from_le_bytes),
            _ => None,
        })
    }

    /// The Google Cloud PSC connection id ([`kind::GCP`], big-endian).
    #[must_use]
    pub fn gcp_psc_connection_id(&self) -> Option<u64> {
        self.values(kind::GCP)
            .find_map(|value| <[u8; GCP_CONNECTION_ID_LEN]>::try_from(value).ok())
            .map(u64::from_be_bytes)
    }

    /// Type and value of each TLV, in order, without copying.
    pub(crate) fn entries(&self) -> Entries<'_> {
        match &self.repr {
            Repr::Wire { bytes, .. } => Entries::Wire(Walk::new(bytes)),
            Repr::List(list) => Entries::List(list.iter()),
        }
    }

    /// The values of every TLV of type `kind`, in order.
    fn values(&self, kind: u8) -> impl Iterator<Item = &[u8]> {
        self.entries()
            .filter(move |&(tlv_kind, _)| tlv_kind == kind)
            .map(|(_, value)| value)
    }

    /// The TLVs as a list, built from the wire bytes on first use.
    fn list(&self) -> &[RawTlv] {
        match &self.repr {
            Repr::Wire { bytes, list } => list.get_or_init(|| to_list(bytes)),
            Repr::List(list) => list,
        }
    }

    /// Moves the TLVs out as a list, for editing.
    fn take_list(&mut self) -> Vec<RawTlv> {
        match std::mem::take(&mut self.repr) {
            Repr::Wire { bytes, list } => list.into_inner().unwrap_or_else(|| to_list(&bytes)),
            Repr::List(list) => list,
        }
    }
}

/// Copies wire TLVs into a list.
fn to_list(bytes: &[u8]) -> Vec<RawTlv> {
    Walk::new(bytes)
        .map(|(kind, value)| RawTlv {
            kind,
            value: value.to_vec(),
        })
        .collect()
}

impl std::fmt::Debug for Tlvs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl PartialEq for Tlvs {
    fn eq(&self, other: &Self) -> bool {
        self.entries().eq(other.entries())
    }
}

impl Eq for Tlvs {}

impl<'a> IntoIterator for &'a Tlvs {
    type Item = &'a RawTlv;
    type IntoIter = std::slice::Iter<'a, RawTlv>;

    fn into_iter(self) -> Self::IntoIter {
        self.list().iter()
    }
}

impl FromIterator<RawTlv> for Tlvs {
    fn from_iter<I: IntoIterator<Item = RawTlv>>(iter: I) -> Self {
        Self {
            repr: Repr::List(iter.into_iter().collect()),
        }
    }
}

/// Type and value of each TLV of a [`Tlvs`], borrowed.
#[derive(Debug)]
pub(crate) enum Entries<'a> {
    /// From wire bytes.
    Wire(Walk<'a>),
    /// From a list.
    List(std::slice::Iter<'a, RawTlv>),
}

impl<'a> Iterator for Entries<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::Wire(walk) => walk.next(),
            Self::List(list) => list.next().map(|tlv| (tlv.kind, tlv.value.as_slice())),
        }
    }
}

/// Walks TLVs (type byte, big-endian `u16` length, value) laid back to back. Stops at the end
/// of the bytes or at the first TLV that does not fit; [`rest`](Self::rest) then tells which.
#[derive(Debug, Clone)]
pub(crate) struct Walk<'a> {
    /// What is left to walk.
    rest: &'a [u8],
}

impl<'a> Walk<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    /// The bytes not walked yet: empty once every TLV fitted.
    fn rest(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for Walk<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (&[kind, high, low], after) = self.rest.split_first_chunk::<TLV_HEADER_LEN>()?;
        let (value, after) =
            after.split_at_checked(usize::from(u16::from_be_bytes([high, low])))?;
        self.rest = after;
        Some((kind, value))
    }
}

/// The client TLS facts of an SSL TLV (spec section 2.2.5): whether and how the client spoke
/// TLS to the proxy, for apps that authorise on it (client certificate CN, TLS version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ssl {
    /// Bit field: [`Ssl::CLIENT_SSL`], [`Ssl::CLIENT_CERT_CONN`], [`Ssl::CLIENT_CERT_SESS`].
    pub client: u8,
    /// Zero when the client presented a certificate that verified, non-zero otherwise.
    pub verify: u32,
    /// [`kind::SSL_VERSION`], e.g. `TLSv1.3`.
    pub version: Option<String>,
    /// [`kind::SSL_CN`]: the client certificate's Common Name.
    pub cn: Option<String>,
    /// [`kind::SSL_CIPHER`], e.g. `TLS_AES_256_GCM_SHA384`.
    pub cipher: Option<String>,
    /// [`kind::SSL_SIG_ALG`], e.g. `SHA256`.
    pub sig_alg: Option<String>,
    /// [`kind::SSL_KEY_ALG`], e.g. `RSA2048`.
    pub key_alg: Option<String>,
}

impl Ssl {
    /// `client` bit: the client connected over SSL/TLS.
    pub const CLIENT_SSL: u8 = 0x01;
    /// `client` bit: the client presented a certificate on this connection.
    pub const CLIENT_CERT_CONN: u8 = 0x02;
    /// `client` bit: the client presented a certificate at least once in this TLS session.
    pub const CLIENT_CERT_SESS: u8 = 0x04;

    /// The SSL TLV value for these facts (`client`, `verify`, then the sub-TLVs that are
    /// set, in type order), to [`push`](Tlvs::push) as [`kind::SSL`].
    ///
    /// ```
    /// use trueip_proxy_header::{kind, Ssl, Tlvs};
    ///
    /// let ssl = Ssl {
    ///     client: Ssl::CLIENT_SSL,
    ///     verify: 0,
    ///     version: Some("TLSv1.3".into()),
    ///     cn: None,
    ///     cipher: None,
    ///     sig_alg: None,
    ///     key_alg: None,
    /// };
    /// let mut tlvs = Tlvs::default();
    /// tlvs.push(kind::SSL, ssl.encode()?);
    /// assert_eq!(tlvs.ssl(), Some(ssl));
    /// # Ok::<(), trueip_proxy_header::EncodeError>(())
    /// ```
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut value = Vec::with_capacity(SSL_FIXED_LEN);
        value.push(self.client);
        value.extend_from_slice(&self.verify.to_be_bytes());
        for (kind, text) in [
            (kind::SSL_VERSION, &self.version),
            (kind::SSL_CN, &self.cn),
            (kind::SSL_CIPHER, &self.cipher),
            (kind::SSL_SIG_ALG, &self.sig_alg),
            (kind::SSL_KEY_ALG, &self.key_alg),
        ] {
            if let Some(text) = text {
                let len = u16::try_from(text.len())
                    .map_err(|_| EncodeError::TooLong { len: text.len() })?;
                value.push(kind);
                value.extend_from_slice(&len.to_be_bytes());
                value.extend_from_slice(text.as_bytes());
            }
        }
        Ok(value)
    }

    /// Reads an SSL TLV value; `None` when it is malformed or a known sub-TLV is not UTF-8.
    /// The first sub-TLV of each type wins; unknown sub-TLVs are skipped.
    fn decode(value: &[u8]) -> Option<Self> {
        let (&client, rest) = value.split_first()?;
        let (verify, subs) = rest.split_first_chunk::<SSL_VERIFY_LEN>()?;
        let mut ssl = Self {
            client,
            verify: u32::from_be_bytes(*verify),
            version: None,
            cn: None,
            cipher: None,
            sig_alg: None,
            key_alg: None,
        };
        let mut walk = Walk::new(subs);
        for (kind, value) in walk.by_ref() {
            let slot = match kind {
                kind::SSL_VERSION => &mut ssl.version,
                kind::SSL_CN => &mut ssl.cn,
                kind::SSL_CIPHER => &mut ssl.cipher,
                kind::SSL_SIG_ALG => &mut ssl.sig_alg,
                kind::SSL_KEY_ALG => &mut ssl.key_alg,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(std::str::from_utf8(value).ok()?.to_owned());
            }
        }
        walk.rest().is_empty().then_some(ssl)
    }
}

/// Checks the TLVs of a complete v2 header from offset `start` (right after the address
/// block): they must tile the rest exactly, an SSL TLV's sub-TLVs must tile it, and a CRC32c
/// TLV must be single, 4 bytes long and match the header. Keeps their bytes as they are.
pub(crate) fn parse(header: &[u8], start: usize) -> Result<Tlvs, Error> {
    let region = header.get(start..).unwrap_or_default();
    let mut walk = Walk::new(region);
    let mut checksum = None;
    let mut offset = start;
    for (kind, value) in walk.by_ref() {
        let value_at = offset + TLV_HEADER_LEN;
        match kind {
            kind::CRC32C => {
                let expected = <[u8; CRC32C_LEN]>::try_from(value)
                    .ok()
                    .filter(|_| checksum.is_none())
                    .ok_or(Error::BadCrc32cTlv { offset })?;
                checksum = Some((value_at, u32::from_be_bytes(expected)));
            }
            kind::SSL if !ssl_tiles(value) => return Err(Error::BadSslTlv { offset }),
            _ => {}
        }
        offset = value_at + value.len();
    }
    if !walk.rest().is_empty() {
        return Err(Error::TlvOverrun { offset });
    }
    if let Some((value_at, expected)) = checksum {
        verify_crc32c(header, value_at, expected)?;
    }
    Ok(Tlvs {
        repr: Repr::Wire {
            bytes: region.to_vec(),
            list: OnceLock::new(),
        },
    })
}

/// Whether an SSL TLV value has its fixed part and sub-TLVs that fill the rest exactly.
fn ssl_tiles(value: &[u8]) -> bool {
    value.get(SSL_FIXED_LEN..).is_some_and(|subs| {
        let mut walk = Walk::new(subs);
        walk.by_ref().for_each(drop);
        walk.rest().is_empty()
    })
}

/// Checks the CRC32c of `header` computed with its 4-byte field at `value_at` zeroed.
///
/// Headers up to [`CRC32C_COPY_MAX`] bytes (every real sender's) are checksummed in one pass
/// over a zeroed stack copy: the hardware CRC's per-call cost on short unaligned slices made
/// three passes (before, zeros, after) twice as slow as copying.
fn verify_crc32c(header: &[u8], value_at: usize, expected: u32) -> Result<(), Error> {
    let field = value_at..value_at + CRC32C_LEN;
    let mut copy = [0; CRC32C_COPY_MAX];
    let computed = match (copy.get_mut(..header.len()), header.get(field.end..)) {
        (Some(copy), _) => {
            copy.copy_from_slice(header);
            copy.get_mut(field).unwrap_or_default().fill(0);
            crc32c::crc32c(copy)
        }
        (None, after) => crc32c::crc32c_append(
            crc32c::crc32c_append(
                crc32c::crc32c(header.get(..value_at).unwrap_or_default()),
                &[0; CRC32C_LEN],
            ),
            after.unwrap_or_default(),
        ),
    };
    if computed == expected {
        Ok(())
    } else {
        Err(Error::Crc32cMismatch { expected, computed })
    }
}
