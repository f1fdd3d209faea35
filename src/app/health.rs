//! `GET /health` and `GET /`: the process is up and serving.

use super::{Answer, persist};
use crate::http::request::{Head, Method};
use crate::http::response::{self, Extra};
use crate::http::status::Reject;

const BODY: &[u8] = br#"{"status":"ok"}"#;

pub fn get(head: &Head, a: &mut Answer<'_>) -> Result<bool, Reject> {
    let p = persist(head, a.force_close);
    response::head(
        a.out,
        b"HTTP/1.1 200 OK\r\n",
        a.date.text(),
        response::JSON,
        BODY.len(),
        Extra::None,
        p,
    );
    if head.method != Method::Head {
        a.out.extend_from_slice(BODY);
    }
    Ok(p == response::Persist::Close)
}
