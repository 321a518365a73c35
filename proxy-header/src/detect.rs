//! Telling a PROXY header from anything else by its first bytes, before parsing it.

/// Longest v1 line the spec allows, CRLF included (`PROXY UNKNOWN` with two maximal IPv6
/// addresses): a receiver may reject anything longer, and this crate does.
pub const V1_MAX_LEN: usize = 107;

/// The 12 bytes that open every v2 header. They cannot start a v1 line, an HTTP request or a
/// TLS record, which is what makes detection by signature safe.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The v1 signature: `PROXY` and the single space that must follow it.
pub(crate) const V1_SIGNATURE: &[u8] = b"PROXY ";

/// What the first bytes of a connection are, judged only by signature: lets `optional`
/// listeners decide "PROXY or not" without parsing, and without waiting longer than needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detect {
    /// Every byte so far matches the start of a signature; more are needed to decide.
    NeedMore,
    /// Starts with `PROXY ` (v1).
    V1,
    /// Starts with [`V2_SIGNATURE`].
    V2,
    /// A byte diverges from both signatures: this connection carries no PROXY header.
    NotProxy,
}

/// Classifies `buf` by signature. Answers as soon as the bytes allow: `NotProxy` on the first
/// byte that matches neither signature (for most protocols, the very first byte), `V1`/`V2` once
/// a whole signature is there, `NeedMore` while `buf` is a prefix of either (including empty).
///
/// ```
/// use trueip_proxy_header::{detect, Detect};
///
/// assert_eq!(detect(b"PRO"), Detect::NeedMore);
/// assert_eq!(detect(b"PROXY T"), Detect::V1);
/// assert_eq!(detect(b"GET / HTTP/1.1\r\n"), Detect::NotProxy);
/// assert_eq!(detect(b"\r\n\r\n\0\r\nQUIT\n\x21"), Detect::V2);
/// ```
#[must_use]
pub fn detect(buf: &[u8]) -> Detect {
    if buf.starts_with(V1_SIGNATURE) {
        Detect::V1
    } else if buf.starts_with(&V2_SIGNATURE) {
        Detect::V2
    } else if V1_SIGNATURE.starts_with(buf) || V2_SIGNATURE.starts_with(buf) {
        Detect::NeedMore
    } else {
        Detect::NotProxy
    }
}
