//! HTTP/1.1 framing: bytes in, request heads and bodies out ([`request`], [`chunked`]); answers
//! appended to a buffer ([`response`], [`status`], [`date`]). Nothing here touches a socket.
#![forbid(unsafe_code)]

pub mod chunked;
pub mod date;
pub mod request;
pub mod response;
pub mod status;
