//! Length-prefixed control frames: `decode_frame` never panics, never claims more bytes than it
//! was given, and whatever it accepts survives `encode_frame` -> `decode_frame` unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_sdk::frame::{decode_frame, encode_frame, FrameError};
use postern_sdk::protocol::{ClientFrame, RelayFrame};
use prost::Message;

const MAX: usize = 4096;

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(data: &[u8]) {
    let Ok(Some((msg, used))) = decode_frame::<M>(data, MAX) else {
        return;
    };
    assert!(
        (5..=MAX + 4).contains(&used) && used <= data.len(),
        "used {used}"
    );
    let len = msg.encoded_len();
    match encode_frame(&msg, MAX) {
        Err(FrameError::TooLarge { .. }) if len > MAX => {
            // Canonical re-encoding can be a few bytes longer than the input (e.g. a negative
            // enum sent as a 5-byte varint is re-encoded as 10 bytes); refusing it is correct.
        }
        // A message whose encoding is empty (e.g. a frame holding only unknown fields decodes to
        // `msg: None`) cannot be framed: `decode_frame` refuses zero-length frames, so
        // `encode_frame` must refuse it too rather than emit a frame the peer rejects.
        Err(FrameError::Empty) if len == 0 => {}
        Ok(buf) => match decode_frame::<M>(&buf, MAX) {
            Ok(Some((back, used2))) => {
                assert_eq!(used2, buf.len());
                assert_eq!(back, msg);
            }
            other => panic!("re-encoded {msg:?} ({len} bytes) does not decode: {other:?}"),
        },
        Err(e) => panic!("re-encoding {msg:?} failed: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<ClientFrame>(data);
    round_trip::<RelayFrame>(data);
});
