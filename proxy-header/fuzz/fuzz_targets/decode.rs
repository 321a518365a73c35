//! Arbitrary bytes: the decoder never panics, never claims more than it was given, and what it
//! accepts re-encodes to a header that decodes to the same addresses and TLVs.

#![no_main]

use libfuzzer_sys::fuzz_target;
use trueip_proxy_header::{Command, Limits, Version, decode};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(Some((header, consumed))) = decode(data, &limits) {
        assert!(consumed <= data.len());
        assert!(consumed <= limits.max_v2_len.max(trueip_proxy_header::V1_MAX_LEN));
        if header.command == Command::Proxy {
            let again = match header.version {
                Version::V1 => header.to_v1(),
                Version::V2 => match header.to_v2(false) {
                    Ok(bytes) => bytes,
                    Err(_) => return,
                },
            };
            let (decoded, len) = decode(
                &again,
                &Limits {
                    max_v2_len: usize::MAX,
                },
            )
            .expect("our own encoding decodes")
            .expect("complete");
            assert_eq!(len, again.len());
            assert_eq!(decoded.client(), header.client());
            assert_eq!(
                decoded.original_destination(),
                header.original_destination()
            );
            if header.version == Version::V2 {
                let without_crc = |h: &trueip_proxy_header::Header| {
                    h.tlvs
                        .iter()
                        .filter(|t| t.kind != trueip_proxy_header::kind::CRC32C)
                        .cloned()
                        .collect::<Vec<_>>()
                };
                assert_eq!(without_crc(&decoded), without_crc(&header));
            }
        }
    }
});
