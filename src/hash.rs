//! Temporary: the config helper moves hash_bytes here.
pub use crate::upstream::balance::hash_bytes;
