//! A resumable, in-place decoder for `Transfer-Encoding: chunked` request bodies.
//!
//! The body region of the connection buffer starts with the decoded bytes so far
//! (`..decoded`), then bytes already parsed and no longer needed (`decoded..consumed`), then
//! bytes not yet parsed. [`Chunked::advance`] parses from where it stopped (never rescans) and
//! moves chunk data down; [`Chunked::compact`] drops the parsed gap so the buffer never needs
//! more than the decoded body plus one partial line. Trailers are read and ignored.

/// Longest chunk-size line extension, and all trailer lines together, in bytes.
const MAX_LINE_EXTRA: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// Hex digits of a chunk size; `digits` counts them.
    #[default]
    Size,
    /// After the size: extensions up to CR.
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    Trailer,
    TrailerLf,
    FinalLf,
    Done,
}

/// How far a chunked body has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    NeedMore,
    /// The body is `region[..decoded]`; the encoded form ended at `region[consumed]`.
    Done {
        decoded: usize,
        consumed: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    Malformed,
    TooLarge,
}

impl From<ChunkError> for crate::http::status::Reject {
    /// A bad chunk is `400` and closes; a body past its limit is `413`.
    fn from(e: ChunkError) -> Self {
        match e {
            ChunkError::Malformed => Self::BadRequest("malformed chunked body"),
            ChunkError::TooLarge => Self::PayloadTooLarge,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Chunked {
    state: State,
    decoded: usize,
    consumed: usize,
    /// Chunk size being read, or data bytes left in the current chunk.
    size: u64,
    digits: u8,
    /// Extension and trailer bytes seen, against [`MAX_LINE_EXTRA`].
    extra: usize,
    /// Decoded bytes already used up and dropped ([`Chunked::drop_front`]); they still count
    /// against the body limit.
    dropped: usize,
}

impl Chunked {
    /// Parse what `region` (the body region, from the first body byte to the end of the
    /// buffered data) holds beyond what was parsed before.
    pub fn advance(&mut self, region: &mut [u8], max_body: usize) -> Result<Progress, ChunkError> {
        use ChunkError::Malformed;
        while self.consumed < region.len() {
            if self.state == State::Data {
                let n = (region.len() - self.consumed).min(self.size as usize);
                region.copy_within(self.consumed..self.consumed + n, self.decoded);
                self.decoded += n;
                self.consumed += n;
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = region[self.consumed];
            self.consumed += 1;
            self.state = match (self.state, b) {
                (State::Size, _) if b.is_ascii_hexdigit() => {
                    if self.digits == 15 {
                        return Err(Malformed);
                    }
                    self.digits += 1;
                    self.size = self.size * 16 + u64::from((b as char).to_digit(16).unwrap_or(0));
                    State::Size
                }
                (State::Size, b';' | b' ' | b'\t') if self.digits > 0 => State::Ext,
                (State::Size, b'\r') if self.digits > 0 => State::SizeLf,
                (State::Ext, b'\r') => State::SizeLf,
                (State::Ext, b'\n') => return Err(Malformed),
                (State::Ext, _) => {
                    self.extra += 1;
                    if self.extra > MAX_LINE_EXTRA {
                        return Err(Malformed);
                    }
                    State::Ext
                }
                (State::SizeLf, b'\n') if self.size == 0 => State::TrailerStart,
                (State::SizeLf, b'\n') => {
                    if (self.dropped + self.decoded) as u64 + self.size > max_body as u64 {
                        return Err(ChunkError::TooLarge);
                    }
                    self.digits = 0;
                    State::Data
                }
                (State::DataCr, b'\r') => State::DataLf,
                (State::DataLf, b'\n') => State::Size,
                (State::TrailerStart, b'\r') => State::FinalLf,
                (State::TrailerStart | State::Trailer, b'\n') => return Err(Malformed),
                (State::Trailer, b'\r') => State::TrailerLf,
                (State::TrailerStart | State::Trailer, _) => {
                    self.extra += 1;
                    if self.extra > MAX_LINE_EXTRA {
                        return Err(Malformed);
                    }
                    State::Trailer
                }
                (State::TrailerLf, b'\n') => State::TrailerStart,
                (State::FinalLf, b'\n') => {
                    self.state = State::Done;
                    return Ok(Progress::Done {
                        decoded: self.decoded,
                        consumed: self.consumed,
                    });
                }
                _ => return Err(Malformed),
            };
        }
        Ok(Progress::NeedMore)
    }

    /// Decoded bytes at the front of the region, so far.
    pub fn decoded(&self) -> usize {
        self.decoded
    }

    /// The first `n` decoded bytes were used up (a streamed body): `region[n..]` moves to the
    /// front. Returns `n`, by which the caller shortens its buffered length.
    pub fn drop_front(&mut self, region: &mut [u8], n: usize) -> usize {
        debug_assert!(n <= self.decoded);
        if n > 0 {
            region.copy_within(n.., 0);
            self.decoded -= n;
            self.consumed -= n;
            self.dropped += n;
        }
        n
    }

    /// Drop the parsed-but-unneeded bytes between the decoded body and the unparsed rest:
    /// `region[consumed..]` moves to `region[decoded..]`. Returns how many bytes were freed
    /// (the caller shortens its buffered length by that much).
    pub fn compact(&mut self, region: &mut [u8]) -> usize {
        let gap = self.consumed - self.decoded;
        if gap > 0 {
            region.copy_within(self.consumed.., self.decoded);
            self.consumed = self.decoded;
        }
        gap
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feed `input` in the given pieces as a connection would (append, advance, compact).
    /// The decoded body and the bytes after it.
    type Decoded = (Vec<u8>, Vec<u8>);

    fn feed(pieces: &[&[u8]], max: usize) -> Result<Option<Decoded>, ChunkError> {
        let mut buf = Vec::new();
        let mut c = Chunked::default();
        for p in pieces {
            buf.extend_from_slice(p);
            match c.advance(&mut buf, max)? {
                Progress::NeedMore => {
                    let freed = c.compact(&mut buf);
                    buf.truncate(buf.len() - freed);
                }
                Progress::Done { decoded, consumed } => {
                    return Ok(Some((buf[..decoded].to_vec(), buf[consumed..].to_vec())));
                }
            }
        }
        Ok(None)
    }

    fn encode(body: &[u8], sizes: &[usize], ext: bool, trailer: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = body;
        let mut i = 0;
        while !rest.is_empty() {
            let n = sizes.get(i).copied().unwrap_or(7).clamp(1, rest.len());
            i += 1;
            out.extend_from_slice(format!("{n:X}").as_bytes());
            if ext {
                out.extend_from_slice(b";name=\"v\"");
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&rest[..n]);
            out.extend_from_slice(b"\r\n");
            rest = &rest[n..];
        }
        out.extend_from_slice(b"0\r\n");
        if trailer {
            out.extend_from_slice(b"X-Checksum: abc\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    #[test]
    fn table() {
        let ok: &[(&[u8], &[u8])] = &[
            (b"0\r\n\r\n", b""),
            (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
            (
                b"5;a=b\r\nhello\r\n6\r\n world\r\n0\r\nT: v\r\n\r\n",
                b"hello world",
            ),
            (b"a\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
        ];
        for &(input, body) in ok {
            let (got, rest) = feed(&[input], 100).unwrap().unwrap();
            assert_eq!((got.as_slice(), rest.as_slice()), (body, &b""[..]));
        }
        let bad: &[&[u8]] = &[
            b"\r\n",
            b"x\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n",
            b"0\r\nT: v\n\r\n",
            b"1000000000000000\r\n",
            b"-1\r\n",
        ];
        for input in bad {
            assert_eq!(
                feed(&[input], 100),
                Err(ChunkError::Malformed),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        assert_eq!(feed(&[b"65\r\n"], 100), Err(ChunkError::TooLarge));
        assert_eq!(feed(&[b"64\r\n"], 100), Ok(None));
        assert_eq!(feed(&[b"5\r\nhel"], 100), Ok(None));
    }

    #[test]
    fn the_next_request_is_left_alone() {
        let (body, rest) = feed(&[b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n"], 10)
            .unwrap()
            .unwrap();
        assert_eq!(
            (body.as_slice(), rest.as_slice()),
            (&b"abc"[..], &b"GET / HTTP/1.1\r\n"[..])
        );
    }

    proptest! {
        /// At every split, and byte by byte, the answer is the one for the whole input.
        #[test]
        fn any_split_gives_the_same_body(
            body in proptest::collection::vec(any::<u8>(), 0..300),
            sizes in proptest::collection::vec(1usize..40, 0..20),
            ext: bool, trailer: bool, cut in any::<proptest::sample::Index>(),
        ) {
            let enc = encode(&body, &sizes, ext, trailer);
            let whole = feed(&[&enc], 300).unwrap().unwrap();
            prop_assert_eq!(&whole.0, &body);
            let at = cut.index(enc.len() + 1);
            prop_assert_eq!(feed(&[&enc[..at], &enc[at..]], 300).unwrap().unwrap(), whole.clone());
            let bytes: Vec<&[u8]> = enc.chunks(1).collect();
            prop_assert_eq!(feed(&bytes, 300).unwrap().unwrap(), whole);
        }

        #[test]
        fn never_panics(input in proptest::collection::vec(any::<u8>(), 0..200), split in 0usize..200) {
            let split = split.min(input.len());
            let _ = feed(&[&input[..split], &input[split..]], 64);
        }
    }
}
