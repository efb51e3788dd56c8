//! A bounds-checked reader of zip archives held in memory.
//!
//! The directory (end record, zip64 end record, central directory) is parsed here with every
//! offset and size checked against the buffer, so a corrupt or hostile archive is an error, never
//! a panic or a large allocation. Stored records (all that `torch.save` and libtorch write) are
//! borrowed straight from the buffer without a CRC check, like PyTorch does. Deflated records are
//! inflated by the `zip` crate from a local header rebuilt here, with the declared size bounded by
//! the compressed size (deflate cannot expand more than 1032:1).
use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;
use std::io::Read;

/// Largest record this reader inflates.
const MAX_INFLATED: u64 = 1 << 31;
/// What all inflated records together may take, beyond `INFLATE_FACTOR` times the archive's size.
const INFLATE_ALLOWANCE: u64 = 64 << 20;
const INFLATE_FACTOR: u64 = 64;

/// One record of the central directory.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// The record's name (lossily decoded when it is not UTF-8).
    pub name: String,
    flags: u16,
    method: u16,
    crc: u32,
    compressed: u64,
    size: u64,
    header_offset: u64,
}

/// A parsed archive.
#[derive(Debug)]
pub(super) struct Archive<'a> {
    bytes: &'a [u8],
    /// Records in central directory order.
    pub entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
    /// Bytes that inflating records may still produce.
    inflate_budget: Cell<u64>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

const EOCD: u32 = 0x0605_4b50;
const ZIP64_LOCATOR: u32 = 0x0706_4b50;
const ZIP64_EOCD: u32 = 0x0606_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const LOCAL: u32 = 0x0403_4b50;

const TRUNC: &str = "truncated or corrupt zip archive";

impl<'a> Archive<'a> {
    /// Parses the directory of the archive in `bytes`.
    pub(super) fn parse(bytes: &'a [u8]) -> Result<Self, String> {
        let len = bytes.len();
        if len < 22 {
            return Err(format!("{TRUNC} (only {len} bytes, no end of central directory record)"));
        }
        // The end record is the last thing in the file, followed by a comment of at most 64 KiB.
        let lowest = (len - 22).saturating_sub(0xffff);
        let mut eocd = None;
        let mut pos = len - 22;
        loop {
            if u32_at(bytes, pos) == Some(EOCD) {
                let comment = usize::from(u16_at(bytes, pos + 20).unwrap_or(0));
                if pos + 22 + comment <= len {
                    eocd = Some(pos);
                    break;
                }
            }
            if pos == lowest {
                break;
            }
            pos -= 1;
        }
        let eocd = eocd.ok_or_else(|| format!("{TRUNC} (no end of central directory record)"))?;
        let field = |at: usize| u32_at(bytes, eocd + at).map(u64::from).unwrap_or(0);
        let mut count = u64::from(u16_at(bytes, eocd + 10).unwrap_or(0));
        let mut cd_size = field(12);
        let mut cd_offset = field(16);
        // zip64: a locator right before the end record points to the zip64 end record
        if eocd >= 20 && u32_at(bytes, eocd - 20) == Some(ZIP64_LOCATOR) {
            let at = u64_at(bytes, eocd - 20 + 8).unwrap_or(u64::MAX);
            let at = usize::try_from(at).ok().filter(|&a| a.checked_add(56).is_some_and(|e| e <= eocd - 20));
            let at = at.ok_or_else(|| format!("{TRUNC} (zip64 end record out of range)"))?;
            if u32_at(bytes, at) != Some(ZIP64_EOCD) {
                return Err(format!("{TRUNC} (bad zip64 end record signature)"));
            }
            count = u64_at(bytes, at + 32).unwrap_or(0);
            cd_size = u64_at(bytes, at + 40).unwrap_or(0);
            cd_offset = u64_at(bytes, at + 48).unwrap_or(0);
        }
        let cd_end = cd_offset.checked_add(cd_size).filter(|&e| e <= eocd as u64);
        let (cd_start, cd_end) = match cd_end {
            Some(e) => (cd_offset as usize, e as usize),
            None => {
                return Err(format!(
                    "{TRUNC} (central directory at {cd_offset}+{cd_size} lies outside the {len}-byte file)"
                ))
            }
        };
        let cd = &bytes[cd_start..cd_end];
        let mut entries = Vec::with_capacity(count.min(cd.len() as u64 / 46) as usize);
        let mut by_name = HashMap::new();
        let mut p = 0usize;
        for i in 0..count {
            let bad = || format!("{TRUNC} (central directory entry {i} is cut short or corrupt)");
            if u32_at(cd, p) != Some(CENTRAL) {
                return Err(bad());
            }
            let flags = u16_at(cd, p + 8).ok_or_else(bad)?;
            let method = u16_at(cd, p + 10).ok_or_else(bad)?;
            let crc = u32_at(cd, p + 16).ok_or_else(bad)?;
            let mut compressed = u64::from(u32_at(cd, p + 20).ok_or_else(bad)?);
            let mut size = u64::from(u32_at(cd, p + 24).ok_or_else(bad)?);
            let name_len = usize::from(u16_at(cd, p + 28).ok_or_else(bad)?);
            let extra_len = usize::from(u16_at(cd, p + 30).ok_or_else(bad)?);
            let comment_len = usize::from(u16_at(cd, p + 32).ok_or_else(bad)?);
            let mut header_offset = u64::from(u32_at(cd, p + 42).ok_or_else(bad)?);
            let name_start = p + 46;
            let extra_start = name_start + name_len;
            let next = extra_start + extra_len + comment_len;
            if next > cd.len() {
                return Err(bad());
            }
            let name = String::from_utf8_lossy(&cd[name_start..extra_start]).into_owned();
            // zip64 extended information: the 64-bit values of the fields that are saturated
            let extra = &cd[extra_start..extra_start + extra_len];
            let mut q = 0usize;
            while q + 4 <= extra.len() {
                let id = u16_at(extra, q).unwrap_or(0);
                let n = usize::from(u16_at(extra, q + 2).unwrap_or(0));
                let body = extra.get(q + 4..q + 4 + n).ok_or_else(bad)?;
                if id == 1 {
                    let mut r = 0usize;
                    for v in [&mut size, &mut compressed, &mut header_offset] {
                        if *v == 0xffff_ffff {
                            *v = u64_at(body, r).ok_or_else(bad)?;
                            r += 8;
                        }
                    }
                }
                q += 4 + n;
            }
            by_name.entry(name.clone()).or_insert(entries.len());
            entries.push(Entry { name, flags, method, crc, compressed, size, header_offset });
            p = next;
        }
        let inflate_budget = (len as u64).saturating_mul(INFLATE_FACTOR).saturating_add(INFLATE_ALLOWANCE);
        Ok(Archive { bytes, entries, by_name, inflate_budget: Cell::new(inflate_budget) })
    }

    /// The record with this exact name.
    pub(super) fn find(&self, name: &str) -> Option<&Entry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }

    /// The content of a record.
    pub(super) fn read(&self, e: &Entry) -> Result<Cow<'a, [u8]>, String> {
        let bytes = self.bytes;
        let bad = |what: &str| format!("{TRUNC} (record {}: {what})", e.name);
        let h = usize::try_from(e.header_offset).map_err(|_| bad("local header out of range"))?;
        if u32_at(bytes, h) != Some(LOCAL) {
            return Err(bad("no local header at its offset"));
        }
        let name_len = usize::from(u16_at(bytes, h + 26).ok_or_else(|| bad("local header cut short"))?);
        let extra_len = usize::from(u16_at(bytes, h + 28).ok_or_else(|| bad("local header cut short"))?);
        let start = h + 30 + name_len + extra_len;
        let end = start
            .checked_add(usize::try_from(e.compressed).unwrap_or(usize::MAX))
            .filter(|&end| end <= bytes.len())
            .ok_or_else(|| {
                bad(&format!(
                    "{} bytes of data declared, past the end of the {}-byte file",
                    e.compressed,
                    bytes.len()
                ))
            })?;
        let raw = &bytes[start..end];
        if e.flags & 1 != 0 {
            return Err(format!("zip record {} is encrypted", e.name));
        }
        match e.method {
            0 => {
                if e.size != e.compressed {
                    return Err(bad(&format!(
                        "stored record declares {} bytes uncompressed but {} stored",
                        e.size, e.compressed
                    )));
                }
                Ok(Cow::Borrowed(raw))
            }
            8 => {
                let budget = self.inflate_budget.get();
                if e.size > budget {
                    return Err(format!(
                        "zip record {} declares {} bytes once inflated, more than this {}-byte archive can \
                         plausibly hold",
                        e.name,
                        e.size,
                        bytes.len()
                    ));
                }
                self.inflate_budget.set(budget - e.size);
                inflate(e, raw).map(Cow::Owned)
            }
            m => Err(format!("zip record {} uses compression method {m}, which is not supported", e.name)),
        }
    }
}

/// Inflates a deflated record with the `zip` crate.
fn inflate(e: &Entry, raw: &[u8]) -> Result<Vec<u8>, String> {
    let limit = (raw.len() as u64).saturating_mul(1032).saturating_add(1024).min(MAX_INFLATED);
    if e.size > limit || raw.len() as u64 >= u64::from(u32::MAX) {
        return Err(format!(
            "zip record {} declares {} bytes from {} compressed bytes (not plausible)",
            e.name,
            e.size,
            raw.len()
        ));
    }
    // A minimal local header (no data descriptor, no extra field) that the zip crate reads.
    let mut buf = Vec::with_capacity(31 + raw.len());
    buf.extend_from_slice(&LOCAL.to_le_bytes());
    buf.extend_from_slice(&20u16.to_le_bytes()); // version needed
    buf.extend_from_slice(&0u16.to_le_bytes()); // flags
    buf.extend_from_slice(&8u16.to_le_bytes()); // deflate
    buf.extend_from_slice(&0u16.to_le_bytes()); // time
    buf.extend_from_slice(&0x21u16.to_le_bytes()); // date 1980-01-01
    buf.extend_from_slice(&e.crc.to_le_bytes());
    buf.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    buf.extend_from_slice(&(e.size as u32).to_le_bytes());
    buf.extend_from_slice(&1u16.to_le_bytes()); // name length
    buf.extend_from_slice(&0u16.to_le_bytes()); // extra length
    buf.push(b'x');
    buf.extend_from_slice(raw);
    let mut cursor = std::io::Cursor::new(buf);
    let err = |m: String| format!("zip record {}: {m}", e.name);
    let file = zip::read::read_zipfile_from_stream(&mut cursor).map_err(|x| err(x.to_string()))?;
    let file = file.ok_or_else(|| err("unreadable".into()))?;
    let mut out = Vec::with_capacity(e.size.min(1 << 26) as usize);
    file.take(e.size + 1).read_to_end(&mut out).map_err(|x| err(format!("cannot inflate: {x}")))?;
    if out.len() as u64 != e.size {
        return Err(err(format!("inflated to {} bytes, {} declared", out.len(), e.size)));
    }
    Ok(out)
}
