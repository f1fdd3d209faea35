//! The tables in PostgreSQL (the DDL `usaged ship --print-schema` prints), the statements of a
//! batch, and the rows as `COPY … (FORMAT binary)` takes them.
//!
//! A row holds what `GET /api/usages/{id}` answers: `patient_id` as GET shows it without JSON
//! quotes (`patient_is_number` says which type), `ts` the instant and `utc_offset_min` the
//! offset it was written in (GET's `timestamp` is `ts` shown at that offset), `medication`.

use crate::json::scan::{Patient, Usage};

/// The tables and the index, created if missing.
pub const DDL: &str = "\
CREATE TABLE IF NOT EXISTS usages (
    id                bigint      PRIMARY KEY,
    patient_id        text        NOT NULL,  -- as GET shows it, without JSON quotes
    patient_is_number boolean     NOT NULL,  -- GET returns a number (true) or a string
    ts                timestamptz NOT NULL,  -- the instant
    utc_offset_min    smallint    NOT NULL,  -- the offset it was given in (GET's timestamp)
    medication        text        NOT NULL,
    node              integer     NOT NULL   -- the node that stored it (--node)
);
CREATE INDEX IF NOT EXISTS usages_patient_ts ON usages (patient_id, ts);
CREATE TABLE IF NOT EXISTS usaged_shipped (
    node        integer NOT NULL,
    base        bigint  NOT NULL,   -- the segment key: epoch base, stripes, stripe (global)
    stripes     integer NOT NULL,
    stripe      integer NOT NULL,
    seq         integer NOT NULL,   -- position: the next byte to read is (seq, byte_offset)
    byte_offset bigint  NOT NULL,
    shipped     bigint  NOT NULL,   -- usages of this stripe shipped so far
    last_id     bigint  NOT NULL,
    updated     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node, base, stripes, stripe)
);
";

/// The session's staging table, emptied by every commit.
pub const STAGE: &str = "CREATE TEMP TABLE IF NOT EXISTS usaged_stage \
     (LIKE usages INCLUDING DEFAULTS) ON COMMIT DELETE ROWS";
pub const COPY: &str = "COPY usaged_stage FROM STDIN (FORMAT binary)";
/// The fast path: straight into the table (fails on an id already there).
pub const COPY_DIRECT: &str = "COPY usages FROM STDIN (FORMAT binary)";
pub const INSERT: &str =
    "INSERT INTO usages SELECT * FROM usaged_stage ON CONFLICT (id) DO NOTHING";
/// `$1` node … `$8` last id.
pub const UPSERT: &str = "\
INSERT INTO usaged_shipped (node, base, stripes, stripe, seq, byte_offset, shipped, last_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (node, base, stripes, stripe) DO UPDATE SET
    seq = EXCLUDED.seq, byte_offset = EXCLUDED.byte_offset, shipped = EXCLUDED.shipped,
    last_id = EXCLUDED.last_id, updated = now()";
pub const LOAD: &str = "SELECT base, stripes, stripe, seq, byte_offset, shipped, last_id \
     FROM usaged_shipped WHERE node = $1";

/// Columns of a row.
const FIELDS: i16 = 7;
/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// The binary COPY stream's header: signature, flags, header extension length.
pub fn begin(out: &mut Vec<u8>) {
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
}

/// The stream's trailer.
pub fn end(out: &mut Vec<u8>) {
    out.extend_from_slice(&(-1i16).to_be_bytes());
}

/// Append usage `id` stored by `node` as one row of the binary COPY stream.
pub fn row(out: &mut Vec<u8>, id: u64, u: &Usage<'_>, node: u32) {
    out.extend_from_slice(&FIELDS.to_be_bytes());
    field(out, &(id as i64).to_be_bytes());
    let mut num = itoa::Buffer::new();
    let (patient, is_number): (&[u8], bool) = match u.patient {
        Patient::Num(n) => (num.format(n).as_bytes(), true),
        Patient::Str(s) => (s, false),
    };
    text(out, patient);
    field(out, &[u8::from(is_number)]);
    let us = u.timestamp.ms * 1000 - PG_EPOCH_US;
    field(out, &us.to_be_bytes());
    field(out, &u.timestamp.offset_min.to_be_bytes());
    text(out, u.medication);
    field(out, &(node as i32).to_be_bytes());
}

fn field(out: &mut Vec<u8>, v: &[u8]) {
    out.extend_from_slice(&(v.len() as i32).to_be_bytes());
    out.extend_from_slice(v);
}

/// The replacement for a NUL character, which PostgreSQL's `text` cannot hold (the API takes
/// `\u0000`): U+FFFD.
const NUL_AS: &[u8] = "\u{fffd}".as_bytes();

/// A `text` value: the UTF-8 bytes, each NUL replaced by [`NUL_AS`].
fn text(out: &mut Vec<u8>, s: &[u8]) {
    let nuls = s.iter().filter(|&&b| b == 0).count();
    if nuls == 0 {
        return field(out, s);
    }
    let len = s.len() + nuls * (NUL_AS.len() - 1);
    out.extend_from_slice(&(len as i32).to_be_bytes());
    for &b in s {
        if b == 0 {
            out.extend_from_slice(NUL_AS);
        } else {
            out.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Timestamp;

    #[test]
    fn a_row_has_seven_fields_in_table_order() {
        let u = Usage {
            patient: Patient::Num(42),
            timestamp: Timestamp {
                ms: 946_684_800_001,
                offset_min: -90,
            },
            medication: b"a\0b",
        };
        let mut out = Vec::new();
        row(&mut out, 7, &u, 3);
        let mut want = vec![0, 7];
        want.extend_from_slice(&[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 7]);
        want.extend_from_slice(&[0, 0, 0, 2, b'4', b'2']);
        want.extend_from_slice(&[0, 0, 0, 1, 1]);
        want.extend_from_slice(&[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x03, 0xe8]);
        want.extend_from_slice(&[0, 0, 0, 2, 0xff, 0xa6]);
        want.extend_from_slice(&[0, 0, 0, 5, b'a', 0xef, 0xbf, 0xbd, b'b']);
        want.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 3]);
        assert_eq!(out, want);
    }

    #[test]
    fn every_create_is_idempotent() {
        let creates = DDL.matches("CREATE").count();
        assert_eq!(creates, DDL.matches("IF NOT EXISTS").count());
    }
}
