//! The sidecar's read loop fed arbitrary chunking: the first byte is a seed for chunk sizes,
//! the rest is the stream. Deciding on each growing prefix, as the sidecar does, must reach the
//! same verdict as deciding on the whole input, and never ask for more bytes than the cap.

#![no_main]

use libfuzzer_sys::fuzz_target;
use trueip_proxy_header::{Detect, Limits, V1_MAX_LEN, decode, detect};

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let limits = Limits { max_v2_len: 512 };
    let cap = limits.max_v2_len.max(V1_MAX_LEN);
    let whole = match detect(stream) {
        Detect::NotProxy => None,
        _ => Some(decode(stream, &limits)),
    };
    let mut state = u32::from(seed) | 1;
    let mut end = 0;
    loop {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        end = (end + 1 + (state >> 16) as usize % 64).min(stream.len());
        let prefix = &stream[..end];
        match detect(prefix) {
            Detect::NeedMore => {}
            Detect::NotProxy => {
                assert!(whole.is_none(), "NotProxy on a prefix, not on the whole");
                return;
            }
            Detect::V1 | Detect::V2 => match decode(prefix, &limits) {
                Ok(None) => assert!(end < cap, "still undecided at the cap"),
                verdict => {
                    assert_eq!(Some(verdict), whole, "prefix and whole disagree");
                    return;
                }
            },
        }
        if end == stream.len() {
            return;
        }
    }
});
