//! The usage object: a strict, zero-allocation scanner ([`scan`]) and the escaping writer for
//! answers ([`emit`]). Bytes in, values or bytes out: nothing here touches a socket.
#![forbid(unsafe_code)]

pub mod emit;
pub mod scan;
