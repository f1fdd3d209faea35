//! The PostgreSQL side of the shipper, through the `postgres` crate (its own small runtime,
//! on the shipper's thread only): connect, make the schema, read this node's positions, and
//! commit a batch with its positions in one transaction.
//!
//! Credentials never leave this module in text: the connection string is parsed by the
//! crate's `Config`, logs name the host and database only ([`Target::label`]), and every error
//! is described by its SQLSTATE and message, with the URL and password scrubbed from it
//! ([`Redact`]) whatever the error says.

use std::str::FromStr;
use std::time::Duration;

use postgres::config::Host;
use postgres::error::SqlState;
use postgres::{Client, NoTls, Statement};

use super::cursor::Pos;
use super::schema;
use super::shipped::{Positions, Shipped};
use crate::store::journal::Header;

/// How long a connection attempt may take when the URL does not say.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The advisory lock's first key ("usad"); the node is the second: one shipper per node.
const LOCK_KEY: i32 = 0x7573_6164;

/// What is scrubbed out of any text about the database.
#[derive(Clone)]
pub struct Redact {
    secrets: Vec<String>,
}

impl Redact {
    /// `text` with every secret replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        let mut t = text.to_string();
        for s in &self.secrets {
            if !s.is_empty() {
                t = t.replace(s.as_str(), "***");
            }
        }
        t
    }
}

/// Where the shipper writes: the parsed connection string.
pub struct Target {
    config: postgres::Config,
    pub redact: Redact,
    /// `host H db D`: what logs say of it.
    pub label: String,
}

impl Target {
    /// Parse `url` (a `postgres://` URL or `key=value` pairs). The error never holds `url`.
    pub fn parse(url: &str) -> Result<Target, String> {
        let mut redact = Redact {
            secrets: vec![url.to_string()],
        };
        let mut config = postgres::Config::from_str(url)
            .map_err(|e| redact.scrub(&format!("bad database URL: {e}")))?;
        if let Some(p) = config.get_password() {
            redact.secrets.push(String::from_utf8_lossy(p).into_owned());
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // A database that stops answering (a network split with no reset, a lock held for
        // ever) must end in an error the shipper retries, not a wait of hours: TCP keepalives
        // after 30 s idle, and no statement longer than a minute (unless the URL says).
        config.keepalives_idle(Duration::from_secs(30));
        let options = config.get_options().unwrap_or("").to_string();
        if !options.contains("statement_timeout") {
            config.options(format!("{options} -c statement_timeout=60000").trim());
        }
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let label = format!(
            "host {} db {}",
            if hosts.is_empty() {
                "(default)".to_string()
            } else {
                hosts.join(",")
            },
            config.get_dbname().unwrap_or("(default)")
        );
        let label = redact.scrub(&label);
        Ok(Target {
            config,
            redact,
            label,
        })
    }

    /// `e` as SQLSTATE and message (or the client's own description), scrubbed.
    pub fn describe(&self, e: &postgres::Error) -> String {
        let text = match e.as_db_error() {
            Some(db) => format!("SQLSTATE {}: {}", db.code().code(), db.message()),
            None => match std::error::Error::source(e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            },
        };
        self.redact.scrub(&text)
    }
}

/// Why a batch failed.
enum Fail {
    Pg(postgres::Error),
    Copy(std::io::Error),
}

impl From<postgres::Error> for Fail {
    fn from(e: postgres::Error) -> Fail {
        Fail::Pg(e)
    }
}

/// A connection ready to ship: schema made, staging table there, the node's lock held.
pub struct Conn {
    client: Client,
    upsert: Statement,
}

impl Conn {
    /// Connect, make the schema if missing, take node `node`'s lock (one shipper per node).
    pub fn open(t: &Target, node: u32) -> Result<Conn, String> {
        let d = |e: postgres::Error| t.describe(&e);
        let mut client = t.config.connect(NoTls).map_err(d)?;
        let locked: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&LOCK_KEY, &(node as i32)],
            )
            .map_err(d)?
            .get(0);
        if !locked {
            return Err(format!(
                "another shipper for node {node} is connected to this database"
            ));
        }
        client.batch_execute(schema::DDL).map_err(d)?;
        client.batch_execute(schema::STAGE).map_err(d)?;
        let upsert = client.prepare(schema::UPSERT).map_err(d)?;
        Ok(Conn { client, upsert })
    }

    /// Node `node`'s committed positions.
    pub fn load(&mut self, t: &Target, node: u32) -> Result<Positions, String> {
        let rows = self
            .client
            .query(schema::LOAD, &[&(node as i32)])
            .map_err(|e| t.describe(&e))?;
        let mut p = Positions::new();
        for r in rows {
            let (base, stripes, stripe): (i64, i32, i32) = (r.get(0), r.get(1), r.get(2));
            let (seq, offset, shipped, last_id): (i32, i64, i64, i64) =
                (r.get(3), r.get(4), r.get(5), r.get(6));
            let key = Header {
                base: base as u64,
                stripes: stripes as u32,
                stripe: stripe as u32,
            };
            let s = Shipped {
                pos: Pos {
                    seq: seq as u32,
                    offset: offset as u64,
                },
                shipped: shipped as u64,
                last_id: last_id as u64,
            };
            p.insert(key, s);
        }
        Ok(p)
    }

    /// One transaction: the rows of `copy` (a whole binary COPY stream, or empty: no rows)
    /// into `usages`, and the `moved` stripes' positions. The rows are copied straight into
    /// `usages`; if one is there already (SQLSTATE 23505: a relinked segment, positions reset
    /// by hand) the transaction is rolled back and done again through the staging table with
    /// `ON CONFLICT (id) DO NOTHING`.
    pub fn ship(
        &mut self,
        t: &Target,
        node: u32,
        copy: &[u8],
        moved: &Positions,
    ) -> Result<(), String> {
        let first = self.ship_via(node, copy, moved, false);
        let done = match first {
            Err(Fail::Pg(e)) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                self.ship_via(node, copy, moved, true)
            }
            r => r,
        };
        done.map_err(|e| match e {
            Fail::Pg(e) => t.describe(&e),
            Fail::Copy(e) => t.redact.scrub(&format!("COPY cut short: {e}")),
        })
    }

    fn ship_via(
        &mut self,
        node: u32,
        copy: &[u8],
        moved: &Positions,
        staged: bool,
    ) -> Result<(), Fail> {
        let mut tx = self.client.transaction()?;
        if !copy.is_empty() {
            let mut w = tx.copy_in(if staged {
                schema::COPY
            } else {
                schema::COPY_DIRECT
            })?;
            // A failed write rolls the transaction back (dropped uncommitted).
            std::io::Write::write_all(&mut w, copy).map_err(Fail::Copy)?;
            w.finish()?;
            if staged {
                tx.execute(schema::INSERT, &[])?;
            }
        }
        for (k, s) in moved {
            let args: [&(dyn postgres::types::ToSql + Sync); 8] = [
                &(node as i32),
                &(k.base as i64),
                &(k.stripes as i32),
                &(k.stripe as i32),
                &(s.pos.seq as i32),
                &(s.pos.offset as i64),
                &(s.shipped as i64),
                &(s.last_id as i64),
            ];
            tx.execute(&self.upsert, &args)?;
        }
        Ok(tx.commit()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_error_or_label_names_the_password_or_the_url() {
        let urls = [
            "postgresql://alice:s3cretPW@%2Fnonexistent%2Fdir/app?connect_timeout=1",
            "host=/nonexistent/dir user=alice password=s3cretPW dbname=app connect_timeout=1",
            "postgresql://alice:s3cretPW@127.0.0.1:1/app?connect_timeout=1",
        ];
        for url in urls {
            let t = Target::parse(url).expect("parses");
            assert!(!t.label.contains("s3cretPW"), "{}", t.label);
            assert!(t.label.contains("app"), "{}", t.label);
            let e = Conn::open(&t, 0).err().expect("nothing listens there");
            assert!(!e.contains("s3cretPW") && !e.contains(url), "{e}");
        }
        let bad = "postgresql://alice:s3cretPW@host/app?sslmode=s3cretPW";
        let e = Target::parse(bad).err().expect("a bad sslmode");
        assert!(!e.contains("s3cretPW"), "{e}");
    }

    #[test]
    fn scrub_replaces_every_secret() {
        let r = Redact {
            secrets: vec!["postgres://u:pw@h/d".into(), "pw".into()],
        };
        assert_eq!(r.scrub("at postgres://u:pw@h/d: pw!"), "at ***: ***!");
    }
}
