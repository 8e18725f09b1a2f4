//! Signed-request client for a QingCloud-style IaaS API.
//!
//! - [`sign`]: QingCloud signature v1 and Tencent TC3-HMAC-SHA256, golden-tested.
//! - [`params`]: flat `x.n.y` parameters, built from request structs and read back.
//! - [`codes`]: `ret_code` values and their retry classes.
//! - [`model`]: resource records shared with the emulator.

pub mod codes;
pub mod model;
pub mod params;
pub mod sign;
