//! Accepts a URL as an HTTP/2 request's `:authority`, as etcd's gRPC server does.
//!
//! etcdctl 3.4 dials each endpoint of `endpoint status` (and of `--cluster`, which takes them
//! from `member list`) by its URL as given, so its requests carry `:authority:
//! http://127.0.0.1:2379`. grpc-go's server ignores the authority; h2, under tonic, refuses the
//! request with a stream reset (PROTOCOL_ERROR: malformed authority). [`AuthorityFix`] sits on
//! a connection's inbound bytes and rewrites such a value to the URL's host and port; every
//! other byte passes unchanged.
//!
//! A connection's authority is the same for all its requests, so once a connection's first
//! header block has needed no fix, nothing more of it is examined: [`AuthorityFix::examining`]
//! turns false and the socket's bytes go to h2 directly. A connection that has needed a fix is
//! examined for as long as it lives: its later requests refer to the fixed entry of the dynamic
//! table, but once other headers have pushed that entry out, the client sends the URL again.
//!
//! Only a HEADERS frame that holds a whole header block (END_HEADERS) is examined. Its HPACK
//! block is walked representation by representation; an `:authority` literal (static name
//! index 1, or the name spelled out) whose value, Huffman-coded or not, starts with `http://`
//! or `https://` is written back as a plain literal of the same kind without the scheme (and
//! without a path). The value only ever gets shorter, so the entry a literal with incremental
//! indexing adds to h2's dynamic table is smaller than the one the client's encoder counts:
//! h2 evicts no entry the client may still refer to, and indices stay the same. A later
//! request on the connection that refers to the entry gets the fixed value.

/// HTTP/2's connection preface, which a client sends before its first frame.
const PREFACE_LEN: usize = 24;
const FRAME_HEAD_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame a peer may send before it is told otherwise (h2 does not raise it).
const MAX_EXAMINED_FRAME: usize = 16_384;

/// The state of one connection's inbound bytes.
#[derive(Debug)]
pub struct AuthorityFix {
    /// Bytes read but not passed on yet: an incomplete frame head or HEADERS frame.
    held: Vec<u8>,
    /// Bytes of the connection preface still to pass.
    preface: usize,
    /// Bytes of the current frame's payload still to pass unexamined.
    passing: usize,
    /// False once the first header block has needed no fix: everything after it passes as
    /// it is.
    examining: bool,
    /// Whether a header block of this connection has needed a fix.
    fixed: bool,
}

impl Default for AuthorityFix {
    fn default() -> Self {
        Self {
            held: Vec::new(),
            preface: PREFACE_LEN,
            passing: 0,
            examining: true,
            fixed: false,
        }
    }
}

impl AuthorityFix {
    /// Whether bytes still need to go through [`AuthorityFix::feed`]: false once a header
    /// block needed no fix and nothing is held back.
    pub fn examining(&self) -> bool {
        self.examining || !self.held.is_empty()
    }

    /// Takes bytes just read from the connection; appends to `out` what h2 may read now.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if self.held.is_empty() {
            let rest = self.pass(input, out);
            self.held.extend_from_slice(rest);
        } else {
            let mut data = std::mem::take(&mut self.held);
            data.extend_from_slice(input);
            let rest = self.pass(&data, out);
            self.held = rest.to_vec();
        }
    }

    /// Passes what can be passed; answers the rest, to hold until more bytes come.
    fn pass<'a>(&mut self, mut data: &'a [u8], out: &mut Vec<u8>) -> &'a [u8] {
        loop {
            let skip = if self.preface > 0 {
                &mut self.preface
            } else {
                &mut self.passing
            };
            if *skip > 0 {
                let n = (*skip).min(data.len());
                out.extend_from_slice(&data[..n]);
                *skip -= n;
                data = &data[n..];
            }
            if !self.examining {
                out.extend_from_slice(data);
                return &[];
            }
            if data.is_empty() || self.preface > 0 || self.passing > 0 {
                return data;
            }
            if data.len() < FRAME_HEAD_LEN {
                return data;
            }
            let length =
                usize::from(data[0]) << 16 | usize::from(data[1]) << 8 | usize::from(data[2]);
            if data[3] != HEADERS || length > MAX_EXAMINED_FRAME {
                out.extend_from_slice(&data[..FRAME_HEAD_LEN]);
                self.passing = length;
                data = &data[FRAME_HEAD_LEN..];
                continue;
            }
            let Some(frame) = data.get(..FRAME_HEAD_LEN + length) else {
                return data;
            };
            match rewrite_headers(frame) {
                Some(fixed) => {
                    out.extend_from_slice(&fixed);
                    self.fixed = true;
                }
                None => {
                    out.extend_from_slice(frame);
                    self.examining = self.fixed || !complete_block(frame);
                }
            }
            data = &data[frame.len()..];
        }
    }
}

/// Whether a HEADERS frame holds a whole header block.
fn complete_block(frame: &[u8]) -> bool {
    frame[4] & END_HEADERS != 0
}

/// The HEADERS frame with its URL authority fixed; `None` to pass it as it is.
fn rewrite_headers(frame: &[u8]) -> Option<Vec<u8>> {
    let flags = frame[4];
    if flags & END_HEADERS == 0 {
        return None;
    }
    let mut start = FRAME_HEAD_LEN;
    let mut pad = 0;
    if flags & PADDED != 0 {
        pad = usize::from(*frame.get(start)?);
        start += 1;
    }
    let priority_start = start;
    if flags & PRIORITY != 0 {
        start += 5;
    }
    let end = frame.len().checked_sub(pad)?;
    let block = frame.get(start..end)?;
    let fixes = authority_fixes(block)?;
    if fixes.is_empty() {
        return None;
    }
    let mut payload = frame[priority_start..start].to_vec();
    let mut at = 0;
    for (from, to, authority) in fixes {
        payload.extend_from_slice(&block[at..from]);
        encode_plain_string(&authority, &mut payload);
        at = to;
    }
    payload.extend_from_slice(&block[at..]);
    let length = payload.len();
    let mut fixed = Vec::with_capacity(FRAME_HEAD_LEN + length);
    fixed.extend_from_slice(&[(length >> 16) as u8, (length >> 8) as u8, length as u8]);
    fixed.push(HEADERS);
    fixed.push(flags & !PADDED);
    fixed.extend_from_slice(&frame[5..FRAME_HEAD_LEN]);
    fixed.extend_from_slice(&payload);
    Some(fixed)
}

/// Where `block` holds a URL as `:authority`: (start, end) of each value's string literal and
/// the host and port to put there. `None` if the block does not parse (h2 will say so).
fn authority_fixes(block: &[u8]) -> Option<Vec<(usize, usize, Vec<u8>)>> {
    let mut fixes = Vec::new();
    let mut at = 0;
    while at < block.len() {
        let first = block[at];
        let prefix = if first & 0x80 != 0 {
            // Indexed field: nothing literal here.
            at = integer(block, at, 7)?.1;
            continue;
        } else if first & 0xc0 == 0x40 {
            6
        } else if first & 0xe0 == 0x20 {
            // Dynamic table size update.
            at = integer(block, at, 5)?.1;
            continue;
        } else {
            4
        };
        let (name_index, after) = integer(block, at, prefix)?;
        at = after;
        let is_authority = if name_index == 0 {
            let name = Literal::at(block, at)?;
            at = name.end;
            name.decode(block)? == b":authority"
        } else {
            name_index == 1
        };
        let value = Literal::at(block, at)?;
        // Only an authority's value is decoded: the other literals are skipped over.
        if is_authority {
            if let Some(authority) = authority_of_url(&value.decode(block)?) {
                fixes.push((at, value.end, authority));
            }
        }
        at = value.end;
    }
    Some(fixes)
}

/// HPACK's prefixed integer at `block[at]` (RFC 7541 5.1); the value and where it ends.
fn integer(block: &[u8], at: usize, prefix_bits: u32) -> Option<(usize, usize)> {
    let mask = (1usize << prefix_bits) - 1;
    let mut value = usize::from(*block.get(at)?) & mask;
    let mut at = at + 1;
    if value < mask {
        return Some((value, at));
    }
    let mut shift = 0u32;
    loop {
        let byte = *block.get(at)?;
        at += 1;
        if shift > 28 {
            return None;
        }
        value += usize::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Some((value, at));
        }
    }
}

/// Where HPACK's string literal at `block[at]` (RFC 7541 5.2) is.
struct Literal {
    huffman: bool,
    start: usize,
    end: usize,
}

impl Literal {
    fn at(block: &[u8], at: usize) -> Option<Literal> {
        let huffman = *block.get(at)? & 0x80 != 0;
        let (length, start) = integer(block, at, 7)?;
        let end = start.checked_add(length)?;
        (end <= block.len()).then_some(Literal {
            huffman,
            start,
            end,
        })
    }

    /// Its bytes, Huffman-decoded if they are coded; `None` if they do not decode.
    fn decode(&self, block: &[u8]) -> Option<Vec<u8>> {
        let bytes = &block[self.start..self.end];
        if !self.huffman {
            return Some(bytes.to_vec());
        }
        let mut decoded = Vec::new();
        httlib_huffman::decode(bytes, &mut decoded, httlib_huffman::DecoderSpeed::FourBits).ok()?;
        Some(decoded)
    }
}

/// A plain (not Huffman-coded) string literal.
fn encode_plain_string(value: &[u8], out: &mut Vec<u8>) {
    let mut length = value.len();
    if length < 0x7f {
        out.push(length as u8);
    } else {
        out.push(0x7f);
        length -= 0x7f;
        while length >= 0x80 {
            out.push((length & 0x7f) as u8 | 0x80);
            length >>= 7;
        }
        out.push(length as u8);
    }
    out.extend_from_slice(value);
}

/// `host:port` of an `http://` or `https://` URL; `None` for anything else (a valid authority
/// is left alone).
fn authority_of_url(value: &[u8]) -> Option<Vec<u8>> {
    let rest = [&b"http://"[..], b"https://"]
        .into_iter()
        .find_map(|scheme| {
            let head = value.get(..scheme.len())?;
            head.eq_ignore_ascii_case(scheme)
                .then(|| &value[scheme.len()..])
        })?;
    let host = rest.split(|b| *b == b'/').next().unwrap_or_default();
    (!host.is_empty()).then(|| host.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let length = payload.len();
        let mut frame = vec![
            (length >> 16) as u8,
            (length >> 8) as u8,
            length as u8,
            kind,
            flags,
        ];
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    fn huffman(value: &[u8]) -> Vec<u8> {
        let mut coded = Vec::new();
        httlib_huffman::encode(value, &mut coded).unwrap();
        let mut literal = Vec::new();
        encode_plain_string(&coded, &mut literal);
        literal[0] |= 0x80;
        literal
    }

    /// What grpc-go sends first: `:method POST` (indexed), `:scheme http` (indexed), then
    /// `:authority` as a literal with incremental indexing on static name index 1.
    fn request_block(authority: &[u8], huffman_coded: bool) -> Vec<u8> {
        let mut block = vec![0x83, 0x86, 0x41];
        if huffman_coded {
            block.extend(huffman(authority));
        } else {
            encode_plain_string(authority, &mut block);
        }
        // `te: trailers`, a literal without indexing and with the name spelled out.
        block.push(0x00);
        encode_plain_string(b"te", &mut block);
        encode_plain_string(b"trailers", &mut block);
        block
    }

    /// Feeds `input` in pieces of `piece` bytes.
    fn feed(input: &[u8], piece: usize) -> Vec<u8> {
        let mut fix = AuthorityFix::default();
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            fix.feed(chunk, &mut out);
        }
        assert!(fix.held.is_empty(), "nothing left over");
        out
    }

    #[test]
    fn a_url_authority_becomes_host_and_port_however_the_bytes_arrive() {
        for coded in [true, false] {
            let settings = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
            let data = frame(0x0, 0x1, 1, &[0; 40]);
            let stream = |authority: &[u8], coded| {
                let headers = frame(HEADERS, END_HEADERS, 1, &request_block(authority, coded));
                [PREFACE, &settings, &headers, &data].concat()
            };
            let input = stream(b"http://127.0.0.1:2379", coded);
            let expected = stream(b"127.0.0.1:2379", false);
            for piece in 1..=input.len() {
                assert_eq!(
                    feed(&input, piece),
                    expected,
                    "pieces of {piece}, huffman {coded}"
                );
            }
            // A connection that sent a URL stays examined: after requests that refer to the
            // table's entry, a URL sent again as a literal (the entry was evicted) is fixed too.
            let indexed = frame(HEADERS, END_HEADERS, 3, &[0x83, 0x86, 0xbe]);
            let again = frame(
                HEADERS,
                END_HEADERS,
                5,
                &request_block(b"http://127.0.0.1:2379", coded),
            );
            let fixed_again = frame(
                HEADERS,
                END_HEADERS,
                5,
                &request_block(b"127.0.0.1:2379", false),
            );
            let later = [&input[..], &indexed, &indexed, &again].concat();
            let expected_later = [&expected[..], &indexed, &indexed, &fixed_again].concat();
            assert_eq!(feed(&later, 10), expected_later);
        }
    }

    #[test]
    fn everything_else_passes_unchanged() {
        for authority in [&b"127.0.0.1:2379"[..], b"localhost", b"etcd.example:2379"] {
            let mut input = PREFACE.to_vec();
            input.extend(frame(
                HEADERS,
                END_HEADERS | 0x1,
                3,
                &request_block(authority, true),
            ));
            input.extend(frame(0x8, 0, 0, &[0, 0, 1, 0]));
            assert_eq!(feed(&input, 7), input);
            // After a block that needed nothing, the connection is no longer examined.
            let mut fix = AuthorityFix::default();
            fix.feed(&input[..input.len() - 3], &mut Vec::new());
            assert!(!fix.examining());
        }
        // A header block continued in CONTINUATION frames is not examined.
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &request_block(b"http://a:1", false)));
        input.extend(frame(0x9, END_HEADERS, 1, &[0x84]));
        assert_eq!(feed(&input, 5), input);
    }

    #[test]
    fn padding_and_priority_are_handled() {
        let block = request_block(b"https://10.0.0.1:2379/ignored", true);
        let mut payload = vec![3];
        payload.extend([0, 0, 0, 0, 16]);
        payload.extend(&block);
        payload.extend([0, 0, 0]);
        let input = [
            PREFACE,
            &frame(HEADERS, END_HEADERS | PADDED | PRIORITY, 5, &payload),
        ]
        .concat();
        let mut fixed = vec![0, 0, 0, 0, 16];
        fixed.extend(request_block(b"10.0.0.1:2379", false));
        let expected = [PREFACE, &frame(HEADERS, END_HEADERS | PRIORITY, 5, &fixed)].concat();
        assert_eq!(feed(&input, 11), expected);
    }

    /// Whatever the bytes, the filter does not panic, and how they are cut into reads does not
    /// change what h2 gets.
    #[test]
    fn any_bytes_in_any_pieces_give_the_same_output() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            (state >> 33) as usize
        };
        for _ in 0..300 {
            let mut input = PREFACE.to_vec();
            for _ in 0..next() % 6 {
                let length = next() % 60;
                let payload: Vec<u8> = (0..length).map(|_| next() as u8).collect();
                let kind = [HEADERS, 0x0, 0x9][next() % 3];
                input.extend(frame(kind, next() as u8, 1, &payload));
            }
            let whole = feed_lenient(&input, input.len());
            for piece in [1, 2, 5, 9, 13] {
                assert_eq!(feed_lenient(&input, piece), whole);
            }
        }
    }

    fn feed_lenient(input: &[u8], piece: usize) -> Vec<u8> {
        let mut fix = AuthorityFix::default();
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            fix.feed(chunk, &mut out);
        }
        out
    }

    #[test]
    fn a_block_that_does_not_parse_is_left_to_h2() {
        let input = [PREFACE, &frame(HEADERS, END_HEADERS, 1, &[0x41, 0x7f])].concat();
        assert_eq!(feed(&input, 3), input);
    }
}
