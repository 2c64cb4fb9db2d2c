//! What a snapshot holds: the sealed JSON's records, written borrowing from the cache and read
//! with every value left raw until it is decoded into a zeroized buffer.

use std::time::{SystemTime, UNIX_EPOCH};

use secrecy::zeroize::Zeroizing;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// The sealed JSON as written: every string borrowed from the cache (no copy of a value).
#[derive(Serialize)]
pub(super) struct Body<'a> {
    pub(super) written_unix_ms: u64,
    pub(super) entries: Vec<Record<'a>>,
}

#[derive(Serialize)]
pub(super) struct Record<'a> {
    /// Cache key: the folded name, or `name/version` for a pinned version.
    pub(super) key: &'a str,
    pub(super) value: &'a str,
    pub(super) version: &'a str,
    pub(super) region: &'a str,
    pub(super) fetched_unix_ms: u64,
    pub(super) created_unix_ms: Option<u64>,
    /// What the vault said of the version besides its value (absent in older snapshots).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) metadata: Option<&'a crate::secret::Metadata>,
}

/// The sealed JSON as read: each value stays the raw JSON text inside the opened (zeroized)
/// buffer until [`unescape`] copies it into a zeroized one; serde_json's scratch buffer, which
/// it frees unzeroed, never sees a value.
#[derive(Deserialize)]
pub(super) struct BodyIn<'a> {
    pub(super) written_unix_ms: u64,
    #[serde(borrow)]
    pub(super) entries: Vec<RecordIn<'a>>,
}

#[derive(Deserialize)]
pub(super) struct RecordIn<'a> {
    pub(super) key: String,
    #[serde(borrow)]
    pub(super) value: &'a serde_json::value::RawValue,
    pub(super) version: String,
    pub(super) region: String,
    pub(super) fetched_unix_ms: u64,
    #[serde(default)]
    pub(super) created_unix_ms: Option<u64>,
    #[serde(default)]
    pub(super) metadata: Option<crate::secret::Metadata>,
}

/// How many bytes `s` takes as a JSON string (an upper bound: every control character counted
/// as `\u00XX`), quotes included.
pub(super) fn json_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// The JSON string literal `raw` (quotes included) decoded into a zeroized buffer that never
/// grows (a JSON escape is never shorter than what it stands for), then copied once into a
/// string of exactly its length. `None` for anything that is not a well-formed string.
pub(super) fn unescape(raw: &str) -> Option<SecretString> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = Zeroizing::new(String::with_capacity(inner.len()));
    let mut chars = inner.chars();
    let hex4 = |chars: &mut std::str::Chars<'_>| -> Option<u32> {
        let mut v = 0;
        for _ in 0..4 {
            v = v * 16 + chars.next()?.to_digit(16)?;
        }
        Some(v)
    };
    while let Some(c) = chars.next() {
        if c != '\\' {
            if (c as u32) < 0x20 {
                return None;
            }
            out.push(c);
            continue;
        }
        let c = match chars.next()? {
            '"' => '"',
            '\\' => '\\',
            '/' => '/',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'u' => {
                let hi = hex4(&mut chars)?;
                if (0xD800..0xDC00).contains(&hi) {
                    if chars.next()? != '\\' || chars.next()? != 'u' {
                        return None;
                    }
                    let lo = hex4(&mut chars)?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return None;
                    }
                    char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))?
                } else {
                    char::from_u32(hi)?
                }
            }
            _ => return None,
        };
        out.push(c);
    }
    let mut exact = String::with_capacity(out.len());
    exact.push_str(&out);
    Some(SecretString::from(exact))
}

pub(super) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis().min(u64::MAX as u128) as u64)
        .unwrap_or(0)
}
