//! The embedded QingCloud-style IaaS.

pub mod dataplane;
