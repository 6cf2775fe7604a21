//! Response headers are HPACK-encoded without the dynamic table, as nginx encodes them.
//!
//! h2 sizes its HPACK encoder's dynamic table to the client's SETTINGS_HEADER_TABLE_SIZE
//! (4096 by default) and offers no setting of its own. With a table, every response field is
//! SipHash-ed, looked up and, when its value is new (`x-request-id`, `server-timing`, `date`,
//! the latency headers: every response), inserted while older entries are evicted; the table
//! then holds a chain of same-name entries that each lookup walks. That was ~2.7k instructions
//! per request (`bench/results/h2-profile.md`), for a few dozen bytes saved per response
//! (mostly stable upstream fields; the gateway's own values are new every time).
//!
//! RFC 7541 §4.2 lets an encoder use any table size up to the client's setting, so the value
//! of SETTINGS_HEADER_TABLE_SIZE in each SETTINGS frame the client sends is rewritten to 0 on
//! its way to h2 (the bytes are found by `h2_flood`'s frame scanner): h2 then announces a
//! table size of 0 in its first header block and encodes every field as a literal, never
//! indexed in a dynamic table. Only our encoder is affected: the setting is about the table the
//! client decodes with, and the client's own encoder (our decoder) follows our SETTINGS.
//!
//! Browsers send SETTINGS_HEADER_TABLE_SIZE; curl and h2load (nghttp2) send none (4096
//! applies) but send SETTINGS_ENABLE_PUSH 0, which means nothing to a server that never pushes
//! (hyper does not). An ENABLE_PUSH entry therefore becomes HEADER_TABLE_SIZE 0 too: rewriting
//! in place keeps every frame's length, so no byte has to be inserted into the stream.

/// SETTINGS_HEADER_TABLE_SIZE and SETTINGS_ENABLE_PUSH (RFC 9113 §6.5.2).
const HEADER_TABLE_SIZE: u16 = 0x1;
const ENABLE_PUSH: u16 = 0x2;
/// A setting: 16-bit identifier, 32-bit value.
const SETTING_LEN: usize = 6;

/// Rewrites SETTINGS payloads handed over in arbitrary pieces.
#[derive(Debug, Default)]
pub(super) struct HeaderTableCap {
    /// Bytes of the current SETTINGS payload still to come (in a later read).
    left: usize,
    /// Offset of the next byte in that payload.
    pos: usize,
    /// The identifier of the setting being read.
    id: u16,
}

impl HeaderTableCap {
    /// A SETTINGS frame with `len` payload bytes begins.
    pub(super) fn start(&mut self, len: usize) {
        (self.left, self.pos, self.id) = (len, 0, 0);
    }

    /// Rewrites the payload bytes of the current SETTINGS frame at the start of `bytes` (none
    /// if there is no frame or it has ended).
    pub(super) fn patch(&mut self, bytes: &mut [u8]) {
        let n = self.left.min(bytes.len());
        for b in &mut bytes[..n] {
            match self.pos % SETTING_LEN {
                0 => self.id = u16::from(*b) << 8,
                1 => {
                    self.id |= u16::from(*b);
                    if self.id == ENABLE_PUSH {
                        // The identifier's high byte is 0 for both.
                        *b = HEADER_TABLE_SIZE as u8;
                        self.id = HEADER_TABLE_SIZE;
                    }
                }
                _ if self.id == HEADER_TABLE_SIZE => *b = 0,
                _ => {}
            }
            self.pos += 1;
        }
        self.left -= n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_table_size_and_enable_push_become_a_zero_table_across_any_split() {
        let settings = |entries: &[(u16, u32)]| -> Vec<u8> {
            entries.iter().flat_map(|(id, v)| id.to_be_bytes().into_iter().chain(v.to_be_bytes())).collect()
        };
        // HEADER_TABLE_SIZE 4096, ENABLE_PUSH 0, INITIAL_WINDOW_SIZE 65535, HEADER_TABLE_SIZE
        // 65536, MAX_FRAME_SIZE 16384.
        let payload = settings(&[(1, 4096), (2, 0), (4, 65535), (1, 65536), (5, 16384)]);
        let want = settings(&[(1, 0), (1, 0), (4, 65535), (1, 0), (5, 16384)]);
        for split in 1..=payload.len() {
            let mut bytes = payload.clone();
            let mut cap = HeaderTableCap::default();
            cap.start(bytes.len());
            for piece in bytes.chunks_mut(split) {
                cap.patch(piece);
            }
            assert_eq!(bytes, want, "split {split}");
        }
        let mut after = [0x12u8; 4];
        HeaderTableCap::default().patch(&mut after);
        assert_eq!(after, [0x12; 4], "bytes past a payload are left alone");
    }
}
