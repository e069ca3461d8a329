//! Reads back what an etcd snapshot holds: its revision and key count, from the
//! bbolt database the snapshot is (etcd's backend, `go.etcd.io/bbolt`).
//!
//! The same figures `etcdctl snapshot status` prints (etcd 3.4
//! `etcdctl/ctlv3/command/snapshot_command.go` `dbStatus`): every key of every
//! top-level bucket is counted, and the revision is the main revision of the
//! last key of the `key` bucket (keys there are `<main BE u64>_<sub BE u64>`).
//! vipd reads them itself rather than running etcdctl, which kubeadm nodes do
//! not have on the host (it lives in the etcd image); the snapshot tests
//! compare this reader with a real `etcdctl snapshot status`.
//!
//! bbolt's layout (bbolt `page.go`, `db.go`): fixed-size pages; pages 0 and 1
//! are meta pages (the newer valid one wins), each naming the root bucket's
//! page. A page is a 16-byte header `{id u64, flags u16, count u16, overflow
//! u32}` then `count` 16-byte elements: branch `{pos u32, ksize u32, pgid u64}`,
//! leaf `{flags u32, pos u32, ksize u32, vsize u32}`, with `pos` counted from
//! the element itself. A leaf value flagged as a bucket is `{root u64, sequence
//! u64}`, followed, when root is 0, by the bucket's one page inline.

use thiserror::Error;

const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const BRANCH: u16 = 0x01;
const LEAF: u16 = 0x02;
const META: u16 = 0x04;
const BUCKET_LEAF: u32 = 0x01;
const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
/// B+tree depth is logarithmic in the key count; a deeper walk is a loop in a
/// damaged file.
const MAX_DEPTH: usize = 64;

/// What a snapshot holds, as `etcdctl snapshot status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbStatus {
    /// The etcd revision the snapshot was taken at.
    pub revision: u64,
    /// Keys in all buckets (etcd's data, its meta, members, leases...).
    pub total_keys: u64,
}

/// Why a file is not a readable bbolt database.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BoltError {
    #[error("no valid bbolt meta page (not an etcd snapshot, or its header is damaged)")]
    NoMeta,
    #[error("page {0} lies outside the file (truncated or damaged)")]
    PageOutOfRange(u64),
    #[error("page {page}: unexpected page type {flags:#x}")]
    BadPage { page: u64, flags: u16 },
    #[error("an element of page {0} points outside it")]
    BadElement(u64),
    #[error("the tree is deeper than {MAX_DEPTH} levels (a loop in a damaged file)")]
    TooDeep,
    #[error("the database has no `key` bucket: not an etcd backend")]
    NoKeyBucket,
}

struct Db<'a> {
    data: &'a [u8],
    page_size: usize,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// FNV-1a, 64 bits: bbolt's meta page checksum (`meta.sum64`).
fn fnv64a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A meta page's `(txid, root bucket page)` when its magic, version and
/// checksum hold.
fn meta(data: &[u8], at: usize) -> Option<(u64, u64, usize)> {
    let m = data.get(at + PAGE_HEADER..at + PAGE_HEADER + 64)?;
    if u16_at(data, at + 8)? & META == 0 || u32_at(m, 0)? != MAGIC || u32_at(m, 4)? != VERSION {
        return None;
    }
    if fnv64a(&m[..56]) != u64_at(m, 56)? {
        return None;
    }
    let page_size = u32_at(m, 8)? as usize;
    (page_size >= 512).then_some(())?;
    Some((u64_at(m, 48)?, u64_at(m, 16)?, page_size))
}

/// One element of a page: a branch's child, or a leaf's key/value.
enum Element<'a> {
    Child(u64),
    Leaf {
        key: &'a [u8],
        value: &'a [u8],
        bucket: bool,
    },
}

impl<'a> Db<'a> {
    fn page(&self, id: u64) -> Result<&'a [u8], BoltError> {
        let start = usize::try_from(id)
            .ok()
            .and_then(|i| i.checked_mul(self.page_size))
            .ok_or(BoltError::PageOutOfRange(id))?;
        let head = self
            .data
            .get(start..start + PAGE_HEADER)
            .ok_or(BoltError::PageOutOfRange(id))?;
        let overflow = u32_at(head, 12).unwrap_or(0) as usize;
        let len = (overflow + 1) * self.page_size;
        self.data
            .get(start..start.saturating_add(len))
            .ok_or(BoltError::PageOutOfRange(id))
    }

    /// Calls `f` for every leaf element under `page`, in key order.
    fn walk(
        &self,
        id: u64,
        page: &'a [u8],
        depth: usize,
        f: &mut dyn FnMut(&'a [u8], &'a [u8], bool) -> Result<(), BoltError>,
    ) -> Result<(), BoltError> {
        if depth > MAX_DEPTH {
            return Err(BoltError::TooDeep);
        }
        for el in elements(id, page)? {
            match el {
                Element::Child(child) => self.walk(child, self.page(child)?, depth + 1, f)?,
                Element::Leaf { key, value, bucket } => f(key, value, bucket)?,
            }
        }
        Ok(())
    }

    /// The root page of a bucket from its leaf value: its own page, or the
    /// page stored inline after the header.
    fn bucket_root(&self, value: &'a [u8]) -> Result<(u64, &'a [u8]), BoltError> {
        let root = u64_at(value, 0).ok_or(BoltError::BadElement(0))?;
        if root == 0 {
            Ok((0, &value[ELEMENT..]))
        } else {
            Ok((root, self.page(root)?))
        }
    }
}

fn elements(id: u64, page: &[u8]) -> Result<Vec<Element<'_>>, BoltError> {
    let bad = || BoltError::BadElement(id);
    let flags = u16_at(page, 8).ok_or_else(bad)?;
    let count = u16_at(page, 10).ok_or_else(bad)? as usize;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let at = PAGE_HEADER + i * ELEMENT;
        match flags {
            BRANCH => out.push(Element::Child(u64_at(page, at + 8).ok_or_else(bad)?)),
            LEAF => {
                let flags = u32_at(page, at).ok_or_else(bad)?;
                let pos = u32_at(page, at + 4).ok_or_else(bad)? as usize;
                let ksize = u32_at(page, at + 8).ok_or_else(bad)? as usize;
                let vsize = u32_at(page, at + 12).ok_or_else(bad)? as usize;
                let k = at.checked_add(pos).ok_or_else(bad)?;
                let v = k.checked_add(ksize).ok_or_else(bad)?;
                let end = v.checked_add(vsize).ok_or_else(bad)?;
                out.push(Element::Leaf {
                    key: page.get(k..v).ok_or_else(bad)?,
                    value: page.get(v..end).ok_or_else(bad)?,
                    bucket: flags & BUCKET_LEAF != 0,
                });
            }
            _ => return Err(BoltError::BadPage { page: id, flags }),
        }
    }
    Ok(out)
}

/// Reads the revision and key count of a bbolt database (the snapshot file
/// without its 32-byte hash trailer).
pub fn status(data: &[u8]) -> Result<DbStatus, BoltError> {
    let first = meta(data, 0);
    // Page 1 is one page further; the page size is in page 0's meta, or, when
    // page 0 is damaged, one of the sizes bbolt uses (the OS page size).
    let size0 = first.map(|m| m.2);
    let second = [size0, Some(4096), Some(16384), Some(65536)]
        .into_iter()
        .flatten()
        .find_map(|ps| meta(data, ps).filter(|m| m.2 == ps));
    let (_, root, page_size) = match (first, second) {
        (Some(a), Some(b)) => {
            if a.0 >= b.0 {
                a
            } else {
                b
            }
        }
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => return Err(BoltError::NoMeta),
    };
    let db = Db { data, page_size };
    let mut buckets = Vec::new();
    db.walk(root, db.page(root)?, 0, &mut |name, value, bucket| {
        if bucket {
            buckets.push((name, value));
        }
        Ok(())
    })?;
    let mut st = DbStatus {
        revision: 0,
        total_keys: 0,
    };
    let mut has_key_bucket = false;
    for (name, value) in buckets {
        let is_key = name == b"key";
        has_key_bucket |= is_key;
        let (id, page) = db.bucket_root(value)?;
        db.walk(id, page, 0, &mut |k, _, _| {
            st.total_keys += 1;
            if is_key && let Some(main) = k.get(..8) {
                st.revision = u64::from_be_bytes(main.try_into().unwrap_or_default());
            }
            Ok(())
        })?;
    }
    if !has_key_bucket {
        return Err(BoltError::NoKeyBucket);
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a two-meta, one-root-leaf database by hand, as bbolt lays it
    /// out, with a `key` bucket and a `meta` bucket inline.
    fn page(id: u64, flags: u16, elems: &[(u32, &[u8], &[u8])], ps: usize) -> Vec<u8> {
        let mut p = vec![0u8; ps];
        p[..8].copy_from_slice(&id.to_le_bytes());
        p[8..10].copy_from_slice(&flags.to_le_bytes());
        p[10..12].copy_from_slice(&(elems.len() as u16).to_le_bytes());
        let mut data = PAGE_HEADER + elems.len() * ELEMENT;
        for (i, (f, k, v)) in elems.iter().enumerate() {
            let at = PAGE_HEADER + i * ELEMENT;
            p[at..at + 4].copy_from_slice(&f.to_le_bytes());
            p[at + 4..at + 8].copy_from_slice(&((data - at) as u32).to_le_bytes());
            p[at + 8..at + 12].copy_from_slice(&(k.len() as u32).to_le_bytes());
            p[at + 12..at + 16].copy_from_slice(&(v.len() as u32).to_le_bytes());
            p[data..data + k.len()].copy_from_slice(k);
            p[data + k.len()..data + k.len() + v.len()].copy_from_slice(v);
            data += k.len() + v.len();
        }
        p
    }

    fn meta_page(id: u64, txid: u64, root: u64, ps: usize) -> Vec<u8> {
        let mut p = vec![0u8; ps];
        p[..8].copy_from_slice(&id.to_le_bytes());
        p[8..10].copy_from_slice(&META.to_le_bytes());
        let m = &mut p[PAGE_HEADER..PAGE_HEADER + 64];
        m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        m[4..8].copy_from_slice(&VERSION.to_le_bytes());
        m[8..12].copy_from_slice(&(ps as u32).to_le_bytes());
        m[16..24].copy_from_slice(&root.to_le_bytes());
        m[48..56].copy_from_slice(&txid.to_le_bytes());
        let sum = fnv64a(&m[..56]);
        m[56..64].copy_from_slice(&sum.to_le_bytes());
        p
    }

    fn rev(main: u64, sub: u64) -> Vec<u8> {
        let mut k = main.to_be_bytes().to_vec();
        k.push(b'_');
        k.extend(sub.to_be_bytes());
        k
    }

    fn sample() -> Vec<u8> {
        let ps = 4096;
        let (r1, r2) = (rev(5, 0), rev(9, 0));
        // An inline bucket: header {root 0, seq 0} then its leaf page.
        let mut key_bucket = vec![0u8; 16];
        let inline = page(0, LEAF, &[(0, &r1, b"a"), (0, &r2, b"b")], 256);
        key_bucket.extend(&inline);
        let mut meta_bucket = vec![0u8; 16];
        meta_bucket.extend(page(0, LEAF, &[(0, b"consistent_index", b"x")], 128));
        let root = page(
            2,
            LEAF,
            &[
                (BUCKET_LEAF, b"key", &key_bucket),
                (BUCKET_LEAF, b"meta", &meta_bucket),
            ],
            ps,
        );
        let mut db = meta_page(0, 3, 2, ps);
        db.extend(meta_page(1, 4, 2, ps));
        db.extend(root);
        db
    }

    #[test]
    fn reads_revision_and_key_count() {
        assert_eq!(
            status(&sample()),
            Ok(DbStatus {
                revision: 9,
                total_keys: 3
            })
        );
    }

    #[test]
    fn a_damaged_meta_falls_back_to_the_other() {
        let mut db = sample();
        db[PAGE_HEADER + 20] ^= 0xff; // page 0's root pointer: checksum fails
        assert_eq!(status(&db).map(|s| s.revision), Ok(9));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(status(&[0u8; 10_000]), Err(BoltError::NoMeta));
        let mut db = sample();
        db.truncate(4096 * 2 + 100);
        assert_eq!(status(&db), Err(BoltError::PageOutOfRange(2)));
        let mut db = sample();
        // The root leaf's first element claims a key far past the page.
        db[2 * 4096 + PAGE_HEADER + 8..2 * 4096 + PAGE_HEADER + 12]
            .copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(status(&db), Err(BoltError::BadElement(2)));
    }
}
