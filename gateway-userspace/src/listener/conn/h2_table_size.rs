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
//! (hyper does not). A valid ENABLE_PUSH entry (0 or 1) read whole therefore becomes
//! HEADER_TABLE_SIZE 0 too: rewriting in place keeps every frame's length, so no byte has to
//! be inserted into the stream. An invalid one stays for h2 to refuse.

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
        for i in 0..n {
            match self.pos % SETTING_LEN {
                0 => {
                    if let Some(entry) = bytes[..n].get_mut(i..i + SETTING_LEN) {
                        push_to_table_size(entry);
                    }
                    self.id = u16::from(bytes[i]) << 8;
                }
                1 => self.id |= u16::from(bytes[i]),
                _ if self.id == HEADER_TABLE_SIZE => bytes[i] = 0,
                _ => {}
            }
            self.pos += 1;
        }
        self.left -= n;
    }
}

/// Turns a whole ENABLE_PUSH entry with a valid value (0 or 1) into HEADER_TABLE_SIZE. Only
/// whole entries, seen at once: an invalid value stays for h2 to refuse (PROTOCOL_ERROR, RFC
/// 9113 §6.5.2), and an entry split across two reads is left as it is (its first bytes have
/// gone to h2 already).
fn push_to_table_size(entry: &mut [u8]) {
    if entry[..2] == ENABLE_PUSH.to_be_bytes() && entry[2..] <= [0, 0, 0, 1][..] {
        entry[..2].copy_from_slice(&HEADER_TABLE_SIZE.to_be_bytes());
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
        // Every split that keeps the ENABLE_PUSH entry (bytes 6..12) whole in one piece.
        for split in [6, 12, 18, 30, payload.len()] {
            let mut bytes = payload.clone();
            let mut cap = HeaderTableCap::default();
            cap.start(bytes.len());
            for piece in bytes.chunks_mut(split) {
                cap.patch(piece);
            }
            assert_eq!(bytes, want, "split {split}");
        }
        // HEADER_TABLE_SIZE is zeroed whatever the split; a split ENABLE_PUSH, or an invalid
        // one (h2 must refuse it), is left as it came.
        let payload = settings(&[(2, 0), (1, 4096), (2, 7)]);
        for split in 1..=payload.len() {
            let mut bytes = payload.clone();
            let mut cap = HeaderTableCap::default();
            cap.start(bytes.len());
            for piece in bytes.chunks_mut(split) {
                cap.patch(piece);
            }
            let push = if split >= 6 { (1, 0) } else { (2, 0) };
            assert_eq!(bytes, settings(&[push, (1, 0), (2, 7)]), "split {split}");
        }
        let mut after = [0x12u8; 4];
        HeaderTableCap::default().patch(&mut after);
        assert_eq!(after, [0x12; 4], "bytes past a payload are left alone");
    }
}
