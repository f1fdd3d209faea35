//! A strict scanner for the usage object (RFC 8259), zero-allocation: strings are unescaped in
//! place in the request body, and the result borrows from it.
//!
//! Every byte of the document is checked (a syntax error anywhere is [`JsonError::Syntax`], even
//! after a semantic problem was seen); unknown keys and their values are validated and ignored.

use crate::time::{self, Timestamp};

/// Longest `patientId` or `medication` string, in UTF-8 bytes after unescaping.
pub const MAX_STR: usize = 64;
/// Numeric `patientId`s are below 2^53 (exact in every JSON implementation).
pub const PATIENT_NUM_LIMIT: u64 = 1 << 53;
/// Deepest nesting of arrays and objects accepted inside unknown values.
pub const MAX_DEPTH: usize = 128;

/// The known keys of the usage object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    PatientId,
    Timestamp,
    Medication,
}

/// Why a body is not a valid usage; each maps to a `400` with its own reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonError {
    /// Not JSON at all (or bad UTF-8, a lone surrogate, a raw control character, too deep).
    Syntax,
    /// Valid JSON, but not an object.
    NotObject,
    Duplicate(Field),
    Missing(Field),
    /// Present but of the wrong type, length or value.
    Invalid(Field),
}

/// `patientId`, in the type it came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Patient<'a> {
    Str(&'a [u8]),
    Num(u64),
}

/// A validated usage, borrowing its strings from the (unescaped) body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage<'a> {
    pub patient: Patient<'a>,
    pub timestamp: Timestamp,
    pub medication: &'a [u8],
}

/// Scan `body` as one usage object. Strings are unescaped in place, so `body` is changed.
pub fn scan_usage(body: &mut [u8]) -> Result<Usage<'_>, JsonError> {
    let mut s = Scanner { buf: body, pos: 0 };
    let fields = s.document()?;
    let buf: &[u8] = s.buf;
    let patient = match fields.patient.ok_or(JsonError::Missing(Field::PatientId))? {
        PatientAt::Str(start, len) => Patient::Str(&buf[start..start + len]),
        PatientAt::Num(n) => Patient::Num(n),
    };
    let timestamp = fields
        .timestamp
        .ok_or(JsonError::Missing(Field::Timestamp))?;
    let (start, len) = fields
        .medication
        .ok_or(JsonError::Missing(Field::Medication))?;
    Ok(Usage {
        patient,
        timestamp,
        medication: &buf[start..start + len],
    })
}

#[derive(Clone, Copy)]
enum PatientAt {
    Str(usize, usize),
    Num(u64),
}

#[derive(Default)]
struct Fields {
    patient: Option<PatientAt>,
    timestamp: Option<Timestamp>,
    medication: Option<(usize, usize)>,
    /// The first semantic error; reported only if the whole document is valid JSON.
    error: Option<JsonError>,
}

/// A JSON number as far as the usage object cares.
struct Number {
    negative: bool,
    /// The magnitude, when the number is an integer (no fraction or exponent) below 10^18.
    integer: Option<u64>,
}

/// Marker for a syntax error inside the scanner.
struct Syntax;

impl From<Syntax> for JsonError {
    fn from(_: Syntax) -> Self {
        JsonError::Syntax
    }
}

struct Scanner<'b> {
    buf: &'b mut [u8],
    /// Next byte to read. Bytes before it that belonged to strings may have been rewritten.
    pos: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect(&mut self, b: u8) -> Result<(), Syntax> {
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(Syntax)
        }
    }

    fn document(&mut self) -> Result<Fields, JsonError> {
        self.ws();
        if self.peek() != Some(b'{') {
            self.value(0)?;
            self.ws();
            return Err(if self.pos == self.buf.len() {
                JsonError::NotObject
            } else {
                JsonError::Syntax
            });
        }
        self.pos += 1;
        self.ws();
        let mut fields = Fields::default();
        if self.peek() == Some(b'}') {
            self.pos += 1;
        } else {
            loop {
                self.member(&mut fields)?;
                self.ws();
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        self.ws();
                    }
                    Some(b'}') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(JsonError::Syntax),
                }
            }
        }
        self.ws();
        if self.pos != self.buf.len() {
            return Err(JsonError::Syntax);
        }
        match fields.error {
            Some(e) => Err(e),
            None => Ok(fields),
        }
    }

    /// `"key" : value`, keeping the value when the key is known.
    fn member(&mut self, f: &mut Fields) -> Result<(), Syntax> {
        if self.peek() != Some(b'"') {
            return Err(Syntax);
        }
        let (start, len) = self.string()?;
        let field = match &self.buf[start..start + len] {
            b"patientId" => Some(Field::PatientId),
            b"timestamp" => Some(Field::Timestamp),
            b"medication" => Some(Field::Medication),
            _ => None,
        };
        self.ws();
        self.expect(b':')?;
        self.ws();
        let Some(field) = field else {
            return self.value(1);
        };
        let seen = match field {
            Field::PatientId => f.patient.is_some(),
            Field::Timestamp => f.timestamp.is_some(),
            Field::Medication => f.medication.is_some(),
        };
        let mut problem = seen.then_some(JsonError::Duplicate(field));
        let invalid = Some(JsonError::Invalid(field));
        match (field, self.peek()) {
            (Field::PatientId | Field::Medication, Some(b'"')) => {
                let (start, len) = self.string()?;
                if len == 0 || len > MAX_STR {
                    problem = problem.or(invalid);
                } else if field == Field::PatientId {
                    f.patient = Some(PatientAt::Str(start, len));
                } else {
                    f.medication = Some((start, len));
                }
            }
            (Field::PatientId, Some(b'-' | b'0'..=b'9')) => match self.number()? {
                Number {
                    negative: false,
                    integer: Some(n),
                } if n < PATIENT_NUM_LIMIT => {
                    f.patient = Some(PatientAt::Num(n));
                }
                _ => problem = problem.or(invalid),
            },
            (Field::Timestamp, Some(b'"')) => {
                let (start, len) = self.string()?;
                match time::parse(&self.buf[start..start + len]) {
                    Some(ts) => f.timestamp = Some(ts),
                    None => problem = problem.or(invalid),
                }
            }
            (Field::Timestamp, Some(b'-' | b'0'..=b'9')) => {
                let n = self.number()?;
                let ms = n.integer.and_then(|m| i64::try_from(m).ok());
                match ms
                    .map(|m| if n.negative { -m } else { m })
                    .and_then(time::from_epoch_ms)
                {
                    Some(ts) => f.timestamp = Some(ts),
                    None => problem = problem.or(invalid),
                }
            }
            _ => {
                self.value(1)?;
                problem = problem.or(invalid);
            }
        }
        f.error = f.error.or(problem);
        Ok(())
    }

    /// Any JSON value at nesting `depth`, validated and skipped.
    fn value(&mut self, depth: usize) -> Result<(), Syntax> {
        match self.peek().ok_or(Syntax)? {
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => self.number().map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            open @ (b'[' | b'{') => {
                if depth >= MAX_DEPTH {
                    return Err(Syntax);
                }
                let close = if open == b'[' { b']' } else { b'}' };
                self.pos += 1;
                self.ws();
                if self.peek() == Some(close) {
                    self.pos += 1;
                    return Ok(());
                }
                loop {
                    if open == b'{' {
                        if self.peek() != Some(b'"') {
                            return Err(Syntax);
                        }
                        self.string()?;
                        self.ws();
                        self.expect(b':')?;
                        self.ws();
                    }
                    self.value(depth + 1)?;
                    self.ws();
                    match self.peek() {
                        Some(b',') => {
                            self.pos += 1;
                            self.ws();
                        }
                        Some(b) if b == close => {
                            self.pos += 1;
                            return Ok(());
                        }
                        _ => return Err(Syntax),
                    }
                }
            }
            _ => Err(Syntax),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Syntax> {
        if self.buf[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(Syntax)
        }
    }

    fn digits(&mut self) -> usize {
        let n = self.buf[self.pos..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        self.pos += n;
        n
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<Number, Syntax> {
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        let start = self.pos;
        let n = self.digits();
        if n == 0 || (n > 1 && self.buf[start] == b'0') {
            return Err(Syntax);
        }
        let mut integer = (n <= 18).then(|| {
            self.buf[start..start + n]
                .iter()
                .fold(0u64, |v, &d| v * 10 + u64::from(d - b'0'))
        });
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(Syntax);
            }
            integer = None;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(Syntax);
            }
            integer = None;
        }
        Ok(Number { negative, integer })
    }

    /// A string starting at the `"` under the cursor, unescaped in place: `(start, len)` of its
    /// content in `buf`. The writer index never passes the reader, since every escape is at
    /// least as long as the UTF-8 it stands for.
    fn string(&mut self) -> Result<(usize, usize), Syntax> {
        self.pos += 1;
        let start = self.pos;
        // Fast path, the usual case: printable ASCII up to the closing quote. Nothing to
        // rewrite and nothing to validate as UTF-8.
        let n = plain_run(&self.buf[start..]);
        if self.buf.get(start + n) == Some(&b'"') {
            self.pos = start + n + 1;
            return Ok((start, n));
        }
        let mut w = start;
        loop {
            let b = self.peek().ok_or(Syntax)?;
            self.pos += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let esc = self.peek().ok_or(Syntax)?;
                    self.pos += 1;
                    let plain = match esc {
                        b'"' => b'"',
                        b'\\' => b'\\',
                        b'/' => b'/',
                        b'b' => 0x08,
                        b'f' => 0x0c,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'u' => {
                            let c = self.unicode_escape()?;
                            w += c.encode_utf8(&mut self.buf[w..]).len();
                            continue;
                        }
                        _ => return Err(Syntax),
                    };
                    self.buf[w] = plain;
                    w += 1;
                }
                0..=0x1f => return Err(Syntax),
                _ => {
                    self.buf[w] = b;
                    w += 1;
                }
            }
        }
        if std::str::from_utf8(&self.buf[start..w]).is_err() {
            return Err(Syntax);
        }
        Ok((start, w - start))
    }

    /// After `\u`: four hex digits, and for a high surrogate the `\uXXXX` low one after it.
    fn unicode_escape(&mut self) -> Result<char, Syntax> {
        let hi = self.hex4()?;
        let code = match hi {
            0xD800..=0xDBFF => {
                self.expect(b'\\')?;
                self.expect(b'u')?;
                let lo = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&lo) {
                    return Err(Syntax);
                }
                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(Syntax),
            _ => hi,
        };
        char::from_u32(code).ok_or(Syntax)
    }

    fn hex4(&mut self) -> Result<u32, Syntax> {
        let digits = self.buf.get(self.pos..self.pos + 4).ok_or(Syntax)?;
        let mut v = 0;
        for &d in digits {
            v = v * 16 + (d as char).to_digit(16).ok_or(Syntax)?;
        }
        self.pos += 4;
        Ok(v)
    }
}

/// Whether `b` can stand for itself in a string without a second look: printable ASCII other
/// than `"` and `\\`.
const fn is_plain(b: u8) -> bool {
    b >= 0x20 && b < 0x80 && b != b'"' && b != b'\\'
}

/// How many leading bytes of `s` are [`is_plain`], eight at a time (SWAR): a byte is special
/// when it is below 0x20, has its high bit set, or equals `"` or `\\`. The per-byte tests
/// borrow only out of a special byte, so the lowest flagged byte is exact.
fn plain_run(s: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut i = 0;
    while let Some(word) = s.get(i..i + 8) {
        let w = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        let special = (w.wrapping_sub(ONES * 0x20) & !w & HIGH)
            | (w & HIGH)
            | zero_byte(w ^ (ONES * u64::from(b'"')))
            | zero_byte(w ^ (ONES * u64::from(b'\\')));
        if special != 0 {
            return i + (special.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + s[i..].iter().take_while(|&&b| is_plain(b)).count()
}

#[cfg(test)]
mod tests;
